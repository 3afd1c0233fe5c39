"""The object store: where Tally keeps bytes that outgrow Redis or must outlive a host (``TALLY_STORE``).

One SDXL image is about 1.5 MB, and a worker's own disk is not shared with the next host; with
``TALLY_STORE=s3://bucket/prefix`` result images and count-token files go to any S3-API server (AWS S3,
MinIO, Ceph, moto ...) under ``<prefix>/images/<job id>/<n>.png`` and ``<prefix>/tokens/<key id>.safetensors``.
Without it the embedded default stays: tokens in a local folder, images in Redis.

The endpoint comes from ``TALLY_S3_ENDPOINT_URL`` (else the standard ``AWS_ENDPOINT_URL_S3`` /
``AWS_ENDPOINT_URL``; none: AWS itself), credentials and region from boto3's standard chain
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION`` ..., default region us-east-1). boto3 is
imported only when a store is configured. Result images keep their Redis key (holding the object's key
rather than the PNG) with the result TTL: the API serves an image only while that key lives, and deleting
expired objects is the bucket's lifecycle rule (one of ``result_ttl`` days on ``<prefix>/images/``).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Protocol

import redis

from .keys import Keys

if TYPE_CHECKING:
    from .settings import Settings

log = logging.getLogger("tally.objects")

# S3's bucket naming rules (3-63 characters: lowercase letters, digits, dots, hyphens; alphanumeric at the ends).
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_PREFIX_PART = re.compile(r"[A-Za-z0-9!_.*'()-]+")  # S3's safe characters, one path segment
PNG = "image/png"


class ObjectStore(Protocol):
    """Bytes under string keys. Keys are relative to the store's own prefix; a missing object is None."""

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None: ...

    def get(self, key: str) -> bytes | None: ...

    def delete(self, key: str) -> None: ...

    def list(self, prefix: str = "") -> list[str]: ...

    def url(self, key: str, expires: int) -> str | None:
        """A URL that fetches the object without credentials for ``expires`` seconds (presigned), or None."""


# --------------------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class StoreLocation:
    """``s3://bucket[/prefix]``, parsed and checked."""

    bucket: str
    prefix: str = ""

    @classmethod
    def parse(cls, url: str) -> "StoreLocation":
        """ValueError (with what was expected) unless ``url`` is ``s3://BUCKET[/PREFIX]``."""
        scheme, sep, rest = url.partition("://")
        if not sep or scheme != "s3":
            raise ValueError(f"TALLY_STORE must be s3://BUCKET[/PREFIX], got {url[:100]!r}")
        bucket, _, prefix = rest.partition("/")
        if not _BUCKET.fullmatch(bucket):
            raise ValueError(f"TALLY_STORE: {bucket[:70]!r} is not an S3 bucket name (3-63 characters: lowercase "
                             "letters, digits, dots and hyphens)")
        parts = [p for p in prefix.split("/") if p]
        if any(p in (".", "..") or not _PREFIX_PART.fullmatch(p) for p in parts):
            raise ValueError(f"TALLY_STORE: prefix {prefix[:100]!r} must be path segments of letters, digits and "
                             "!_.*'()- (no '.' or '..')")
        return cls(bucket, "/".join(parts))


def store_from_settings(settings: Settings) -> ObjectStore | None:
    """The configured object store, one per process and configuration; None: the embedded default."""
    if settings.store is None:
        return None
    endpoint = (settings.s3_endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3")
                or os.environ.get("AWS_ENDPOINT_URL") or None)
    return _s3_store(settings.store, endpoint, settings.s3_public_endpoint_url, settings.store_create_bucket)


@lru_cache(maxsize=8)
def _s3_store(url: str, endpoint_url: str | None, public_endpoint_url: str | None, create_bucket: bool) -> "S3Store":
    location = StoreLocation.parse(url)
    return S3Store(location.bucket, location.prefix, endpoint_url=endpoint_url,
                   public_endpoint_url=public_endpoint_url, create_bucket=create_bucket)


# ----------------------------------------------------------------------------------------------- S3
class S3Store:
    """An ``ObjectStore`` on the S3 API (boto3). With an endpoint URL (an S3-compatible server) requests use
    path-style addressing (``http://host/bucket/key``), which every such server understands.

    ``public_endpoint_url``: where clients reach the same server when it differs from where Tally does
    (e.g. ``http://minio:9000`` inside compose, ``https://objects.example`` outside); presigned URLs are
    signed for it, since a signature covers the host. ``create_bucket``: make the bucket if it is missing
    (tests, a fresh MinIO); a deployment normally creates it with its lifecycle rule."""

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None,
                 public_endpoint_url: str | None = None, create_bucket: bool = False):
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self._client = self._make_client(endpoint_url)
        self._signer = self._make_client(public_endpoint_url) if public_endpoint_url else self._client
        if create_bucket:
            self._ensure_bucket()

    @staticmethod
    def _make_client(endpoint_url: str | None):
        import boto3
        from botocore.config import Config

        session = boto3.session.Session()  # its own session: the default one is not thread-safe to create clients
        config = Config(signature_version="s3v4", connect_timeout=5, read_timeout=30,
                        retries={"max_attempts": 3, "mode": "standard"},
                        s3={"addressing_style": "path"} if endpoint_url else {})
        return session.client("s3", endpoint_url=endpoint_url, region_name=session.region_name or "us-east-1",
                              config=config)

    def _ensure_bucket(self) -> None:
        from botocore.exceptions import ClientError

        try:
            self._client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
                raise
        region = self._client.meta.region_name
        extra = {} if region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": region}}
        try:
            self._client.create_bucket(Bucket=self.bucket, **extra)
            log.info("created bucket %s", self.bucket)
        except self._client.exceptions.BucketAlreadyOwnedByYou:
            pass  # another process made it a moment ago

    def _full(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        self._client.put_object(Bucket=self.bucket, Key=self._full(key), Body=data, ContentType=content_type)

    def get(self, key: str) -> bytes | None:
        from botocore.exceptions import ClientError

        try:
            return self._client.get_object(Bucket=self.bucket, Key=self._full(key))["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                return None
            raise

    def delete(self, key: str) -> None:
        self._client.delete_object(Bucket=self.bucket, Key=self._full(key))  # absent already: no error

    def list(self, prefix: str = "") -> list[str]:
        """Keys under ``prefix`` (relative to the store's prefix), sorted."""
        base = self._full("")
        pages = self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self._full(prefix))
        return sorted(o["Key"][len(base):] for page in pages for o in page.get("Contents", []))

    def url(self, key: str, expires: int) -> str | None:
        return self._signer.generate_presigned_url("get_object", Params={"Bucket": self.bucket, "Key": self._full(key)},
                                                   ExpiresIn=expires)

    def __repr__(self) -> str:
        return f"S3Store(s3://{self.bucket}/{self.prefix})"


# --------------------------------------------------------------------------------------------- keys
def image_key(job_id: str, n: int) -> str:
    return f"images/{job_id}/{n}.png"


TOKENS = "tokens/"


# ------------------------------------------------------------------------------------------ result images
# A job's image n lives under Redis key ``Keys.job_images`` for the result TTL: the PNG itself (no store), or
# ``_REF`` + the object's key (with a store). The key's TTL is the image's life either way.
_REF = b"object:"


def save_image(pipe: redis.client.Pipeline, settings: Settings, job_id: str, n: int, png: bytes) -> None:
    """Keep image ``n`` of a job (worker side): to the store now, its Redis key with the pipeline."""
    store = store_from_settings(settings)
    key = Keys(settings.redis_prefix).job_images(job_id, n)
    if store is None:
        pipe.set(key, png, ex=settings.result_ttl)
        return
    store.put(image_key(job_id, n), png, PNG)
    pipe.set(key, _REF + image_key(job_id, n).encode(), ex=settings.result_ttl)


def _stored(connection: redis.Redis, settings: Settings, job_id: str,
            n: int) -> tuple[bytes | None, ObjectStore | None]:
    """(Redis's value of the image, the store that holds it when that value is a reference)."""
    raw = connection.get(Keys(settings.redis_prefix).job_images(job_id, n))
    if raw is None or not raw.startswith(_REF):
        return raw, None
    store = store_from_settings(settings)
    if store is None:
        log.warning("image %d of job %s is in an object store, and this process has no TALLY_STORE", n, job_id)
    return raw, store


def load_image(connection: redis.Redis, settings: Settings, job_id: str, n: int) -> bytes | None:
    """The PNG of image ``n`` of a job, wherever it is kept; None when it never was or has expired."""
    raw, store = _stored(connection, settings, job_id, n)
    if raw is None or not raw.startswith(_REF):
        return raw
    return store.get(raw[len(_REF):].decode()) if store is not None else None


def image_url(connection: redis.Redis, settings: Settings, job_id: str, n: int) -> str | None:
    """A presigned URL of the PNG when ``store_presign`` is set and the image is in the store, else None."""
    if not settings.store_presign:
        return None
    raw, store = _stored(connection, settings, job_id, n)
    if store is None:
        return None
    return store.url(raw[len(_REF):].decode(), settings.store_presign_seconds)
