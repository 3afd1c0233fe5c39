"""Open event streams, counted per key: each holds a Redis connection, so a key may hold only so many.

A slot is a member of the key's sorted set scored by when it lapses; a stream renews its slot at every
heartbeat and gives it back when it ends, and the slot of an API process that died lapses on its own.
"""

from __future__ import annotations

import json
import time
import uuid

import redis.asyncio

from .keys import Keys
from .settings import Settings


class StreamSlots:
    def __init__(self, connection: redis.asyncio.Redis, settings: Settings, owner: str):
        self.redis, self.cap = connection, settings.max_streams_per_key
        self.key = Keys(settings.redis_prefix).open_streams(owner)
        self.lapse_s = 3 * settings.sse_heartbeat_s
        self.slot = uuid.uuid4().hex

    async def take(self) -> bool:
        """Hold a slot; False (and none held) when the key already holds its cap."""
        now = time.time()
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zremrangebyscore(self.key, "-inf", now)
            pipe.zadd(self.key, {self.slot: now + self.lapse_s})
            pipe.zcard(self.key)
            pipe.expire(self.key, int(self.lapse_s) + 1)
            held = (await pipe.execute())[2]
        if held > self.cap:
            await self.release()
            return False
        return True

    async def renew(self) -> None:
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.zadd(self.key, {self.slot: time.time() + self.lapse_s})
                pipe.expire(self.key, int(self.lapse_s) + 1)
                await pipe.execute()
        except redis.ResponseError:
            pass  # Redis refuses writes (full, read-only): the stream goes on; its slot may lapse meanwhile

    async def release(self) -> None:
        try:
            await self.redis.zrem(self.key, self.slot)
        except redis.RedisError:
            pass  # it lapses on its own


async def key_is_live(connection: redis.asyncio.Redis, settings: Settings, key_hash: str) -> bool:
    """Whether an API key is still known and not revoked (a stream that outlives its key ends)."""
    raw = await connection.hget(Keys(settings.redis_prefix).api_keys(), key_hash)
    return raw is not None and not json.loads(raw)["revoked"]
