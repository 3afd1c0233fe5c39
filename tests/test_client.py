"""The typed client (``tally.client``) against a real service: Redis, the API and a worker, keys required."""

from __future__ import annotations

import asyncio
import threading
import time
from urllib.parse import urlsplit

import httpx
import pytest

from tally.client import (AsyncClient, Client, Forbidden, Invalid, JobEvent, JobOut, NotFound, Unauthorized,
                          Unreachable)
from workers.auth import KeyStore

from .conftest import free_port, launch_service

EASY = {"prompt": "a photo of red circles", "count": 3, "policy": "resample", "budget": {"max_candidates": 16}}


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    with launch_service(tmp_path_factory.mktemp("client"), {"TALLY_AUTH": "required"}) as service:
        keys = KeyStore(service.redis, service.settings)
        service.user_key, _ = keys.create("client-user", "user")
        service.admin_key, _ = keys.create("client-admin", "admin")
        yield service


def test_generate_returns_the_typed_record_its_images_and_the_progress(service):
    events: list[JobEvent] = []
    with Client(service.url, service.user_key) as tally:
        job, images = tally.generate(EASY["prompt"], 3, seed=5, policy="resample", budget=EASY["budget"],
                                     on_progress=events.append, timeout=120)
        assert isinstance(job, JobOut) and job.status == "succeeded" and job.count == 3 and job.object == "circle"
        assert len(images) == len(job.results) == 1 and images[0].size == (64, 64)
        assert not job.results[0].verified or job.results[0].detected_count == 3
        boxed = tally.images(job.id, boxes=True)[0]
        assert boxed.size[0] > images[0].size[0]  # drawn on an enlarged copy, so the boxes are legible
        assert [j.id for j in tally.jobs().jobs][:1] == [job.id]  # newest first, this key's
    assert events and all(isinstance(e, JobEvent) for e in events)
    statuses = [e.status for e in events]
    assert statuses[0] == "queued" and statuses[-1] == "succeeded" and "running" in statuses
    assert any(e.progress is not None and e.progress.candidates >= 1 for e in events)


def test_async_client_does_the_same_and_reads_models_and_tokens(service):
    async def scenario():
        seen = []

        async def on_progress(event):  # a coroutine callback is awaited
            seen.append(event.status)

        async with AsyncClient(service.url, service.user_key) as tally:
            models = await tally.models()
            job, images = await tally.generate(EASY["prompt"], 3, seed=6, policy="resample",
                                               budget=EASY["budget"], on_progress=on_progress, timeout=120)
            return models, job, images, seen, await tally.tokens(model="reference"), await tally.learning()

    models, job, images, seen, tokens, learning = asyncio.run(scenario())
    assert [m.id for m in models] == ["reference", "reference-web"] and "circle" in models[0].classes
    assert job.status == "succeeded" and len(images) == 1 and seen[-1] == "succeeded"
    assert all(t.model == "reference" for t in tokens)  # the filter reached the server
    assert all(type(task).__name__ == "LearningTask" for task in learning)  # typed, not raw dicts


def test_errors_are_typed_and_carry_the_apis_code_and_message(service):
    with Client(service.url, "not-a-key") as stranger:
        with pytest.raises(Unauthorized) as caught:
            stranger.models()
    assert caught.value.status == 401 and caught.value.code == "unauthorized"
    with Client(service.url, service.user_key) as tally:
        with pytest.raises(Invalid) as caught:
            tally.submit("a photo of red circles", 0)
        assert caught.value.status == 422 and "count" in caught.value.message
        with pytest.raises(NotFound):
            tally.get("0" * 32)
        with pytest.raises(Forbidden) as caught:
            tally.import_token(b"not a token")  # the scope is checked before the body
        assert caught.value.code == "forbidden"
    with Client(f"http://127.0.0.1:{free_port()}") as nowhere:
        with pytest.raises(Unreachable, match="cannot reach the Tally API"):
            nowhere.models()


def test_the_api_answers_with_the_models_the_client_parses(service):
    """The client parses the API's own response classes; the OpenAPI document names the same ones per route."""
    schema = httpx.get(f"{service.url}/openapi.json").json()

    def answer(path: str, method: str, status: str = "200") -> str:
        content = schema["paths"][path][method]["responses"][status]["content"]["application/json"]["schema"]
        ref = content.get("$ref") or content["items"]["$ref"]
        return ref.rsplit("/", 1)[1]

    assert answer("/v1/jobs", "post", "202") == "JobAccepted"
    assert answer("/v1/jobs", "get") == "JobList"
    assert answer("/v1/jobs/{job_id}", "get") == answer("/v1/jobs/{job_id}", "delete") == "JobOut"
    assert answer("/v1/models", "get") == "ModelOut"
    assert answer("/v1/tokens", "get") == answer("/v1/tokens/{key}", "get") == answer("/v1/tokens", "post", "201") \
        == "TokenOut"
    assert answer("/v1/tokens/learning", "get") == "LearningTask"


def test_an_admin_key_writes_the_token_library_through_the_client(service, t2i):
    from optimization.count_token import CountToken, TokenKey

    with Client(service.url, service.admin_key) as admin:
        fingerprint = admin.models()[0].fingerprint
        token = CountToken(TokenKey(fingerprint, "cross", 4), t2i.word_vectors("of"), "of", {"source": "client-test"})
        stored = admin.import_token(token.to_bytes())
        assert stored.object == "cross" and stored.count == 4
        assert [t.key for t in admin.tokens(object="cross", count=4)] == [stored.key]
        downloaded = CountToken.from_bytes(admin.token_file(stored.key))
        assert downloaded.key == token.key and all(downloaded.vectors[k].equal(v) for k, v in token.vectors.items())
        admin.delete_token(stored.key)
        with pytest.raises(NotFound):
            admin.token(stored.key)


@pytest.mark.slow
def test_wait_reconnects_after_the_api_restarts_and_sees_each_event_once(service):
    """The worker stops (the job stays queued), the API restarts under the waiting client, the worker comes
    back: the client reconnects from its last event id and gets every later event, none twice."""
    port = urlsplit(service.url).port
    service.launcher.stop("worker-w1")
    events: list[JobEvent] = []
    outcome: dict = {}
    with Client(service.url, service.user_key) as tally:
        job_id = tally.submit(**EASY, seed=7, queue_if_offline=True).id

        def follow():
            try:
                outcome["job"] = tally.wait(job_id, events.append, timeout=240, reconnects=30)
            except Exception as exc:  # noqa: BLE001 - reported by the assertion below
                outcome["error"] = exc

        waiter = threading.Thread(target=follow)
        waiter.start()
        deadline = time.monotonic() + 30
        while not events and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [e.status for e in events] == ["queued"]
        service.launcher.stop("api")
        service.launcher.start_api("127.0.0.1", port)
        service.start_worker()
        waiter.join(timeout=240)
    assert "error" not in outcome, outcome.get("error")
    assert outcome["job"].status == "succeeded"
    statuses = [e.status for e in events]
    assert statuses.count("queued") == 1 and statuses[-1] == "succeeded", statuses


def test_a_client_generated_from_the_openapi_document_knows_which_routes_need_a_key(service, tmp_path):
    """openapi-python-client (``scripts/test`` installs it in ``.tools/``) reads the security schemes: a route
    that needs a key takes only its ``AuthenticatedClient``, which sends the key; health probes take any."""
    import inspect
    import subprocess
    import sys
    import typing
    from pathlib import Path

    generator = Path(__file__).resolve().parents[1] / ".tools/openapi-python-client/bin/openapi-python-client"
    (tmp_path / "openapi.json").write_text(httpx.get(f"{service.url}/openapi.json").text)
    subprocess.run([str(generator), "generate", "--path", "openapi.json", "--output-path", "generated", "--meta", "none"],
                   cwd=tmp_path, check=True, capture_output=True)
    sys.path.insert(0, str(tmp_path))
    try:
        from generated import AuthenticatedClient, Client as PlainClient
        from generated.api.health import healthz_healthz_get as healthz
        from generated.api.me import who_am_i_v1_me_get as me
        from generated.api.tokens import import_token_v1_tokens_post as import_token

        def accepts(route) -> object:
            return inspect.signature(route.sync_detailed).parameters["client"].annotation

        assert accepts(me) is AuthenticatedClient and accepts(import_token) is AuthenticatedClient
        assert PlainClient in typing.get_args(accepts(healthz))
        with AuthenticatedClient(base_url=service.url, token=service.user_key) as authed:
            answer = me.sync_detailed(client=authed)
        assert answer.status_code == 200 and answer.parsed.scope == "user"
        with PlainClient(base_url=service.url) as anonymous:
            assert healthz.sync_detailed(client=anonymous).status_code == 200
            assert me.sync_detailed(client=anonymous).status_code == 401  # what the annotation warned of
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m == "generated" or m.startswith("generated.")]:
            del sys.modules[name]


def test_importing_the_client_loads_nothing_of_the_server():
    import subprocess
    import sys

    code = ("import sys, tally.client; print(sorted(m for m in ('rq', 'redis', 'fastapi', 'torch', 'orjson', "
            "'workers.records', 'workers.queue') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_client_errors_are_not_bad_input():
    from optimization.errors import InvalidRequest
    from tally.client import ClientError, ServerError

    assert not issubclass(ClientError, InvalidRequest)  # a server's fault or an unreachable API is no bad input
    assert issubclass(Unreachable, ClientError) and ServerError("x", "internal", 500).exit_status != 2
