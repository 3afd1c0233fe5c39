"""The object store (``TALLY_STORE=s3://...``) against a real S3-API server: moto's standalone server, started
here as a process on a free port. The store itself, the token library on it (one library for every host,
a Redis flush loses nothing, no key id reaches outside ``tokens/``), a job through a real worker whose image
lands in the bucket and is served by the API (streamed, or a redirect to a presigned URL), and a bad
``TALLY_STORE`` refused at start."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import httpx
import numpy as np
import pytest
import redis
import safetensors.numpy
from fastapi.testclient import TestClient
from pydantic import ValidationError

from optimization.errors import InvalidRequest
from optimization.token_file import PLACEHOLDER
from service.app import create_app
from workers.keys import Keys
from workers.objects import S3Store, store_from_settings
from workers.settings import Settings
from workers.token_files import TokenObjects
from workers.tokens import TokenStore

from .conftest import free_port, launch_service

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FINGERPRINT = "0123456789abcdef"
S3_ENV = {"AWS_ACCESS_KEY_ID": "tally-test", "AWS_SECRET_ACCESS_KEY": "tally-test-secret",
          "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def s3_endpoint():
    """moto's S3 server on a free port, and credentials for it in this process's environment."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(endpoint, timeout=1)
            break
        except httpx.TransportError:
            assert proc.poll() is None and time.monotonic() < deadline, "moto's S3 server did not start"
            time.sleep(0.1)
    with pytest.MonkeyPatch.context() as env:
        for name, value in S3_ENV.items():
            env.setenv(name, value)
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
            env.delenv(name, raising=False)
        yield endpoint
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def bucket() -> str:
    return f"tally-{uuid.uuid4().hex[:12]}"


def s3_client(endpoint: str):
    """A plain boto3 client, to look at the bucket from outside Tally."""
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")


def read_object(endpoint: str, bucket: str, key: str) -> bytes:
    return s3_client(endpoint).get_object(Bucket=bucket, Key=key)["Body"].read()


def with_store(settings: Settings, endpoint: str, url: str, **extra) -> Settings:
    return settings.model_copy(update={"store": url, "s3_endpoint_url": endpoint, "store_create_bucket": True, **extra})


def token(count: int = 3, object_: str = "circle") -> bytes:
    metadata = {"tally_format": "1", "model_fingerprint": FINGERPRINT, "object": object_, "count": str(count),
                "init_word": "of", "metadata": "{}"}
    return safetensors.numpy.save({PLACEHOLDER: np.full((1, 8), 0.25, np.float32)}, metadata=metadata)


# -------------------------------------------------------------------------------------------- the store
def test_an_s3_store_puts_gets_lists_deletes_and_presigns_under_its_prefix(s3_endpoint, bucket):
    store = S3Store(bucket, "deploy/one", endpoint_url=s3_endpoint, create_bucket=True)
    store.put("images/a/0.png", PNG_SIGNATURE + b"0", "image/png")
    store.put("images/a/1.png", PNG_SIGNATURE + b"1", "image/png")
    store.put("tokens/x.safetensors", b"token")
    assert store.get("images/a/1.png") == PNG_SIGNATURE + b"1" and store.get("images/a/2.png") is None
    assert store.list("images/") == ["images/a/0.png", "images/a/1.png"]
    assert store.list() == ["images/a/0.png", "images/a/1.png", "tokens/x.safetensors"]
    outside = [o["Key"] for o in s3_client(s3_endpoint).list_objects_v2(Bucket=bucket)["Contents"]]
    assert sorted(outside) == [f"deploy/one/{k}" for k in ("images/a/0.png", "images/a/1.png", "tokens/x.safetensors")]

    fetched = httpx.get(store.url("images/a/0.png", 60))  # no credentials: the signature is the permission
    assert fetched.status_code == 200 and fetched.content == PNG_SIGNATURE + b"0"
    assert fetched.headers["content-type"] == "image/png"

    store.delete("images/a/0.png")
    store.delete("images/a/0.png")  # already gone: no error
    assert store.get("images/a/0.png") is None and store.list("images/") == ["images/a/1.png"]


def test_a_missing_bucket_is_created_only_when_the_setting_says_so(s3_endpoint, bucket):
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError, match="NoSuchBucket"):
        S3Store(bucket, endpoint_url=s3_endpoint).put("k", b"v")
    S3Store(bucket, endpoint_url=s3_endpoint, create_bucket=True).put("k", b"v")
    assert S3Store(bucket, endpoint_url=s3_endpoint, create_bucket=True).get("k") == b"v"  # it exists: kept


def test_without_a_store_setting_the_embedded_default_stays(settings):
    assert settings.store is None and store_from_settings(settings) is None
    assert Settings(store="").store is None  # an empty TALLY_STORE (e.g. compose's) means none too


@pytest.mark.parametrize("url", ["minio://tally", "tally", "s3://", "s3://Upper_Case", "s3://ab",
                                 "s3://tally/../other", "s3://tally/a b"])
def test_a_bad_store_url_is_a_clear_configuration_error(monkeypatch, url):
    monkeypatch.setenv("TALLY_STORE", url)
    with pytest.raises(ValidationError, match=r"TALLY_STORE"):
        Settings()


def test_a_worker_with_a_bad_store_url_refuses_to_start_and_says_why(tmp_path):
    env = {**os.environ, "TALLY_STORE": "https://bucket.example/prefix", "TALLY_RUNTIME_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", "from tally.cli import main; main(['worker'])"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "TALLY_STORE must be s3://BUCKET[/PREFIX], got 'https://bucket.example/prefix'" in done.stderr


# ------------------------------------------------------------------------------------------- the tokens
def test_a_token_put_on_one_host_is_served_by_a_fresh_host_after_it_reseeds(settings, s3_endpoint, bucket):
    host_a = with_store(settings, s3_endpoint, f"s3://{bucket}/lib")
    host_b = host_a.model_copy(update={"redis_prefix": settings.redis_prefix + "b",
                                       "token_dir": settings.tokens_path / "b"})
    connection, data = redis.Redis.from_url(settings.redis_url), token()
    info = TokenStore.for_settings(host_a, connection).put(data)
    assert read_object(s3_endpoint, bucket, f"lib/tokens/{info['key']}.safetensors") == data
    assert not settings.tokens_path.exists()  # nothing on this host's disk

    fresh = TokenStore.for_settings(host_b, connection)
    assert fresh.list() == []  # its Redis index is empty until it re-seeds
    assert fresh.reseed() == 1
    assert [i["key"] for i in fresh.list()] == [info["key"]] and fresh.get(info["key"]) == data


def test_a_redis_flush_loses_no_token_in_the_store(settings, s3_endpoint, bucket, redis_url):
    settings = with_store(settings, s3_endpoint, f"s3://{bucket}", redis_url=redis_url.rsplit("/", 1)[0] + "/1")
    connection = redis.Redis.from_url(settings.redis_url)  # database 1: flushed alone
    store, data = TokenStore.for_settings(settings, connection), token(4)
    key = store.put(data)["key"]
    connection.flushdb()
    assert store.get(key) == data  # read through from the store, and cached again
    connection.flushdb()
    assert store.list() == [] and store.reseed() == 1
    assert [i["key"] for i in store.list()] == [key]


def test_a_token_deleted_is_gone_from_the_store_and_the_index(settings, s3_endpoint, bucket):
    settings = with_store(settings, s3_endpoint, f"s3://{bucket}/lib")
    store = TokenStore.for_settings(settings, redis.Redis.from_url(settings.redis_url))
    key = store.put(token(5))["key"]
    assert store.delete(key) is True
    assert store.get(key) is None and store.list() == [] and store_from_settings(settings).list("tokens/") == []
    assert store.delete(key) is False


def test_no_key_id_reaches_outside_the_tokens_prefix(settings, s3_endpoint, bucket):
    settings = with_store(settings, s3_endpoint, f"s3://{bucket}/lib")
    objects, secret = store_from_settings(settings), token()
    objects.put("images/secret-1-0123456789abcdef.safetensors", secret)  # not a token's place
    objects.put("tokens/notes.safetensors", b"{}")  # a foreign file where tokens live
    objects.put("tokens/nested/circle-3-0123456789abcdef.safetensors", token())
    store = TokenStore.for_settings(settings, redis.Redis.from_url(settings.redis_url))
    for hostile in ("../images/secret-1-0123456789abcdef", "../images/secret", "images/secret-1-0123456789abcdef",
                    "nested/circle-3-0123456789abcdef", "circle-3-0123456789abcdef/../../x"):
        assert store.get(hostile) is None and store.delete(hostile) is False
        with pytest.raises(InvalidRequest):
            TokenObjects(objects).key(hostile)
    assert objects.get("images/secret-1-0123456789abcdef.safetensors") == secret  # untouched
    assert store.reseed() == 0  # the foreign and nested files are skipped, never fatal


# --------------------------------------------------------------------------------- a job through a worker
# The slow tier: these start the service (Redis, API, a reference worker) once, about half a minute.
@pytest.fixture(scope="module")
def service(tmp_path_factory, s3_endpoint):
    """Redis, the API and a reference worker, all with TALLY_STORE on a fresh bucket that already holds a token."""
    bucket = f"tally-{uuid.uuid4().hex[:12]}"
    store = S3Store(bucket, "svc", endpoint_url=s3_endpoint, create_bucket=True)
    store.put("tokens/square-2-0123456789abcdef.safetensors", token(2, "square"))
    env = {"TALLY_STORE": f"s3://{bucket}/svc", "TALLY_S3_ENDPOINT_URL": s3_endpoint, **S3_ENV}
    with launch_service(tmp_path_factory.mktemp("store"), env) as running:
        running.bucket = bucket
        yield running


@pytest.fixture(scope="module")
def finished(service) -> dict:
    return service.wait(service.submit(prompt="a photo of red circles", count=2, seed=1, policy="resample",
                                       budget={"max_candidates": 2}))


@pytest.mark.slow
def test_a_worker_reseeds_the_token_library_from_the_store(service):
    assert [t["key"] for t in service.http.get("/v1/tokens").json()] == ["square-2-0123456789abcdef"]


@pytest.mark.slow
def test_a_jobs_image_goes_to_the_bucket_and_redis_holds_only_its_key(service, finished, s3_endpoint):
    assert finished["status"] == "succeeded", finished
    stored = s3_client(s3_endpoint).get_object(Bucket=service.bucket, Key=f"svc/images/{finished['id']}/0.png")
    png = stored["Body"].read()
    assert png.startswith(PNG_SIGNATURE) and stored["ContentType"] == "image/png"
    key = Keys(service.settings.redis_prefix).job_images(finished["id"], 0)
    assert service.redis.get(key) == f"object:images/{finished['id']}/0.png".encode()
    assert 0 < service.redis.ttl(key) <= service.settings.result_ttl  # the image lives as long as the record


@pytest.mark.slow
def test_the_api_streams_the_stored_image_to_its_owner_only(service, finished, s3_endpoint):
    png = read_object(s3_endpoint, service.bucket, f"svc/images/{finished['id']}/0.png")
    response = service.http.get(f"/v1/jobs/{finished['id']}/images/0")
    assert response.status_code == 200 and response.content == png
    other = service.http.get(f"/v1/jobs/{finished['id']}/images/0", headers={"X-API-Key": "someone-else"})
    assert other.status_code == 404
    assert service.http.get(f"/v1/jobs/{finished['id']}/images/1").status_code == 404  # one image was asked for


@pytest.mark.slow
def test_with_presign_the_api_redirects_the_owner_to_a_url_that_serves_the_png(service, finished, s3_endpoint):
    settings = Settings(redis_url=service.settings.redis_url, store=f"s3://{service.bucket}/svc",
                        s3_endpoint_url=s3_endpoint, store_presign=True)
    png = read_object(s3_endpoint, service.bucket, f"svc/images/{finished['id']}/0.png")
    path = f"/v1/jobs/{finished['id']}/images/0"
    with TestClient(create_app(settings), follow_redirects=False) as api:
        redirect = api.get(path)
        assert redirect.status_code == 307, redirect.text
        fetched = httpx.get(redirect.headers["location"])
        assert fetched.status_code == 200 and fetched.content == png
        assert api.get(path, headers={"X-API-Key": "someone-else"}).status_code == 404  # checked before any URL
        converted = api.get(path, params={"format": "jpeg"})  # anything but the plain PNG is made by the API
        assert converted.status_code == 200 and converted.headers["content-type"] == "image/jpeg"
