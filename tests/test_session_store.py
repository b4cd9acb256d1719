"""The append batcher against a real Redis."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis

from scoring import keys
from scoring import session_store as store
from server import wire


@contextlib.asynccontextmanager
async def _batcher(
    redis_url: str, sids: list[str], **client: Any
) -> AsyncIterator[tuple[aioredis.Redis, store.AppendBatcher]]:
    """A Redis client and a running append batcher, with ``sids`` opened as sessions."""
    redis = aioredis.Redis.from_url(redis_url, **client)
    batcher = store.AppendBatcher(redis)
    runner = asyncio.create_task(batcher.run())
    try:
        for sid in sids:
            await store.open_session(
                redis, sid, 1, {"site_key": "k"}, connection=True, now=100.0, ttl_s=60
            )
        yield redis, batcher
    finally:
        runner.cancel()
        await asyncio.wait([runner])
        batcher.close()
        await redis.aclose()


async def _appended_and_touched(redis_url: str) -> tuple[list[int], float | None, float | None]:
    sid, other = secrets.token_hex(16), secrets.token_hex(16)
    async with _batcher(redis_url, [sid, other]) as (client, batcher):
        events = [(10, 1, 2, 0), (20, 3, 4, 0)]
        packed = (store.pack_events(events), len(events))
        first = await batcher.append(sid, 0, *packed, 10, 20, 101.0, store.Caps())
        batcher.touch(sid, 250.0)
        # the mark rides with the next batch, whoever's frame it carries
        second = await batcher.append(other, 0, *packed, 10, 20, 102.0, store.Caps())
        again = await batcher.append(sid, 0, *packed, 10, 20, 103.0, store.Caps())
        marks = (
            await client.zscore(keys.LIVE_SESSIONS, sid),
            await client.zscore(keys.LIVE_SESSIONS, other),
        )
        await client.zrem(keys.LIVE_SESSIONS, sid, other)
        return [first, second, again], *marks


def test_live_marks_ride_with_the_next_batch_and_results_stay_per_frame(redis_url: str) -> None:
    results, touched, untouched = asyncio.run(_appended_and_touched(redis_url))
    assert results == [store.APPENDED, store.APPENDED, store.DUPLICATE]
    assert touched == 250.0
    assert untouched is None  # nobody marked it; opening a session does not either


async def _append_across_a_dropped_connection(redis_url: str) -> tuple[int, str, int]:
    sid = secrets.token_hex(16)
    packed = (store.pack_events([(10, 1, 2, 0)]), 1)
    async with _batcher(redis_url, [sid]) as (client, batcher):
        first = await batcher.append(sid, 0, *packed, 10, 10, 2.0, store.Caps())
        # Redis drops the connection the batcher keeps between batches
        await batcher.conn.send_command("CLIENT", "ID")
        await client.client_kill_filter(_id=await batcher.conn.read_response())
        try:
            await batcher.append(sid, 1, *packed, 20, 20, 3.0, store.Caps())
            failed = "stored"
        except Exception as e:  # the callers of the batch that met the drop get its error
            failed = type(e).__name__
        again = await batcher.append(sid, 2, *packed, 30, 30, 4.0, store.Caps())
        return first, failed, again


def test_a_dropped_redis_connection_fails_its_batch_and_the_next_batch_reconnects(
    redis_url: str,
) -> None:
    first, failed, again = asyncio.run(_append_across_a_dropped_connection(redis_url))
    assert (first, again) == (store.APPENDED, store.APPENDED)
    assert failed == "ConnectionError"


async def _append_while_redis_stops_answering(redis_url: str) -> tuple[str, float, int]:
    sid = secrets.token_hex(16)
    packed = (store.pack_events([(10, 1, 2, 0)]), 1)
    async with _batcher(redis_url, [sid], socket_timeout=0.3) as (client, batcher):
        await client.client_pause(1000, all=True)  # the server answers nobody for a second
        started = time.monotonic()
        try:
            await batcher.append(sid, 0, *packed, 10, 10, 2.0, store.Caps())
            failed = "stored"
        except Exception as e:
            failed = type(e).__name__
        waited = time.monotonic() - started
        await asyncio.sleep(1.2 - waited)
        again = await batcher.append(sid, 1, *packed, 20, 20, 3.0, store.Caps())
        return failed, waited, again


def test_a_silent_redis_fails_the_batch_within_the_socket_timeout(redis_url: str) -> None:
    # one timeout bounds the whole batch's replies (not one per reply): it still fires
    failed, waited, again = asyncio.run(_append_while_redis_stops_answering(redis_url))
    assert failed == "TimeoutError" and 0.25 < waited < 0.9
    assert again == store.APPENDED


async def _append_after_a_script_flush(redis_url: str) -> tuple[list[int], list[int]]:
    sids = [secrets.token_hex(16) for _ in range(3)]
    async with _batcher(redis_url, sids) as (client, batcher):
        await client.script_flush()  # Redis forgot the append script (restart, failover)
        # two frames of each session in one batch: all of them meet the missing script
        appends = [
            batcher.append(sid, seq, store.pack_events([(t, 1, 2, 0)]), 1, t, t, 2.0, store.Caps())
            for seq, t in ((0, 10), (1, 20))
            for sid in sids
        ]
        statuses = await asyncio.gather(*appends)
        counts = [int(await client.hget(keys.session_meta(sid), "n_samples") or 0) for sid in sids]
        return list(statuses), counts


def test_a_batch_that_meets_a_flushed_script_stores_every_frame_in_order(
    redis_url: str,
) -> None:
    statuses, counts = asyncio.run(_append_after_a_script_flush(redis_url))
    assert statuses == [store.APPENDED] * 6  # frame 1 after frame 0: nothing out of order
    assert counts == [2, 2, 2]


def test_frames_are_decoded_straight_into_the_stored_record_layout() -> None:
    samples = [(1000 + 50 * i, 500 + (i * 7) % 13 - 6, 300 - i) for i in range(40)]
    frame = wire.decode_frame(wire.encode_moves(0, samples))
    assert wire.EVENT.size == store.SAMPLE_DTYPE.itemsize
    assert bytes(frame.packed) == store.pack_events(frame.events)
    rows = store.unpack_events(bytes(frame.packed)).tolist()
    assert rows == [[t / 10, x, y, 0] for t, x, y in samples]


async def _fields_of_many(redis_url: str, n: int) -> list[object]:
    client = aioredis.Redis.from_url(redis_url)
    try:
        sids = [secrets.token_hex(16) for _ in range(n)]
        async with client.pipeline(transaction=False) as pipe:
            for i, sid in enumerate(sids[:-1]):  # the last one has no meta at all
                pipe.hset(keys.session_meta(sid), mapping={"n_samples": i, "account": f"a{i}"})
            await pipe.execute()
        return await store.read_fields(client, sids, ["n_samples", "account"])
    finally:
        await client.aclose()


def test_fields_of_many_sessions_come_back_in_order_across_round_trips(redis_url: str) -> None:
    n = 2 * store.SESSIONS_PER_TRIP + 3  # three round trips
    rows = asyncio.run(_fields_of_many(redis_url, n))
    assert len(rows) == n
    assert rows[:-1] == [[str(i).encode(), f"a{i}".encode()] for i in range(n - 1)]
    assert rows[-1] == [None, None]
