"""The web page in a real browser: Debian's Chromium, headless, driven by Playwright, against the real API and
a real worker (one service for the module). Each test leaves a screenshot of what it saw under out/browser/;
``TALLY_DOCS_SCREENSHOT=1`` also writes the finished-job one to docs/images/web-page.png (for the README).

Playwright downloads no browser here: it drives ``/usr/bin/chromium`` (``TALLY_CHROMIUM`` to change it),
which ``./scripts/test`` installs with apt when it can. Without it these tests fail; they never skip."""

from __future__ import annotations

import json
import os
import re
import uuid
from pathlib import Path

import httpx
import pytest

from .conftest import ROOT, Service, launch_service, serve_api

pytestmark = pytest.mark.slow

CHROMIUM = Path(os.environ.get("TALLY_CHROMIUM", "/usr/bin/chromium"))
SHOTS = ROOT / "out" / "browser"
DOCS_SHOT = ROOT / "docs" / "images" / "web-page.png"
TIMEOUT_MS = 180_000  # the longest wait for a job (a busy CI machine); idle, the reference model makes a
# 64x64 image in ~0.1 s and every job here ends within seconds
# A request the reference model answers quickly with four verified images (seed measured once).
EASY = {"prompt": "a photo of 2 red circles", "count": 2, "num_images": 4, "seed": 3, "policy": "resample",
        "budget": {"max_candidates": 32, "max_seconds": 300}}
NO_CHROMIUM = (f"no Chromium at {CHROMIUM}: the browser tests drive Debian's Chromium headless. Install it with "
               "'apt-get install chromium' (./scripts/test does, as root) or point TALLY_CHROMIUM at a Chromium binary.")


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    # Tiny library learning (refine and library jobs start it), in short slices: a job waits for one at most.
    env = {"TALLY_LIBRARY__MAX_ITERATIONS": "2", "TALLY_LIBRARY__SEEDS_PER_ITERATION": "2", "TALLY_LIBRARY__CALIBRATION_SEEDS": "4",
           "TALLY_LIBRARY__VALIDATION_SEEDS": "4", "TALLY_LIBRARY__VALIDATE_EVERY": "1",
           "TALLY_LIBRARY_SLICE_SECONDS": "1"}
    with launch_service(tmp_path_factory.mktemp("browser"), env) as service:
        yield service


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file():
        pytest.fail(NO_CHROMIUM, pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield browser
        browser.close()


def open_page(browser, url: str, key: str | None = None):
    """A fresh browser context (its own localStorage) on the page, once it has read the API; page errors
    (uncaught exceptions, console errors) are collected in ``page.problems``."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=url, accept_downloads=True)
    if key:
        context.add_init_script(f"localStorage.setItem('tally.apiKey', {json.dumps(key)})")
    page = context.new_page()
    page.set_default_timeout(15_000)
    page.problems = []
    page.on("pageerror", lambda exc: page.problems.append(str(exc)))
    page.on("console", lambda msg: msg.type == "error" and not msg.text.startswith("Failed to load resource")
            and page.problems.append(msg.text))  # an API error's status is logged by Chromium; the page shows it
    page.goto("/")
    page.wait_for_selector("body[data-ready=true]")
    return page


@pytest.fixture
def page(browser, service):
    page = open_page(browser, service.url)
    yield page
    page.context.close()


def shot(page, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def fill_job(page, prompt: str, count: int | str, num_images: int = 1, seed: int | None = None, policy: str = "",
             max_candidates: int | None = None, max_seconds: float | None = None, max_iterations: int | None = None):
    page.fill("#prompt", prompt)
    page.fill("#count", str(count))
    page.fill("#num-images", str(num_images))
    page.fill("#seed", "" if seed is None else str(seed))
    page.select_option("#policy", policy)
    for field, value in (("#max-candidates", max_candidates), ("#max-seconds", max_seconds),
                         ("#max-iterations", max_iterations)):
        page.fill(field, "" if value is None else str(value))


def submit(page) -> str:
    """Submits the form; the job's id once the page shows the job (else the error the page shows)."""
    page.click("#submit")
    page.wait_for_function("""() => !document.querySelector('#error').hidden ||
                                    /^[0-9a-f]{32}$/.test(document.querySelector('#job-id').textContent)""")
    assert page.locator("#error").is_hidden(), page.inner_text("#error")
    assert re.search(r"#/jobs/[0-9a-f]{32}$", page.url)
    return page.inner_text("#job-id")


def wait_for_status(page, *statuses: str, timeout: int = TIMEOUT_MS) -> str:
    wanted = "|".join(statuses)
    page.wait_for_selector(f"#job-status:text-matches('^({wanted})$')", timeout=timeout)
    return page.inner_text("#job-status")


def wait_for_images(page, n: int) -> None:
    """n result cards, each image decoded (fetched with the key, shown from a blob: URL)."""
    page.wait_for_function(
        """n => { const imgs = [...document.querySelectorAll('#results figure.result img')];
                  return imgs.length === n && imgs.every(i => i.src.startsWith('blob:') && i.complete && i.naturalWidth > 0); }""",
        arg=n, timeout=TIMEOUT_MS)


def test_a_job_submitted_from_the_page_shows_its_progress_then_verified_images(page, service):
    assert page.locator("#model option").all_inner_texts() == ["reference", "reference-web"]  # reference chosen
    assert page.inner_text("#model-info").startswith("1 live worker · ")
    assert "circle" in page.locator("#object option").all_inner_texts()  # the model's classes, from /v1/models
    assert page.locator("#policy option").all_inner_texts()[1:] == ["resample", "library", "refine", "noise"]
    default = service.settings.default_budget  # the deployment's defaults, shown where they apply
    assert page.get_attribute("#max-seconds", "placeholder").startswith(f"{default.max_seconds:g} · ≤ ")
    fill_job(page, EASY["prompt"], EASY["count"], EASY["num_images"], EASY["seed"], EASY["policy"],
             max_candidates=EASY["budget"]["max_candidates"], max_seconds=EASY["budget"]["max_seconds"])
    shot(page, "1-form")
    job_id = submit(page)
    page.wait_for_selector("#job-candidates:text-matches('^[1-9]')", timeout=TIMEOUT_MS)  # progress arrived from the event stream
    shot(page, "2-progress")
    assert wait_for_status(page, "succeeded", "failed") == "succeeded"
    wait_for_images(page, 4)
    record = service.record(job_id)
    assert [r["verified"] for r in record["results"]] == [True] * 4
    assert page.locator("[data-testid=badge]").all_inner_texts() == ["✓ verified"] * 4
    assert page.locator("[data-testid=detected]").all_inner_texts() == [f"{EASY['count']} detected"] * 4
    assert page.inner_text("#job-candidates") == str(record["cost"]["candidates"])
    assert page.inner_text("#job-verified") == "4 / 4"
    log = page.locator("#event-log li").all_text_contents()  # the stream as it came: queued, sampling ..., final
    assert any("running · sampling · " in line for line in log) and log[-1].endswith("final: succeeded"), log
    path = shot(page, "3-finished")
    if os.environ.get("TALLY_DOCS_SCREENSHOT"):
        _save_small(path, DOCS_SHOT)

    plain = page.get_attribute("#results figure.result img >> nth=0", "src")
    page.check("#boxes")  # the same images with their detections drawn, fetched again
    page.wait_for_function("src => { const i = document.querySelector('#results img'); "
                           "return i.src !== src && i.complete && i.naturalWidth > 0; }", arg=plain)
    with page.expect_download() as download:
        page.click("[data-testid=download] >> nth=0")
    assert download.value.suggested_filename == f"{job_id}-0-boxes.png"  # the API's and the CLI's name
    assert Path(download.value.path()).read_bytes()[:4] == b"\x89PNG"
    shot(page, "4-boxes")

    page.fill("#seed", "")
    page.select_option("#policy", "")
    page.click("[data-testid=use-seed] >> nth=1")  # the second image's request, back in the form
    assert page.input_value("#seed") == str(record["results"][1]["seed"])
    assert page.input_value("#prompt") == EASY["prompt"] and page.input_value("#policy") == EASY["policy"]
    assert page.input_value("#count") == str(EASY["count"])
    assert not page.problems, page.problems


def test_the_page_fits_a_360_pixel_phone_screen(browser, service):
    page = open_page(browser, service.url)
    try:
        page.set_viewport_size({"width": 360, "height": 780})
        assert page.evaluate("document.documentElement.scrollWidth") <= 360  # nothing scrolls sideways
        for selector in ("#api-key", "#prompt", "#policy", "#model", "#max-iterations", "#submit"):
            box = page.locator(selector).bounding_box()
            assert box["x"] >= 0 and box["x"] + box["width"] <= 360, (selector, box)
        assert page.locator("#api-key").bounding_box()["width"] >= 120  # a key field one can type into
        assert page.locator("#policy").bounding_box()["width"] >= 120
        # every policy's name shows whole (its text, plus the select's padding and arrow, fits the select)
        assert page.evaluate("""() => { const s = document.querySelector('#policy');
            const c = document.createElement('canvas').getContext('2d'); c.font = getComputedStyle(s).font;
            const longest = Math.max(...[...s.options].map(o => c.measureText(o.textContent).width));
            return longest + 48 <= s.getBoundingClientRect().width; }""")
        shot(page, "narrow-360")
        assert not page.problems, page.problems
    finally:
        page.context.close()


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_the_api_docs_make_no_request_outside_the_api(browser, service, path):
    context = browser.new_context(base_url=service.url)
    page = context.new_page()
    requested, blocked = [], []
    page.on("request", lambda request: requested.append(request.url))
    page.on("requestfailed", lambda request: request.failure == "csp" and blocked.append(request.url))
    page.goto(path, wait_until="networkidle")
    page.wait_for_selector(".swagger-ui .info, .api-info, h1")  # the document rendered
    page.wait_for_timeout(500)
    context.close()
    outside = [url for url in requested if not url.startswith((service.url, "data:", "blob:"))]
    assert requested and outside == blocked, (outside, blocked)  # ReDoc's Redocly logo: stopped by the page's policy


def test_a_dropped_event_stream_resumes_after_its_last_event(page, service):
    job_id = service.submit(**{**EASY, "num_images": 1, "budget": {"max_candidates": 8}})
    service.wait(job_id)
    asked, full = [], []

    def events(route, request):
        asked.append(request.headers.get("last-event-id"))
        if len(asked) > 1:
            return route.continue_()
        full.append(route.fetch().text())
        cut = "".join(e + "\n\n" for e in full[0].split("\n\n")[:2])  # two events, then the stream ends
        route.fulfill(status=200, headers={"Content-Type": "text/event-stream"}, body=cut)

    page.route(f"**/v1/jobs/{job_id}/events", events)
    page.goto(f"/#/jobs/{job_id}")
    page.wait_for_selector("#event-log li:text('final: succeeded')", state="attached")  # in a closed <details>
    assert page.inner_text("#job-status") == "succeeded"  # never back to "running" while the history replays
    second = re.search(r"^id: (\S+)$", full[0].split("\n\n")[1], re.M).group(1)
    assert asked == [None, second], asked  # resumed after the last event it had, once
    log = page.locator("#event-log li").all_text_contents()
    assert len(log) == full[0].count("event: progress") + 2, (log, full[0])  # each event once, the resume note, the final
    assert sum("connection lost; resuming" in line for line in log) == 1
    assert not page.problems, page.problems


def test_the_event_parser_reads_server_sent_events_as_the_standard_does(page):
    chunks = [": heartbeat\r\n\r", '\nid: 1-0\r\nevent: progress\r\ndata: {"a":', "1}\r", "\ndata: x\r\n\r\n",
              "data: only\n\n", "data: unfinished"]
    parsed = page.evaluate("""async chunks => {
        const { SseParser } = await import("/web/api.js");
        const parser = new SseParser();
        return chunks.flatMap(chunk => [...parser.feed(chunk)]);
    }""", chunks)
    assert parsed == [{"id": "1-0", "event": "progress", "data": '{"a":1}\nx'},
                      {"id": None, "event": "message", "data": "only"}]


def test_an_api_error_is_shown_with_its_code_and_message(page):
    fill_job(page, "a photo of 3 red circles", 0)
    page.click("#submit")
    page.wait_for_selector("#error:not([hidden])")
    assert page.inner_text("#error-code") == "422 invalid_request"
    assert page.inner_text("#error-message").startswith("count")
    assert page.locator("#job").is_hidden()
    shot(page, "5-error")
    page.click("#error-close")
    assert page.locator("#error").is_hidden()


def test_the_jobs_list_pages_through_the_keys_jobs_and_opens_one(browser, service):
    key = f"pager-{uuid.uuid4().hex[:8]}"  # auth is off: the key only separates owners, so the list is ours
    with httpx.Client(base_url=service.url, headers={"Authorization": f"Bearer {key}"}) as http:
        first = http.post("/v1/jobs", json={**EASY, "num_images": 1, "budget": {"max_candidates": 8}}).json()["id"]
        _as(service, http).wait(first)
        cheap = {**EASY, "num_images": 1, "budget": {"max_candidates": 1}}
        more = [http.post("/v1/jobs", json=cheap).json()["id"] for _ in range(20)]  # a second page's worth,
        for job in more:  # canceled while queued (but the first, perhaps): next to no worker time
            http.delete(f"/v1/jobs/{job}")
    page = open_page(browser, service.url, key)
    page.click("#nav-jobs")
    page.wait_for_selector("[data-testid=job-row] >> nth=19")
    assert page.locator("[data-testid=job-row]").count() == 20
    shot(page, "6-jobs")
    page.click("#jobs-more")
    page.wait_for_selector("[data-testid=job-row] >> nth=20")
    assert page.locator("#jobs-more").is_hidden()
    row = page.locator(f"[data-job-id='{first}']")
    assert "succeeded" in row.inner_text() and "reference" in row.inner_text()
    assert EASY["prompt"] in row.inner_text()  # the prompt as typed
    page.wait_for_function("""id => { const i = document.querySelector(`[data-job-id='${id}'] img.thumb`);
                                      return i && i.src.startsWith('blob:') && i.complete && i.naturalWidth > 0; }""",
                           arg=first)  # its first image, fetched with the key
    row.locator("td >> nth=4").click()  # anywhere on the row opens the job
    page.wait_for_url(re.compile(f"#/jobs/{first}$"))
    assert wait_for_status(page, "succeeded") == "succeeded"
    wait_for_images(page, 1)
    assert page.inner_text("#job-id") == first
    assert not page.problems, page.problems
    page.context.close()


def _as(service: Service, http: httpx.Client) -> Service:
    """The service seen through another client (another key)."""
    return Service(service.url, service.settings, service.launcher, service.redis, http)


def test_with_auth_required_the_page_works_once_a_key_is_entered(browser, service):
    from workers.auth import KeyStore

    settings = service.settings.model_copy(update={"auth": "required"})  # the same Redis, so the same worker
    secret, _ = KeyStore(service.redis, settings).create(f"browser-{uuid.uuid4().hex[:6]}", scope="user")
    with serve_api(settings) as port:
        page = open_page(browser, f"http://127.0.0.1:{port}")
        assert page.inner_text("#error-code") == "401 unauthorized"
        assert page.inner_text("#whoami") == "no valid key"
        page.fill("#api-key", secret)
        page.click("#key-save")
        page.wait_for_selector("#whoami:text-matches(' · user$')")
        assert page.locator("#error").is_hidden()
        fill_job(page, EASY["prompt"], EASY["count"], 1, EASY["seed"], "resample", max_candidates=8)
        submit(page)
        assert wait_for_status(page, "succeeded") == "succeeded"
        wait_for_images(page, 1)
        page.click("#nav-tokens")  # a user key: no import or delete, and the page says why
        page.wait_for_selector("#token-admin-note:not([hidden])")
        assert page.locator("#token-file").is_disabled()
        page.reload()  # the key was kept (localStorage)
        page.wait_for_selector("body[data-ready=true]")
        assert page.input_value("#api-key") == secret and page.locator("#error").is_hidden()
        assert not page.problems, page.problems
        page.context.close()


def _token_file(service: Service, tmp_path: Path, obj: str, count: int) -> Path:
    """A token file for the served model, with the validation figures a learned token carries."""
    import torch

    from optimization.count_token import CountToken, TokenKey
    from workers.queue import model_info

    info = model_info(service.redis, service.settings, "reference")
    vectors = {name: torch.full((dim,), 0.01) for name, dim in info["dims"].items()}
    metadata = {"mode": "library", "iterations": 12, "gain": 0.25,
                "validation": {"base": {"exact": 0.25, "mae": 0.9}, "token": {"exact": 0.5, "mae": 0.6},
                               "best_iteration": 9}}
    return CountToken(TokenKey(info["fingerprint"], obj, count), vectors, "of", metadata).save(tmp_path / "token.safetensors")


def test_the_token_library_imports_lists_downloads_and_deletes_tokens(page, service, tmp_path):
    library_job = service.submit(prompt="a photo of blue squares", count=2, policy="library", seed=3,
                                 budget={"max_candidates": 8})  # a library miss: learning starts
    assert service.wait(library_job)["token"]["learning_scheduled"] is True
    token_file = _token_file(service, tmp_path, "cross", 4)

    page.click("#nav-tokens")
    page.wait_for_selector("[data-testid=learning-row]")
    page.set_input_files("#token-file", str(token_file))
    page.click("#token-import-submit")
    page.wait_for_selector("#tokens-status:text-matches('^Imported ')")
    key = page.inner_text("#tokens-status").removeprefix("Imported ").rstrip(".")
    row = page.locator(f"[data-testid=token-row][data-key='{key}']")
    assert row.locator("[data-testid=token-validation]").inner_text() == "exact 25% → 50% (gain +25%) · MAE 0.90 → 0.60"
    assert "reference" in row.inner_text() and "cross" in row.inner_text()
    learning = page.locator("[data-testid=learning-row]").first.inner_text()
    assert "square" in learning
    shot(page, "7-tokens")

    page.fill("#token-object", "cross")  # filters: no token for 5 crosses, ours for 4
    page.fill("#token-count", "5")
    page.click("[data-testid=token-search]")
    page.wait_for_selector("#tokens-empty:not([hidden])")
    page.fill("#token-count", "4")
    page.click("[data-testid=token-search]")
    row.wait_for()
    assert page.locator("[data-testid=token-row]").count() == 1
    with page.expect_download() as download:
        row.locator("[data-testid=token-download]").click()
    assert Path(download.value.path()).read_bytes() == token_file.read_bytes()
    page.once("dialog", lambda dialog: dialog.accept())
    row.locator("[data-testid=token-delete]").click()
    page.wait_for_selector(f"#tokens-status:text('Deleted {key}.')")
    assert row.count() == 0 and service.http.get(f"/v1/tokens/{key}").status_code == 404
    assert not page.problems, page.problems


def test_refining_draws_the_loss_and_the_detected_counts(page, service):
    """Last: a refine job without a library token starts library learning, which the worker then runs."""
    # Four verified images of eleven circles from four candidates (each verifies about 0.3 of the time): refinement
    # must run. (Nine circles from eight candidates stopped needing it once the UNet drew counts better.)
    fill_job(page, "a photo of red circles", 11, num_images=4, seed=1, policy="refine", max_candidates=4,
             max_iterations=3, max_seconds=300)
    record = service.record(submit(page))
    assert wait_for_status(page, "succeeded", "failed") == "succeeded"
    record = service.record(record["id"])
    assert record["cost"]["iterations"] >= 1, "no refinement happened: the chart has nothing to draw"
    page.wait_for_selector("#chart:not([hidden])")
    assert page.locator("#chart-svg path.chart-loss").count() == 1
    # a dot per detected count of every gradient iteration; an iteration whose image verified ends its run and
    # counts one more, with no gradient step to draw
    hits = sum(r["refine_iteration"] is not None for r in record["results"])
    assert page.locator("#chart-svg circle.chart-count").count() >= record["cost"]["iterations"] - hits
    shot(page, "8-refining")
    assert not page.problems, page.problems


def _save_small(source: Path, target: Path) -> None:
    """The screenshot without the empty page below the footer, as a 256-colour PNG: a fraction of the bytes,
    the same look for a flat UI."""
    from PIL import Image, ImageChops

    target.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(source) as image:
        image = image.convert("RGB")
        background = Image.new("RGB", image.size, image.getpixel((image.width - 1, image.height - 1)))
        bottom = ImageChops.difference(image, background).getbbox()[3]
        image = image.crop((0, 0, image.width, min(image.height, bottom + 20)))
        image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(target, optimize=True)
