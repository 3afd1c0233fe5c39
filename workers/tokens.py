"""``TokenStore``: the library of count tokens, one store for the workers, the API and the CLI.

A token is its textual-inversion safetensors file, stored whole. The durable layer is the source of
truth: a local directory (``<dir>/<key id>.safetensors``, the default) or, with ``TALLY_STORE``, the object
store (``<prefix>/tokens/<key id>.safetensors``), which every host shares. Redis holds the index and a cache
of the bytes, so every API replica lists the same library. Every write goes to the durable layer first,
then to Redis, so a token learned or imported by any process is listed at once; workers re-seed Redis from
the durable layer (``token_files``) at start, so a Redis flush (or a fresh host) loses no learned token. A key id is parsed
before it names a file or an object, so no id reaches outside ``tokens/``. Torch-free (the API uses it):
metadata comes from the safetensors header (``optimization.token_file``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import redis

from optimization.errors import InvalidRequest
from optimization.token_file import SUFFIX, TokenKey, token_info

from .keys import Keys
from .settings import Settings
from .token_files import TokenDirectory, TokenFiles, checked, files_for

if TYPE_CHECKING:
    from optimization.count_token import CountToken
    from optimization.engine import CountEngine

log = logging.getLogger("tally.tokens")


# ------------------------------------------------------------------------------------------------ store
class TokenStore:
    """``files``: the durable layer, or a directory for one. ``redis_optional``: for commands that may run
    where no Redis answers (benchmarks, ``tally optimize``): the store then works on the durable layer
    alone, and workers index its files when they start."""

    def __init__(self, connection: redis.Redis, files: TokenFiles | Path, keys: Keys = Keys(),
                 redis_optional: bool = False):
        self.redis = connection
        self.files = TokenDirectory(files) if isinstance(files, (str, Path)) else files
        self.keys = keys
        self.redis_optional = redis_optional
        self._redis_ok = True

    @classmethod
    def for_settings(cls, settings: Settings, connection: redis.Redis, redis_optional: bool = False) -> "TokenStore":
        return cls(connection, files_for(settings), Keys(settings.redis_prefix), redis_optional)

    def _index(self, operation, default=None):
        """Run a Redis operation; where Redis is optional and away, warn once and work on files alone."""
        if not self._redis_ok:
            return default
        try:
            return operation(self.redis)
        except redis.ConnectionError as exc:
            if not self.redis_optional:
                raise
            log.warning("no Redis (%s): token files only; workers index them when they start", exc)
            self._redis_ok = False
            return default

    def put(self, data: bytes) -> dict:
        """Store a token file (validated) durably first, then in the Redis index; returns its info."""
        info = checked(data)
        self.files.write(info["key"], data)
        self._cache(info, data)
        return info

    def _cache(self, info: dict, data: bytes) -> None:
        def write(r: redis.Redis) -> None:
            with r.pipeline() as pipe:
                pipe.hset(self.keys.token(info["key"]), mapping={"data": data, "info": json.dumps(info)})
                pipe.sadd(self.keys.token_index(), info["key"])
                pipe.execute()

        self._index(write)

    def get(self, key_id: str) -> bytes | None:
        try:
            TokenKey.parse(key_id)
        except InvalidRequest:
            return None
        data = self._index(lambda r: r.hget(self.keys.token(key_id), "data"))
        if data is None:  # flushed Redis: the file is the truth
            data = self.files.read(key_id)
            if data is not None:
                try:
                    self._cache(checked(data), data)
                except InvalidRequest as exc:  # a corrupt or non-finite file is never served
                    log.warning("not serving %s%s from %s: %s", key_id, SUFFIX, self.files, exc)
                    return None
        return data

    def info(self, key_id: str) -> dict | None:
        raw = self._index(lambda r: r.hget(self.keys.token(key_id), "info"))
        if raw is not None:
            return json.loads(raw)
        data = self.get(key_id)
        return token_info(data) if data is not None else None

    def list(self, model: str | None = None, object_: str | None = None, count: int | None = None) -> list[dict]:
        members = self._index(lambda r: r.smembers(self.keys.token_index()))
        if members is None:  # no index: the files are the library
            members = self.files.ids()
        ids = sorted(k.decode() if isinstance(k, bytes) else k for k in members)
        infos = [i for i in (self.info(k) for k in ids) if i is not None]
        return [i for i in infos if (model is None or i["model"] == model)
                and (object_ is None or i["object"] == object_) and (count is None or i["count"] == count)]

    def delete(self, key_id: str) -> bool:
        try:
            existed = self.files.remove(key_id)
        except InvalidRequest:  # not a key: only an index entry can exist under it, never a file
            existed = False

        def unindex(r: redis.Redis) -> list:
            with r.pipeline() as pipe:
                pipe.delete(self.keys.token(key_id))
                pipe.srem(self.keys.token_index(), key_id)
                return pipe.execute()

        indexed = any(self._index(unindex, [0, 0]))
        return existed or indexed

    def reseed(self) -> int:
        """Load every durable token file into Redis (a worker does this at start); returns how many."""
        n = 0
        for key_id in self.files.ids():
            try:
                data = self.files.read(key_id)
                if data is None:  # deleted since it was listed
                    continue
                info = checked(data)
            except InvalidRequest as exc:  # a foreign, corrupt or non-finite file is skipped, never fatal
                log.warning("skipping %s%s in %s: %s", key_id, SUFFIX, self.files, exc)
                continue
            self._cache(info, data)
            n += 1
        self._index(lambda r: r.set(self.keys.token_library_indexed(), 1))
        return n

    # ----------------------------------------------------------------------------- with a loaded model
    def token_for(self, engine: CountEngine, cls: str, count: int) -> CountToken | None:
        """The library token of (engine's model, cls, count), or None."""
        from optimization.count_token import CountToken

        data = self.get(engine.token_key(cls, count).id)
        if data is None:
            return None
        token = CountToken.from_bytes(data, expected_model=engine.t2i.fingerprint)
        try:
            engine.check_token(token)
        except InvalidRequest as exc:  # stored before the check, or by hand: not used (a miss, learned again)
            log.warning("library token %s not used: %s", token.key.id, exc)
            return None
        return token

    def admit(self, token: CountToken, min_gain: float, max_gain_p: float, retry_after_s: int = 0) -> bool:
        """The library's door: a learned token enters only if its exact rate on admission seeds beats the base
        prompt's by ``min_gain``, a gain chance explains at most ``max_gain_p`` of the time; otherwise its figures
        are recorded so the key is not learned again for a while."""
        key_id, metadata = token.key.id, token.metadata
        if _passes(metadata, min_gain, max_gain_p):
            self.put(token.to_bytes())
            self._index(lambda r: r.delete(self.keys.library_no_gain(key_id)))
            return True
        figures = {"key": key_id, "gain": metadata.get("gain"), "validation": metadata.get("validation"),
                   "gain_p": metadata.get("gain_p"),
                   "iterations": metadata.get("iterations"), "min_gain": min_gain, "max_gain_p": max_gain_p}
        log.info("token %s not admitted: gain %s (p %s) against %s (p %s)", key_id, metadata.get("gain"),
                 metadata.get("gain_p"), min_gain, max_gain_p)
        if retry_after_s > 0:
            self._index(lambda r: r.set(self.keys.library_no_gain(key_id), json.dumps(figures), ex=retry_after_s))
        return False

    def unhelpful(self, min_gain: float, max_gain_p: float) -> list[dict]:
        """Tokens the library's door would refuse today: not learned as library tokens, or whose recorded
        held-out gain over the base is below ``min_gain`` or not significant (e.g. learned before the rule, or
        the bar rose)."""
        return [i for i in self.list() if not _passes(i["metadata"], min_gain, max_gain_p)]

    def no_gain(self, key_id: str) -> dict | None:
        """The figures of a key whose last learning found no gain, while it is not retried."""
        raw = self._index(lambda r: r.get(self.keys.library_no_gain(key_id)))
        return json.loads(raw) if raw else None


def _passes(metadata: dict, min_gain: float, max_gain_p: float) -> bool:
    """The gate's rule on a token's recorded figures (a token learned before the p-value was recorded has 1.0)."""
    return (metadata.get("mode") == "library" and bool(metadata.get("validation"))
            and metadata.get("gain", float("-inf")) >= min_gain and metadata.get("gain_p", 1.0) <= max_gain_p)
