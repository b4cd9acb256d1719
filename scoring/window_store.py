"""Window outputs shared by every server process, stored next to the page's samples.

A complete window never changes (:mod:`scoring.mouse.live`), so its network output, once
computed by the pre-scorer or a decision in *any* process, serves every later decision on the
page. The loaded scorer's in-process LRU (:class:`~scoring.mouse.live.WindowCache`) alone
would tie a page's decisions to the process that pre-scored it; with several server processes
(each with its own event loop and interpreter lock) a decision would then render every window
again. So the outputs also go to Redis, in one hash per page (:func:`scoring.keys.session_windows`,
hash-tagged with the page like its samples, with the samples' TTL):

- a decision's snapshot script reads the hash with the samples (no extra round trip) and
  :meth:`SharedWindowCache.seed` puts the rows of the loaded models into the local cache;
- what a scoring call computes is recorded (:meth:`SharedWindowCache.recording`) and written
  back with :func:`save` (one pipelined ``HSET`` + ``EXPIRE``).

Fields are ``<models>:<network>:<digest hex>``: ``models`` names the loaded owner and group
model rows, so a newly activated model never reads an older one's outputs. Two processes
scoring the same window at the same moment both write the same bytes: harmless.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import numpy as np
import redis.asyncio as aioredis

from scoring import keys
from scoring.mouse.live import CACHE_WINDOWS, WindowCache

T = TypeVar("T")

Row = tuple[str, bytes, np.ndarray]
"""(network, window digest, output row)."""


def models_tag(ids: tuple[int | None, int | None]) -> str:
    """``o<owner model row>g<group model row>`` (``-`` for none)."""
    owner, group = ("-" if i is None else str(i) for i in ids)
    return f"o{owner}g{group}"


class SharedWindowCache(WindowCache):
    """The in-process LRU, plus a per-thread record of what was put, for :func:`save`."""

    def __init__(self, tag: str, capacity: int = CACHE_WINDOWS) -> None:
        super().__init__(capacity)
        self.tag = tag
        self._prefix = tag.encode() + b":"
        self._local = threading.local()

    def put(self, network: str, digest: bytes, row: np.ndarray) -> None:
        super().put(network, digest, row)
        journal: list[Row] | None = getattr(self._local, "journal", None)
        if journal is not None:
            journal.append((network, digest, row))

    @contextmanager
    def recording(self) -> Iterator[list[Row]]:
        """The rows this thread puts inside the block."""
        journal: list[Row] = []
        self._local.journal = journal
        try:
            yield journal
        finally:
            self._local.journal = None

    def seed(self, stored: dict[bytes, bytes]) -> int:
        """Put the stored rows of this cache's models into it (not recorded); returns how many."""
        n = 0
        for name, value in stored.items():
            if not name.startswith(self._prefix):
                continue
            network, _, digest = name[len(self._prefix) :].partition(b":")
            row = np.frombuffer(value, dtype="<f4").astype(np.float32)
            super().put(network.decode(), bytes.fromhex(digest.decode()), row)
            n += 1
        return n

    def fields(self, rows: list[Row]) -> dict[str, bytes]:
        """Hash fields for ``rows``."""
        return {
            f"{self.tag}:{network}:{digest.hex()}": np.asarray(row, dtype="<f4").tobytes()
            for network, digest, row in rows
        }


def shared_cache(scorer: object) -> SharedWindowCache | None:
    """The shared cache behind a live scorer (an account-bound one or the scorer itself)."""
    inner = getattr(scorer, "scorer", scorer)
    cache = getattr(inner, "window_cache", None)
    return cache if isinstance(cache, SharedWindowCache) else None


def scored_with(
    scorer: object, stored: dict[bytes, bytes], call: Callable[[], T]
) -> tuple[T, dict[str, bytes]]:
    """Run ``call``, a scoring call of ``scorer`` on one page, with the page's ``stored`` rows
    put in its shared cache first; returns the call's result and the hash fields of the rows
    it computed (none when the scorer has no shared cache), for :func:`save`."""
    cache = shared_cache(scorer)
    if cache is None:
        return call(), {}
    cache.seed(stored)  # what another process (or this one) already scored
    with cache.recording() as new:
        result = call()
    return result, cache.fields(new)


async def save(redis: aioredis.Redis, rows: dict[str, dict[str, bytes]], ttl_s: int) -> None:
    """Store new rows by page (sid → fields), each page's hash expiring with its samples."""
    todo = {sid: fields for sid, fields in rows.items() if fields}
    if not todo:
        return
    async with redis.pipeline(transaction=False) as pipe:
        for sid, fields in todo.items():
            pipe.hset(keys.session_windows(sid), mapping=fields)  # type: ignore[arg-type]
            pipe.expire(keys.session_windows(sid), ttl_s)
        await pipe.execute()
