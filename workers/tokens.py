"""``TokenStore``: the library of count tokens, in Redis (fast, shared) and in a durable directory.

A token is its textual-inversion safetensors file, stored whole: bytes in Redis under the key id, and
the same bytes as ``<dir>/<key id>.safetensors``. The directory is the source of truth: workers re-seed
Redis from it at start, so a Redis flush loses no learned token. This module never imports torch (the
API uses it): metadata comes from the safetensors header (``optimization.token_file``).
"""

from __future__ import annotations

import json
from pathlib import Path

import redis

from optimization.token_file import token_info

from .keys import Keys

class TokenStore:
    def __init__(self, connection: redis.Redis, directory: Path, keys: Keys = Keys()):
        self.redis = connection
        self.directory = Path(directory)
        self.keys = keys

    def path(self, key_id: str) -> Path:
        return self.directory / f"{key_id}.safetensors"

    def put(self, data: bytes) -> dict:
        """Store a token file (validated) durably first, then in Redis; returns its info."""
        info = token_info(data)
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.path(info["key"])
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
        self._cache(info, data)
        return info

    def _cache(self, info: dict, data: bytes) -> None:
        with self.redis.pipeline() as pipe:
            pipe.hset(self.keys.token(info["key"]), mapping={"data": data, "info": json.dumps(info)})
            pipe.sadd(self.keys.token_index(), info["key"])
            pipe.execute()

    def get(self, key_id: str) -> bytes | None:
        data = self.redis.hget(self.keys.token(key_id), "data")
        if data is None and self.path(key_id).is_file():  # flushed Redis: the file is the truth
            data = self.path(key_id).read_bytes()
            self._cache(token_info(data), data)
        return data

    def info(self, key_id: str) -> dict | None:
        raw = self.redis.hget(self.keys.token(key_id), "info")
        if raw is not None:
            return json.loads(raw)
        data = self.get(key_id)
        return token_info(data) if data is not None else None

    def list(self, model: str | None = None, object_: str | None = None, count: int | None = None) -> list[dict]:
        ids = sorted(k.decode() if isinstance(k, bytes) else k for k in self.redis.smembers(self.keys.token_index()))
        infos = [i for i in (self.info(k) for k in ids) if i is not None]
        return [i for i in infos if (model is None or i["model"] == model)
                and (object_ is None or i["object"] == object_) and (count is None or i["count"] == count)]

    def delete(self, key_id: str) -> bool:
        existed = self.path(key_id).is_file() or bool(self.redis.exists(self.keys.token(key_id)))
        self.path(key_id).unlink(missing_ok=True)
        with self.redis.pipeline() as pipe:
            pipe.delete(self.keys.token(key_id))
            pipe.srem(self.keys.token_index(), key_id)
            pipe.execute()
        return existed

    def reseed(self) -> int:
        """Load every durable token file into Redis (a worker does this at start); returns how many."""
        n = 0
        for path in sorted(self.directory.glob("*.safetensors")):
            data = path.read_bytes()
            try:
                self._cache(token_info(data), data)
                n += 1
            except ValueError:
                continue  # a foreign or corrupt file in the directory is skipped, never fatal
        return n
