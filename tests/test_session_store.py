"""The append batcher against a real Redis."""

from __future__ import annotations

import asyncio
import secrets

import redis.asyncio as aioredis

from scoring import keys
from scoring import session_store as store


async def _appended_and_touched(redis_url: str) -> tuple[list[int], float | None, float | None]:
    client = aioredis.Redis.from_url(redis_url)
    batcher = store.AppendBatcher(client)
    runner = asyncio.create_task(batcher.run())
    sid, other = secrets.token_hex(16), secrets.token_hex(16)
    try:
        for s in (sid, other):
            await store.open_session(
                client, s, 1, {"site_key": "k"}, connection=True, now=100.0, ttl_s=60
            )
        events = [(10, 1, 2, 0), (20, 3, 4, 0)]
        first = await batcher.append(sid, 0, events, 10, 20, 101.0, store.Caps())
        batcher.touch(sid, 250.0)
        # the mark rides with the next batch, whoever's frame it carries
        second = await batcher.append(other, 0, events, 10, 20, 102.0, store.Caps())
        again = await batcher.append(sid, 0, events, 10, 20, 103.0, store.Caps())
        return (
            [first, second, again],
            await client.zscore(keys.LIVE_SESSIONS, sid),
            await client.zscore(keys.LIVE_SESSIONS, other),
        )
    finally:
        runner.cancel()
        batcher.close()
        await client.zrem(keys.LIVE_SESSIONS, sid, other)
        await client.aclose()


def test_live_marks_ride_with_the_next_batch_and_results_stay_per_frame(redis_url: str) -> None:
    results, touched, untouched = asyncio.run(_appended_and_touched(redis_url))
    assert results == [store.APPENDED, store.APPENDED, store.DUPLICATE]
    assert touched == 250.0
    assert untouched is None  # nobody marked it; opening a session does not either
