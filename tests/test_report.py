"""``tally report`` renders one page from the JSONs ``tally bench`` writes, and ``tally bench`` writes them
where the report reads them."""

import json
import re
import shutil

import pytest
from PIL import Image

from tally.benchmarks.report import BENCHMARKS, fmt, load_results, result_path


def _report(tally_cli, folder, out):
    result = tally_cli("report", "--from", str(folder), "--out", str(out))
    assert result.returncode == 0, result.stderr
    return (out / "index.html").read_text(), (out / "report.md").read_text()


def _write(folder, name, data):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(data))


# --- where results live ---------------------------------------------------------------------------------

def test_a_result_is_named_for_its_model_unless_it_is_the_default(tmp_path):
    assert result_path(tmp_path, "engine") == tmp_path / "engine.json"
    assert result_path(tmp_path, "engine", "sdxl-turbo") == tmp_path / "engine-sdxl-turbo.json"
    assert result_path(tmp_path, "base", "my/pipeline") == tmp_path / "base-my_pipeline.json"
    _write(tmp_path, "engine", {"model": "reference"})
    _write(tmp_path, "engine-sdxl-turbo", {})  # an older result without its model: the name says it
    _write(tmp_path, "engineering", {"model": "not a benchmark of ours"})
    assert [r.label for r in load_results(tmp_path, "engine")[0]] == ["sdxl-turbo", "reference"]


def test_bench_writes_its_json_by_default_and_names_another_model_in_the_file(tally_cli, reference_spec, tmp_path,
                                                                             monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = reference_spec.model_dump(mode="json")
    models = json.dumps([spec, {**spec, "id": "other"}])
    default = tally_cli("bench", "detector", "--scenes", "4", "--generated", "0", env={"TALLY_MODELS": models})
    other = tally_cli("bench", "detector", "--scenes", "4", "--generated", "0", "--model", "other", "--json", "-",
                      env={"TALLY_MODELS": models})
    assert default.returncode == 0 and other.returncode == 0, default.stderr + other.stderr
    assert json.loads((tmp_path / "out/bench/detector.json").read_text())["model"] == "reference"
    written = json.loads((tmp_path / "out/bench/detector-other.json").read_text())
    assert written["model"] == "other" and written["overall"]["n"] == 4
    assert json.loads(other.stdout) == written  # --json stays an extra destination


# --- the page -------------------------------------------------------------------------------------------

def test_a_benchmark_without_json_names_the_command_that_writes_it(tally_cli, tmp_path):
    (tmp_path / "empty").mkdir()
    html, markdown = _report(tally_cli, tmp_path / "empty", tmp_path / "report")
    for benchmark in BENCHMARKS.values():
        command = f"{benchmark.command} --out {tmp_path / 'empty'}"
        assert f"run <code>{command}</code> to write it" in html
        assert f"run `{command}` to write it" in markdown
    assert not list((tmp_path / "report").glob("*.png"))


def test_the_default_folder_needs_no_out_in_the_hint(tally_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out/bench").mkdir(parents=True)
    assert tally_cli("report").returncode == 0
    assert "run `tally bench service` to write it" in (tmp_path / "out/report/report.md").read_text()


def test_a_missing_folder_is_an_input_error(tally_cli, tmp_path):
    result = tally_cli("report", "--from", str(tmp_path / "nowhere"), "--out", str(tmp_path / "report"))
    assert result.returncode == 2 and "tally bench" in result.stderr


def test_older_results_with_missing_fields_show_what_they_have(tally_cli, tmp_path):
    folder = tmp_path / "bench"
    _write(folder, "base", {"per_count": {"3": {"exact": 0.25}}})  # no model, overall, speed
    _write(folder, "engine", {"policies": {"resample": {"verified_rate": 0.5}}})  # no per_count, no costs
    _write(folder, "service", {"submit_rps": 136.5, "status_p50_ms": 120.5, "a_new_figure": {"p95_ms": 7.5}})
    _write(folder, "optimize", {"library": {"base_exact": 0.333, "token_exact": 0.367}})
    (folder / "faults.json").write_text("{not json")
    html, markdown = _report(tally_cli, folder, tmp_path / "report")
    for number in ("0.25", "0.5", "136.5", "120.5", "0.333", "0.367"):
        assert f"<td class=\"num\">{number}</td>" in html, number
    assert "a_new_figure.p95_ms" in html and "7.5" in html  # a field added later shows without a change here
    assert "faults.json</code> could not be read" in html and "not readable as JSON" in markdown
    assert "<script" not in html


def test_the_page_escapes_what_the_results_say(tally_cli, tmp_path):
    _write(tmp_path / "bench", "faults", {"fuzz": {"problems": ["<script>alert(1)</script>"]}})
    html, _ = _report(tally_cli, tmp_path / "bench", tmp_path / "report")
    assert "<script>" not in html and "&lt;script&gt;" in html


# --- real results ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bench_folder(t2i, counter, reference_spec, tmp_path_factory):
    """Real results of the model benchmarks at tiny sizes (about 20 s), named as ``tally bench`` names them.
    The service, fault and demo benchmarks run private processes for minutes, so theirs are written in their
    shape (``tally/benchmarks/service/``, ``faults.py``, ``demo.py``) with the README's figures."""
    from optimization.config import Budget, Policy
    from optimization.count_token import CountToken
    from optimization.counter import load_crosscheck
    from optimization.engine import CountEngine
    from tally.benchmarks.base import bench_base
    from tally.benchmarks.detector import bench_detector
    from tally.benchmarks.engine import bench_engine, bench_jobs
    from tally.benchmarks.iteration import bench_iteration
    from tally.benchmarks.optimize import bench_library, bench_refine

    engine = CountEngine(t2i, counter, reference_spec, crosscheck=load_crosscheck(reference_spec.crosscheck))
    folder = tmp_path_factory.mktemp("bench")
    _write(folder, "detector", {"model": "reference", **bench_detector(counter, 12)})
    _write(folder, "base", bench_base(engine, 1, folder, counts=range(2, 7)))  # 6: a target's count
    budget = Budget(max_seconds=60, max_candidates=4, max_iterations=1000)  # bounded by candidates, not the load
    result = bench_engine(engine, {}, bench_jobs(engine, [1], 1)[:2], budget, folder, (Policy.resample, Policy.library))
    _write(folder, "engine", {**result, "model": "reference"})
    token = CountToken(engine.token_key("circle", 3), engine.word_vectors("of"), "of", {"source": "test"})
    variants = len(engine.library_prompts("circle", 3))  # one held-out seed per prompt variant
    library = bench_library(engine, {("circle", 3): token}, judge_seeds=variants)
    _write(folder, "optimize", {"model": "reference", "refine": bench_refine(engine, [], 1),
                                "library": {k: v for k, v in library.items() if k != "per_key"},
                                "per_key": library["per_key"]})
    _write(folder, "iteration", bench_iteration(engine, repeats=1))
    _write(folder, "service", {
        "cache_hit_ratio": 1.26, "cache_hit_service_s": 0.96, "cache_hit_direct_s": 0.76,
        "cache_hit_overhead_ms": 200.0, "cache_hit_breakdown_ms": {"queue_wait": 12.0, "job": 900.0, "engine": 760.0},
        "submit_rps": 136.0, "status_p50_ms": 120.0, "status_p99_ms": 1338.0, "load_requests": 2000,
        "concurrency": 32, "api_workers": 2, "single_flight_library_tasks": 1,
        "learning_wait": {"jobs": 12, "slice_seconds": 10.0, "p50_s": 7.5, "p99_s": 12.2, "max_s": 12.2,
                          "library_iterations_meanwhile": 22, "library_slices_meanwhile": 12}})
    _write(folder, "faults", {"worker_kill": {"jobs": 12, "kills": 10, "lost": 0, "duplicated": 0},
                              "bola": {"attempts": 12, "leaks": 0}, "fuzz": {"cases": 972, "problems": []}})
    Image.new("RGB", (256, 256), "white").save(folder / "demo_runs.png")  # the demo's runs, in shape
    _write(folder, "demo", {"runs": 1, "requests": [
        {"prompt": "a photo of blue triangles", "count": 7, "num_images": 2, "model": "reference", "jobs": 1,
         "jobs_verified": 1, "images": 2, "images_verified": 2, "false_verified": 0, "median_job_seconds": 0.31,
         "seeds": [5]}], "pictures": [str(folder / "demo_runs.png")]})
    return folder


def _cells(html: str) -> set[str]:
    return set(re.findall(r"<td[^>]*>([^<]*)</td>", html))


@pytest.mark.slow
def test_the_report_draws_every_benchmark_with_figures_and_tables(tally_cli, bench_folder, tmp_path):
    out = tmp_path / "report"
    html, markdown = _report(tally_cli, bench_folder, out)
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert {"base-exact-by-count.png", "engine-exact-by-count.png", "engine-verified.png",
            "optimize-library-by-count.png", "service-latency.png", "demo-demo_runs.png",
            "base-reference-base_samples-reference.png"} <= set(pngs)
    # seconds per verified image exist only where a policy verified something in this tiny run
    engine = json.loads((bench_folder / "engine.json").read_text())
    timed = any(s["seconds_per_verified"] is not None for s in engine["policies"].values())
    assert ("engine-seconds-per-verified.png" in pngs) == timed
    for name in pngs:
        with Image.open(out / name) as image:
            image.verify()
        assert f'src="{name}"' in html and f"({name})" in markdown
    assert "to write it" not in html  # every benchmark has a result

    results = {name: json.loads((bench_folder / f"{name}.json").read_text()) for name in BENCHMARKS}
    cells = _cells(html)
    expected = [results["detector"]["overall"]["exact"], results["base"]["overall"]["exact"],
                results["base"]["per_count"]["2"]["mean_detected"], results["iteration"]["iteration_s"],
                results["iteration"]["floor_s"], results["optimize"]["library"]["base_exact"],
                results["service"]["status_p99_ms"], results["service"]["learning_wait"]["p50_s"],
                results["service"]["submit_rps"], results["faults"]["fuzz"]["cases"],
                results["demo"]["requests"][0]["median_job_seconds"]]
    for stats in results["engine"]["policies"].values():
        expected += [stats["verified_rate"], stats["seconds_per_verified"], stats["clean_per_s"]]
    for figures in results["optimize"]["per_key"].values():
        expected += [figures["base"]["exact"], figures["token"]["mae"]]  # one key per count: its own figures
    targets = results["base"]["targets"]  # the issue's figures, with how sure they are
    expected += [targets["verified_6_10"], targets["verified_6_10_standard_error"], targets["min_verified_cell_1_10"],
                 targets["crosscheck_exact_6_10"]]
    for value in expected:
        assert fmt(value) in cells, value
    assert targets["min_verified_cell"] in cells
    schedule = results["base"]["sampler"]["guidance_schedule"]  # the reference model is guided step by step
    assert schedule and " / ".join(f"{g:g}" for g in schedule) in cells


@pytest.mark.slow
def test_the_report_reads_every_models_results(tally_cli, bench_folder, tmp_path):
    folder = tmp_path / "bench"
    shutil.copytree(bench_folder, folder)
    other = json.loads((folder / "engine.json").read_text())
    other["model"] = "other"
    other["policies"]["resample"]["verified_rate"] = 0.123
    _write(folder, "engine-other", other)
    html, _ = _report(tally_cli, folder, tmp_path / "report")
    assert "other · resample" in html and "reference · resample" in html
    assert "<td>other</td>" in html and "0.123" in _cells(html)
