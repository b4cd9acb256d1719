"""The shared window store (scoring/window_store.py): what one process scored, another reads."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import redis.asyncio as aioredis

from scoring import keys, window_store
from scoring.window_store import SharedWindowCache


def test_seed_takes_only_the_loaded_models_rows() -> None:
    mine, theirs = SharedWindowCache("o1g2"), SharedWindowCache("o1g3")
    row = np.arange(65, dtype=np.float32)
    with mine.recording() as new:
        mine.put("owner", b"\x01" * 16, row)
    with theirs.recording() as other:
        theirs.put("group", b"\x02" * 16, row[:1])
    stored = {k.encode(): v for k, v in {**mine.fields(new), **theirs.fields(other)}.items()}
    fresh = SharedWindowCache("o1g2")
    # a newly activated group model (g3) must never read the outputs of the one before it
    assert fresh.seed(stored) == 1 and len(fresh) == 1
    got = fresh.get("owner", b"\x01" * 16)
    assert got is not None and got.dtype == np.float32 and np.array_equal(got, row)
    assert fresh.get("group", b"\x02" * 16) is None


def test_recording_is_per_thread_and_seeding_is_not_recorded() -> None:
    cache = SharedWindowCache("o-g1")
    seen: list[int] = []

    def other_thread() -> None:
        cache.put("group", b"\x03" * 16, np.zeros(1, np.float32))  # not this block's work

    with cache.recording() as new:
        t = threading.Thread(target=other_thread)
        t.start()
        t.join()
        cache.seed({b"o-g1:group:" + (b"04" * 16): np.ones(1, "<f4").tobytes()})
        cache.put("group", b"\x05" * 16, np.ones(1, np.float32))
        seen.append(len(new))
    assert seen == [1] and len(cache) == 3
    assert window_store.models_tag((None, 7)) == "o-g7"


def test_save_stores_each_pages_rows_with_a_ttl(redis_url: str) -> None:
    async def run() -> tuple[dict[bytes, bytes], int, int]:
        r = aioredis.Redis.from_url(redis_url)
        try:
            await window_store.save(r, {"p1": {"t:group:aa": b"1234"}, "p2": {}}, 60)
            got = await r.hgetall(keys.session_windows("p1"))
            return (
                got,
                await r.ttl(keys.session_windows("p1")),
                await r.exists(keys.session_windows("p2")),
            )
        finally:
            await r.aclose()

    got, ttl, empty = asyncio.run(run())
    assert got == {b"t:group:aa": b"1234"} and 0 < ttl <= 60 and empty == 0
    assert keys.session_windows("p1").startswith("tg:{p1}:")  # the page's cluster slot
