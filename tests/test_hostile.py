"""Hostile input, in this process (FastAPI's TestClient, a private Redis, no worker): token files built to
break the importer, bodies past the limit (chunked ones too), odd job ids, a forged Host header, loosely
typed JSON, and a property-based run of the OpenAPI document (schemathesis). Every answer is a JSON
``{code, message}`` with a 4xx status, never a 500, and nothing is written before a request is accepted."""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import redis
import safetensors.numpy
from fastapi.testclient import TestClient

from optimization.errors import InvalidRequest
from optimization.token_file import PLACEHOLDER, validate_token
from service.app import create_app
from workers.keys import Keys
from workers.queue import beat

from .conftest import serve_api

CLASSES = ["circle", "square", "triangle", "cross"]
JOB = {"prompt": "a photo of red circles", "count": 3, "queue_if_offline": True}






@pytest.fixture(scope="session")
def reference(t2i):
    """What a worker of the reference model publishes (``workers.runtime.process.publish_model_info``), and its widths."""
    info = {"id": "reference", "fingerprint": t2i.fingerprint, "classes": CLASSES, "family": t2i.family,
            "image_size": t2i.image_size, "max_count": 12, "token_norm_bounds": t2i.token_norm_bounds}
    return info, {name: encoder.config.hidden_size for name, _, encoder in t2i.encoders()}


@pytest.fixture
def published(settings, reference):
    """The reference model's info in Redis, as its worker writes it at start; returns (fingerprint, dim)."""
    info, dims = reference
    redis.Redis.from_url(settings.redis_url).set(Keys(settings.redis_prefix).model_info("reference"), json.dumps(info))
    return info["fingerprint"], dims["clip_l"]


# ------------------------------------------------------------------------------------------ token files
def meta(fingerprint: str, **overrides) -> dict:
    return {"tally_format": "1", "model_fingerprint": fingerprint, "object": "circle", "count": "3",
            "init_word": "of", "metadata": "{}", **overrides}


def token(fingerprint: str, dim: int, tensors: dict | None = None, **overrides) -> bytes:
    tensors = {PLACEHOLDER: np.full((1, dim), 0.25, np.float32)} if tensors is None else tensors
    return safetensors.numpy.save(tensors, metadata=meta(fingerprint, **overrides))


def raw(header, payload: bytes = b"") -> bytes:
    """A file with exactly this header (JSON, or bytes as they are) before ``payload``."""
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + payload


def bf16(values: np.ndarray) -> bytes:
    return (values.astype(np.float32).view(np.uint32) >> 16).astype("<u2").tobytes()


def vector(dim: int, value: float = 0.25, dtype=np.float32, shape=None) -> np.ndarray:
    return np.full(shape or (1, dim), value, dtype)


HOSTILE = {  # name: (file of (fingerprint, dim), fragment of the message)
    "header-length-oversized": (lambda fp, d: struct.pack("<Q", 2**62) + b"{}", "bad header length"),
    "header-length-past-the-end": (lambda fp, d: struct.pack("<Q", 4096) + b"{}", "bad header length"),
    "header-too-short": (lambda fp, d: b"\x01\x00", "too short"),
    "header-is-a-json-list": (lambda fp, d: raw([1, 2, 3]), "header is not an object"),
    "header-is-not-json": (lambda fp, d: raw(b"\xff\xfe{"), "header is not JSON"),
    "header-nested-too-deep": (lambda fp, d: raw(b"[" * 100_000 + b"]" * 100_000), "header is not JSON"),
    "tensor-entry-is-a-list": (lambda fp, d: raw({"__metadata__": meta(fp), PLACEHOLDER: [1, 2]}), "has no shape"),
    "tensor-without-shape": (lambda fp, d: raw({"__metadata__": meta(fp), PLACEHOLDER: {
        "dtype": "F32", "data_offsets": [0, 4 * d]}}, bytes(4 * d)), "has no shape"),
    "shape-of-strings": (lambda fp, d: raw({"__metadata__": meta(fp), PLACEHOLDER: {
        "dtype": "F32", "shape": ["1", "x"], "data_offsets": [0, 4 * d]}}, bytes(4 * d)), "not sizes"),
    "data-past-the-end": (lambda fp, d: token(fp, d)[:-4], "lies outside the file"),
    "metadata-not-strings": (lambda fp, d: raw({"__metadata__": {**meta(fp), "count": 3}, PLACEHOLDER: {
        "dtype": "F32", "shape": [1, d], "data_offsets": [0, 4 * d]}}, bytes(4 * d)), "map names to strings"),
    "no-metadata": (lambda fp, d: safetensors.numpy.save({PLACEHOLDER: vector(d)}), "not a Tally count token"),
    "object-of-300-characters": (lambda fp, d: token(fp, d, object="o" * 300), "object must be a class name"),
    "object-path-traversal": (lambda fp, d: token(fp, d, object="../../x/pwned"), "object must be a class name"),
    "object-unknown": (lambda fp, d: token(fp, d, object="hexagon"), "'hexagon' is not a class of the model"),
    "count-zero": (lambda fp, d: token(fp, d, count="0"), "count must be an integer in 1..999, got 0"),
    "count-of-50-digits": (lambda fp, d: token(fp, d, count="1" * 50), "count must be an integer in 1..999"),
    "count-unicode-digit": (lambda fp, d: token(fp, d, count="\u00b2"), "count is not a number"),
    "count-negative": (lambda fp, d: token(fp, d, count="-3"), "count is not a number"),
    "count-past-max-count": (lambda fp, d: token(fp, d, count="13"), "between 1 and 12 for this model, got 13"),
    # a word only where the model has it as its crowd word: the reference model has none
    "stated-a-word-the-model-lacks": (lambda fp, d: token(fp, d, stated_count="many"),
                                      "stated_count must be an integer in 1..12, got 'many'"),
    "format-unknown": (lambda fp, d: token(fp, d, tally_format="2"), "format '2' is not supported"),
    "int-dtype": (lambda fp, d: token(fp, d, {PLACEHOLDER: vector(d, 1, np.int32)}), "dtype 'I32'"),
    "f64-dtype": (lambda fp, d: token(fp, d, {PLACEHOLDER: vector(d, 1, np.float64)}), "dtype 'F64'"),
    "nan-vector": (lambda fp, d: token(fp, d, {PLACEHOLDER: vector(d, np.nan)}), "NaN or infinite"),
    # finite, but far beyond any word embedding: the encoder's output would be meaningless (all-black images)
    "norm-beyond-the-model": (lambda fp, d: token(fp, d, {PLACEHOLDER: vector(d, 3e38)}), "tokens stay below"),
    "inf-in-f16": (lambda fp, d: token(fp, d, {PLACEHOLDER: vector(d, np.inf, np.float16)}), "NaN or infinite"),
    "inf-in-bf16": (lambda fp, d: raw({"__metadata__": meta(fp), PLACEHOLDER: {
        "dtype": "BF16", "shape": [1, d], "data_offsets": [0, 2 * d]}}, bf16(vector(d, np.inf))), "NaN or infinite"),
    "shape-two-rows": (lambda fp, d: token(fp, d, {PLACEHOLDER: vector(d, shape=(2, d))}), "a token is [1, dim]"),
    "shape-one-axis": (lambda fp, d: token(fp, d, {PLACEHOLDER: vector(d, shape=(d,))}), "a token is [1, dim]"),
    "shape-empty": (lambda fp, d: token(fp, d, {PLACEHOLDER: vector(d, shape=(1, 0))}), "a token is [1, dim]"),
    "tensor-misnamed": (lambda fp, d: token(fp, d, {"clip_x": vector(d)}), "holds 'clip_x'"),
    "tensor-extra": (lambda fp, d: token(fp, d, {PLACEHOLDER: vector(d), "extra": vector(d)}), "exactly one tensor"),
    "no-tensor": (lambda fp, d: token(fp, d, {}), "holds none"),
    "sdxl-pair-for-an-sd-model": (lambda fp, d: token(fp, d, {"clip_l": vector(d), "clip_g": vector(d)}),
                                  "do not fit this model's text encoders (clip_l)"),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_a_hostile_token_file_is_422_and_nothing_is_written(api, settings, published, tmp_path, name):
    build, fragment = HOSTILE[name]
    response = api.post("/v1/tokens", content=build(*published))
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "invalid_token" and fragment in response.json()["message"], response.text
    assert not settings.tokens_path.exists() or not any(settings.tokens_path.iterdir())
    assert not (tmp_path.parent / "x").exists() and not list(tmp_path.rglob("*pwned*"))
    listed = api.get("/v1/tokens")
    assert listed.status_code == 200 and listed.json() == []


def test_a_token_of_a_model_this_deployment_does_not_serve_is_422_unknown_model(api, published):
    fingerprint, dim = published
    response = api.post("/v1/tokens", content=token("0" * 16, dim))
    assert response.status_code == 422 and response.json()["code"] == "unknown_model"
    assert fingerprint in response.json()["message"]


@pytest.mark.parametrize("dtype", ["F32", "F16", "BF16"])
def test_a_valid_token_is_imported_in_each_float_dtype(api, settings, published, dtype):
    fingerprint, dim = published
    values = np.linspace(-1, 1, dim, dtype=np.float32).reshape(1, dim)
    data = (raw({"__metadata__": meta(fingerprint, count="12"), PLACEHOLDER: {
        "dtype": "BF16", "shape": [1, dim], "data_offsets": [0, 2 * dim]}}, bf16(values)) if dtype == "BF16"
        else token(fingerprint, dim, {PLACEHOLDER: values.astype({"F32": np.float32, "F16": np.float16}[dtype])},
                   count="12"))
    response = api.post("/v1/tokens", content=data)
    assert response.status_code == 201, response.text
    key = f"circle-12-{fingerprint}"
    assert response.json()["key"] == key and response.json()["tensors"] == {PLACEHOLDER: [1, dim]}
    assert response.json()["links"] == {"self": f"/v1/tokens/{key}", "file": f"/v1/tokens/{key}/file"}
    assert (settings.tokens_path / f"{key}.safetensors").read_bytes() == data
    assert [t["key"] for t in api.get("/v1/tokens").json()] == [key]
    assert api.get(f"/v1/tokens/{key}/file").content == data


def test_token_checks_with_the_models_encoder_widths(published):
    fingerprint, dim = published
    sd = token(fingerprint, dim)
    assert validate_token(sd, CLASSES, 12, dims={"clip_l": dim})["count"] == 3
    with pytest.raises(InvalidRequest, match=rf"encoder needs \[1, {dim + 1}\]"):
        validate_token(sd, CLASSES, 12, dims={"clip_l": dim + 1})
    sdxl = token(fingerprint, dim, {"clip_l": vector(dim), "clip_g": vector(2 * dim)})
    widths = {"clip_l": dim, "clip_g": 2 * dim}
    assert validate_token(sdxl, CLASSES, 12, dims=widths)["tensors"]["clip_g"] == [1, 2 * dim]
    assert validate_token(sdxl, None, 12, family="sdxl")["object"] == "circle"  # classes unknown: not checked
    with pytest.raises(InvalidRequest, match="do not fit"):
        validate_token(sd, CLASSES, 12, dims={"clip_l": dim, "clip_g": 2 * dim})
    with pytest.raises(InvalidRequest, match=r"this file holds 'clip_g', 'clip_l', 'extra'"):
        validate_token(token(fingerprint, dim, {"clip_l": vector(dim), "clip_g": vector(dim), "extra": vector(dim)}),
                       CLASSES, 12)


# ------------------------------------------------------------------------------------------ body limits
def test_a_chunked_body_past_the_limit_is_413(api, settings):
    chunk = b" " * (256 << 10)

    def body(n: int):
        yield b'{"prompt": "a photo of red circles", "count": 3, "pad": "'
        for _ in range(n):
            yield chunk
        yield b'"}'

    n = settings.max_body_bytes // len(chunk) + 2
    for path in ("/v1/jobs", "/v1/tokens"):
        response = api.post(path, content=body(n), headers={"Content-Type": "application/json"})
        assert "content-length" not in response.request.headers  # chunked: only counting can stop it
        assert response.status_code == 413 and response.json()["code"] == "too_large", (path, response.text)


def test_a_10_mb_json_body_is_413(api):
    body = json.dumps({**JOB, "prompt": "circles " * (10 << 17)}).encode()
    assert len(body) > 10 << 20
    response = api.post("/v1/jobs", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 413 and response.json()["code"] == "too_large"
    assert response.json()["message"] == "request bodies are at most 2097152 bytes"


@pytest.fixture
def live_api(settings):
    """The API under uvicorn (a real HTTP server, for what TestClient cannot show), with a small body limit."""
    with serve_api(settings.model_copy(update={"max_body_bytes": 4096})) as port:
        yield port


def test_a_chunked_body_is_answered_413_without_reading_the_rest(live_api):
    """The client sends 6000 bytes of a chunked body that never ends; the answer comes all the same."""
    with socket.create_connection(("127.0.0.1", live_api), timeout=10) as s:
        s.sendall(b"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n")
        for _ in range(3):
            s.sendall(b"7d0\r\n" + b" " * 2000 + b"\r\n")
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            part = s.recv(65536)
            if not part:
                break
            answer += part
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), answer[:200]
    assert json.loads(body)["code"] == "too_large"


# -------------------------------------------------------------------------------------------- job ids
ODD_IDS = ["%C3%84", "a..b", "nope", "0" * 31, "0" * 33, "A" * 32, "g" * 32, "%20" * 4, "x:y", "..", "%2e%2e",
           "%00", "a" * 2000, "-1", "%E2%80%AE" + "0" * 29]


@pytest.mark.parametrize("job_id", ODD_IDS)
def test_a_job_id_out_of_format_is_404_on_every_job_route(api, job_id):
    for method, path in (("GET", "/v1/jobs/{}"), ("GET", "/v1/jobs/{}/events"), ("GET", "/v1/jobs/{}/images/0"),
                         ("GET", "/v1/jobs/{}/images/0?boxes=true"), ("DELETE", "/v1/jobs/{}")):
        response = api.request(method, path.format(job_id))
        assert response.status_code == 404, (method, path, response.text)
        assert response.json()["code"] == "not_found"


def test_a_real_job_with_its_id_suffixed_is_not_found(api):
    """RQ reads ``<id>:<anything>`` as the job ``<id>``; the API does not."""
    job_id = api.post("/v1/jobs", json=JOB).json()["id"]
    assert api.get(f"/v1/jobs/{job_id}").status_code == 200
    for odd in (f"{job_id}:x", job_id.upper(), job_id + "0"):
        assert api.get(f"/v1/jobs/{odd}").status_code == 404, odd


@pytest.mark.parametrize("n", ["-1", "8", "99999999999999999999999999999", "-0"])
def test_an_image_index_out_of_range_is_404(api, n):
    job_id = api.post("/v1/jobs", json=JOB).json()["id"]
    for query in ("", "?boxes=true"):
        response = api.get(f"/v1/jobs/{job_id}/images/{n}{query}")
        assert response.status_code == 404 and response.json()["code"] == "not_found", response.text
    assert api.get(f"/v1/jobs/{job_id}/images/x").status_code == 422


# ---------------------------------------------------------------------------------------------- links
def _put_result(settings, job_id: str) -> None:
    from workers import records

    connection = redis.Redis.from_url(settings.redis_url)
    record = records.read_record(connection, settings, job_id)
    record.results = [{"index": 0, "seed": 1, "detected_count": 3, "verified": True, "boxes": [],
                       "confidences": [], "policy": "resample"}]
    records.save_record(connection, settings, record)


def test_links_are_never_built_from_the_host_header(api, settings, published):
    evil = {"Host": "evil.example", "X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "https"}
    accepted = api.post("/v1/jobs", json=JOB, headers=evil)
    assert accepted.status_code == 202
    job_id = accepted.json()["id"]
    assert accepted.json()["links"] == {"self": f"/v1/jobs/{job_id}", "events": f"/v1/jobs/{job_id}/events",
                                        "images": f"/v1/jobs/{job_id}/images/{{n}}"}
    _put_result(settings, job_id)
    record = api.get(f"/v1/jobs/{job_id}", headers=evil)
    assert record.json()["results"][0]["url"] == f"/v1/jobs/{job_id}/images/0"
    imported = api.post("/v1/tokens", content=token(*published), headers=evil)
    assert imported.status_code == 201
    for response in (accepted, record, imported, api.get("/v1/jobs", headers=evil), api.get("/v1/tokens", headers=evil),
                     api.delete(f"/v1/jobs/{job_id}", headers=evil)):
        assert response.status_code < 300 and "evil.example" not in response.text, response.text


def test_links_use_the_public_url_when_set(settings, published):
    with TestClient(create_app(settings.model_copy(update={"public_url": "https://tally.example/api/"}))) as api:
        accepted = api.post("/v1/jobs", json=JOB, headers={"Host": "evil.example"}).json()
        assert accepted["links"]["self"] == f"https://tally.example/api/v1/jobs/{accepted['id']}"
        _put_result(settings, accepted["id"])
        record = api.get(f"/v1/jobs/{accepted['id']}").json()
        assert record["results"][0]["url"] == f"https://tally.example/api/v1/jobs/{accepted['id']}/images/0"
        imported = api.post("/v1/tokens", content=token(*published, object="cross")).json()
        assert imported["links"]["file"] == f"https://tally.example/api/v1/tokens/{imported['key']}/file"


def test_the_client_resolves_relative_links_against_its_url():
    from tally.client import Client

    with Client("http://127.0.0.1:9/base/") as client:
        assert client.absolute("/v1/jobs/abc") == "http://127.0.0.1:9/base/v1/jobs/abc"
        assert client.absolute("/base/v1/jobs/abc") == "http://127.0.0.1:9/base/v1/jobs/abc"  # a --root-path
        assert client.absolute("https://tally.example/v1/jobs/abc") == "https://tally.example/v1/jobs/abc"
    with Client("http://127.0.0.1:9") as client:
        assert client.absolute("/v1/tokens/circle-3-01") == "http://127.0.0.1:9/v1/tokens/circle-3-01"


# --------------------------------------------------------------------------------------- strict input
@pytest.mark.parametrize("body, fragment", [
    ({"count": "7"}, "count: Input should be a valid integer"),
    ({"count": True}, "count: Input should be a valid integer"),
    ({"count": 7.0}, "count: Input should be a valid integer"),
    ({"count": 3.5}, "count: Input should be a valid integer"),
    ({"count": None}, "count: Input should be a valid integer"),
    ({"count": 10**30}, "count: must be between 1 and 12, got 1000000000000000000000000000000"),
    ({"count": -(10**30)}, "count: must be between 1 and 12"),
    ({"num_images": "2"}, "num_images: Input should be a valid integer"),
    ({"num_images": True}, "num_images: Input should be a valid integer"),
    ({"num_images": 10**30}, "num_images: must be between 1 and 8"),
    ({"seed": "1"}, "seed: Input should be a valid integer"),
    ({"seed": 1.0}, "seed: Input should be a valid integer"),
    ({"seed": -1}, "seed: Input should be greater than or equal to 0"),
    ({"seed": 2**63}, "seed: Input should be less than"),
    ({"queue_if_offline": 1}, "queue_if_offline: Input should be a valid boolean"),
    ({"queue_if_offline": "true"}, "queue_if_offline: Input should be a valid boolean"),
    ({"budget": {"max_candidates": "5"}}, "budget.max_candidates: Input should be a valid integer"),
    ({"budget": {"max_candidates": 5.0}}, "budget.max_candidates: Input should be a valid integer"),
    ({"budget": {"max_candidates": -5}}, "budget.max_candidates: Input should be greater than 0"),
    ({"budget": {"max_candidates": 10**30}}, "budget.max_candidates: at most 1024 is allowed"),
    ({"budget": {"max_iterations": True}}, "budget.max_iterations: Input should be a valid integer"),
    ({"budget": {"max_seconds": "5"}}, "budget.max_seconds: Input should be a valid number"),
    ({"budget": {"max_seconds": -1.5}}, "budget.max_seconds: Input should be greater than 0"),
    ({"budget": {"max_seconds": 1e308}}, "budget.max_seconds: at most 600.0 is allowed"),
    ({"budget": []}, "budget: Input should be a valid dictionary"),
    ({"object": "o" * 101}, "object: String should have at most 100 characters"),
    ({"model": "m" * 65}, "model: String should have at most 64 characters"),
    ({"policy": 1}, "policy"),
])
def test_loosely_typed_or_out_of_range_json_is_422_with_a_message(api, body, fragment):
    response = api.post("/v1/jobs", json={**JOB, **body})
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "invalid_request" and fragment in response.json()["message"], response.text


@pytest.mark.parametrize("literal, where", [("NaN", "count"), ("Infinity", "count"), ("-Infinity", "count"),
                                            ("NaN", "max_seconds"), ("Infinity", "max_seconds"),
                                            ("NaN", "max_candidates")])
def test_nan_and_infinity_literals_are_422(api, literal, where):
    text = (f'{{"prompt": "a photo of red circles", "count": {literal}}}' if where == "count" else
            f'{{"prompt": "a photo of red circles", "count": 3, "budget": {{"{where}": {literal}}}}}')
    response = api.post("/v1/jobs", content=text, headers={"Content-Type": "application/json"})
    assert response.status_code == 422 and response.json()["code"] == "invalid_request", response.text
    assert where in response.json()["message"]


def test_a_valid_request_with_an_enum_and_a_float_budget_is_still_accepted(api):
    response = api.post("/v1/jobs", json={**JOB, "policy": "refine", "seed": 0, "num_images": 8,
                                          "budget": {"max_seconds": 5, "max_candidates": 8, "max_iterations": 2}})
    assert response.status_code == 202, response.text
    record = api.get(f"/v1/jobs/{response.json()['id']}").json()
    assert record["policy"] == "refine" and record["seed"] == 0


@pytest.mark.parametrize("body", [b'{"prompt": "a photo of red circles \xff\xfe", "count": 3}',
                                  "{\"prompt\": \"a photo of red circles\", \"count\": 3}".encode("utf-16"),
                                  b"\xc3\x28"])
def test_a_body_that_is_not_utf8_is_422(api, body):
    response = api.post("/v1/jobs", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422 and response.json()["code"] == "invalid_request", response.text
    assert "UTF-8" in response.json()["message"]


@pytest.mark.parametrize("prompt", ["a photo of red circles\x00", "a photo of \x1b[31mred circles",
                                    "a photo of red\x7f circles", "a photo of red\u0085 circles",
                                    "a photo of red circles\ud800", "\x08a photo of red circles",
                                    # bidi override, byte-order mark, zero-width joiner, line separator
                                    "a photo of \u202ered circles", "\ufeffa photo of red circles",
                                    "a photo of red\u200d circles", "a photo of red circles\u2028"])
def test_control_characters_in_a_prompt_are_refused_saying_so(api, prompt):
    response = api.post("/v1/jobs", content=json.dumps({**JOB, "prompt": prompt}),
                        headers={"Content-Type": "application/json"})
    assert response.status_code == 422 and response.json()["code"] == "invalid_request", response.text
    message = response.json()["message"]
    assert "prompt holds an invisible or control character (U+" in message or (  # a lone surrogate: pydantic's own words
        "\ud800" in prompt and "prompt: Input should be a valid string" in message), message


def test_control_characters_in_an_object_are_refused(api):
    response = api.post("/v1/jobs", json={**JOB, "object": "circle\x00"})
    assert response.status_code == 422 and "object holds an invisible or control character (U+0000" in response.json()["message"]


def test_tabs_and_line_breaks_in_a_prompt_are_whitespace(api):
    response = api.post("/v1/jobs", json={**JOB, "prompt": "a photo of\tred\r\ncircles\n"})
    assert response.status_code == 202, response.text


def test_405_names_the_allowed_methods(api):
    response = api.put("/v1/jobs")
    assert response.status_code == 405 and response.json()["code"] == "method_not_allowed"
    assert response.headers["Allow"] == "GET, POST"
    response = api.post(f"/v1/jobs/{uuid.uuid4().hex}")
    assert response.status_code == 405 and response.headers["Allow"] == "DELETE, GET"
    assert api.patch("/v1/tokens/circle-3-0123456789abcdef").headers["Allow"] == "DELETE, GET"
    # a path a route names literally is that resource, not a token key: DELETE /v1/tokens/{key} is not offered
    assert api.options("/v1/tokens/learning").headers["Allow"] == "GET"


@pytest.mark.parametrize("index", ["1.0", "+1", "1_0", "01", " 1"])
def test_an_image_index_is_digits_only(api, index):
    job = api.post("/v1/jobs", json=JOB).json()["id"]
    response = api.get(f"/v1/jobs/{job}/images/{index}")
    assert response.status_code == 404 and "images are numbered 0, 1" in response.json()["message"], response.text


def test_thirty_concurrent_imports_of_different_tokens_all_succeed(settings, published):
    fingerprint, dim = published
    files = [token(fingerprint, dim, count=str(c), object=o) for c in range(1, 11) for o in ("circle", "square", "cross")]
    with serve_api(settings) as port, httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
        with ThreadPoolExecutor(len(files)) as pool:
            answers = list(pool.map(lambda data: http.post("/v1/tokens", content=data), files))
        statuses = [a.status_code for a in answers]
        assert statuses == [201] * len(files), answers[0].text
        assert len(http.get("/v1/tokens").json()) == len(files)
    assert sorted(p.name for p in settings.tokens_path.iterdir() if p.name.startswith(".")) == []  # no leftovers


@pytest.fixture
def small_mount(tmp_path):
    """A 64 KiB tmpfs: filled up, or remounted read-only, it fails writes as a full or read-only disk does."""
    mount = tmp_path / "mount"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.parametrize("trouble", ["read-only", "full"])
def test_a_token_store_that_refuses_writes_answers_503_store_unavailable(settings, published, small_mount, trouble):
    fingerprint, dim = published
    settings = settings.model_copy(update={"token_dir": small_mount})
    with TestClient(create_app(settings)) as api:
        assert api.post("/v1/tokens", content=token(fingerprint, dim, count="2")).status_code == 201
        if trouble == "read-only":
            subprocess.run(["mount", "-o", "remount,ro", str(small_mount)], check=True)
        else:
            (small_mount / "filler").write_bytes(b"\0" * (60 << 10))
        before = sorted(p.name for p in small_mount.iterdir())
        response = api.post("/v1/tokens", content=token(fingerprint, dim, count="3"))
        assert response.status_code == 503 and response.json()["code"] == "store_unavailable", response.text
        assert ("Read-only" if trouble == "read-only" else "No space") in response.json()["message"]
        deleted = api.delete(f"/v1/tokens/{api.get('/v1/tokens').json()[0]['key']}")
        assert deleted.status_code == (503 if trouble == "read-only" else 204), deleted.text
        assert sorted(p.name for p in small_mount.iterdir()) == (before if trouble == "read-only" else
                                                                 [n for n in before if n != before[0]])


def test_the_openapi_document_states_the_deployments_limits(settings):
    from optimization.reference.models import reference_model

    wide = reference_model().model_copy(update={"id": "wide", "max_count": 40})
    deployment = settings.model_copy(update={"models": [reference_model(), wide], "max_images": 3,
                                             "max_prompt_length": 200})
    for s, max_count, max_images, max_prompt in ((settings, 12, 8, 500), (deployment, 40, 3, 200)):
        with TestClient(create_app(s)) as client:
            schemas = client.get("/openapi.json").json()["components"]["schemas"]
        job, budget = schemas["JobCreate"]["properties"], schemas["BudgetIn"]["properties"]
        assert (job["count"]["minimum"], job["count"]["maximum"]) == (1, max_count)
        assert (job["num_images"]["minimum"], job["num_images"]["maximum"]) == (1, max_images)
        assert job["prompt"]["maxLength"] == max_prompt and job["prompt"]["minLength"] == 1
        maxima = {name: next(b for b in budget[name]["anyOf"] if b["type"] != "null")["maximum"] for name in budget}
        assert maxima == {"max_seconds": 600.0, "max_candidates": 1024, "max_iterations": 500}


# ---------------------------------------------------------------------------------------- schemathesis
@pytest.mark.slow
def test_the_openapi_document_holds_under_property_based_testing(settings, published):
    """``schemathesis run`` in this process, on the API's own OpenAPI document: its examples, coverage
    (boundary values of every stated limit) and fuzzing phases, positive and negative cases, seeded and
    deterministic, at most 20 examples per operation and phase (some 600 cases, seconds here). No response
    may be a 5xx, and each must conform to the document (status code, content type, headers, body).

    Run through schemathesis' engine rather than its pytest plugin, whose lazy-fixture mode fails on
    pytest 9 (``request.node._nodeid``)."""
    from tally.benchmarks.fuzz import fuzz_openapi

    # A live worker per model as its heartbeat says (without one, 503 no_worker is the documented answer), and the
    # model's info published, so token uploads reach the full check. Jobs stay queued; an event stream
    # (never of a real job: generated ids are random) would end on its first heartbeat.
    for model in settings.models:
        beat(redis.Redis.from_url(settings.redis_url), settings, model.id, "fuzz",
             json.dumps({"name": "fuzz", "host": "test", "pid": 0}), 600)
    app = create_app(settings.model_copy(update={"sse_heartbeat_s": 0.05}))
    result = fuzz_openapi(app, max_examples=20)
    assert not result["problems"], f"{len(result['problems'])} distinct problems:\n" + "\n".join(
        f"- {p}" for p in result["problems"][:20])
    assert result["server_errors"] == result["schema_violations"] == 0 and result["cases"] >= 300, result



@pytest.mark.parametrize("path", ["/docs", "/redoc", "/docs/oauth2-redirect"])
def test_the_docs_pages_allow_only_their_own_inline_scripts_by_hash(api, path):
    import base64
    import hashlib
    import re

    response = api.get(path)
    policy = response.headers["Content-Security-Policy"]
    scripts = re.search(r"script-src ([^;]*)", policy)[1]
    assert "unsafe-inline" not in scripts and "object-src 'none'" in policy
    inline = re.findall(r"<script>(.*?)</script>", response.text, re.DOTALL)
    assert sorted(re.findall(r"'sha256-([^']+)'", scripts)) == sorted(
        base64.b64encode(hashlib.sha256(s.encode()).digest()).decode() for s in inline)
