"""Incremental scoring of a page session that is still growing (the real-time decision path).

A decision scores the visit *so far*, and a visit is often asked about more than once (login,
then checkout a minute later; the pages before the current one). The batch path
(:func:`scoring.mouse.data.scoring_images`) splits a session into near-equal windows whose
bounds all move whenever the session grows, so nothing computed for one decision could be
reused by the next one. The live path instead cuts the session into fixed blocks counted from
its first event, so a window, once complete, never changes:

- :func:`live_bounds` - blocks ``[0, w)``, ``[w, 2w)``, … of ``w = window_events``; the tail
  after the last full block is a window of its own once it holds at least ``w / 2`` events,
  before that it joins the last block. The number of windows is the batch path's,
  ``round(n / w)`` (halves rounded up here), and every window holds between ``w / 2`` and
  ``1.5 w`` events (batch: about ``0.67 w`` to ``1.5 w``; training draws windows of 100–700
  events, both inside).
  As the session grows only its last one or two windows are new.
- :class:`WindowCache` - the network's output for windows already scored, keyed by the
  network and a digest of the window's events and viewport. A window whose events changed
  (a late frame sorted into it, a duplicate dropped at its edge) has another digest, so a
  stale output is never reused. One cache belongs to one loaded
  :class:`~scoring.mouse.inference.MouseScorer`, so a newly activated model starts empty.

The live score is therefore the batch score of slightly different windows: the two agree on
the same session to within the model's window-to-window noise, not bit for bit
(docs/decisions.md gives the measured difference).
"""

from __future__ import annotations

import hashlib
import struct
import threading
from collections import OrderedDict

import numpy as np

from renderer.mouse import Cleaned

CACHE_WINDOWS = 50_000
"""Window outputs kept per loaded model (least recently used first out): about 550 bytes
each with Python's overhead, so ~27 MB: the complete windows of ~2,500 one-minute pages."""


def live_bounds(n_events: int, window_events: int) -> list[tuple[int, int]]:
    """Stable window bounds of a session of ``n_events``: see the module docstring."""
    full, tail = divmod(n_events, window_events)
    if full == 0:
        return [(0, n_events)]
    starts = [i * window_events for i in range(full)]
    bounds = [(a, a + window_events) for a in starts]
    if tail * 2 >= window_events:
        bounds.append((full * window_events, n_events))
    elif tail:
        bounds[-1] = (bounds[-1][0], n_events)
    return bounds


def live_view_bounds(n_events: int, window_events: int, views: int = 1) -> list[tuple[int, int]]:
    """:func:`live_bounds` and, with ``views`` > 1, the full windows shifted from its blocks by
    ``j / views`` of a window (``j`` = 1 … ``views`` − 1) that are complete, in order of start:
    the live counterpart of :func:`scoring.mouse.data.view_bounds`. A shifted window is listed
    only once complete, so, as with the blocks, only the last block can still change."""
    bounds = live_bounds(n_events, window_events)
    for j in range(1, views):
        start = round(j * window_events / views)
        while start + window_events <= n_events:
            bounds.append((start, start + window_events))
            start += window_events
    return sorted(bounds)


def pick_evenly(bounds: list[tuple[int, int]], max_windows: int) -> list[tuple[int, int]]:
    """At most ``max_windows`` of ``bounds``, evenly spaced: the batch path's rule."""
    if len(bounds) <= max_windows:
        return bounds
    pick = np.linspace(0, len(bounds) - 1, max_windows).round().astype(int)
    return [bounds[i] for i in pick]


def window_digest(clean: Cleaned, start: int, end: int) -> bytes:
    """Identifies a window's content: its events (already sanitised) and the viewport."""
    h = hashlib.blake2b(digest_size=16)
    h.update(struct.pack("<2d", *clean.viewport))
    h.update(np.ascontiguousarray(clean.events[start:end]).tobytes())
    return h.digest()


class WindowCache:
    """Thread-safe LRU of (network, window digest) → that network's output row for it."""

    def __init__(self, capacity: int = CACHE_WINDOWS) -> None:
        self.capacity = capacity
        self._rows: OrderedDict[tuple[str, bytes], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, network: str, digest: bytes) -> np.ndarray | None:
        with self._lock:
            row = self._rows.get((network, digest))
            if row is None:
                self.misses += 1
                return None
            self._rows.move_to_end((network, digest))
            self.hits += 1
            return row

    def has(self, network: str, digest: bytes) -> bool:
        """Whether a window is cached, without counting a hit or miss or refreshing it."""
        with self._lock:
            return (network, digest) in self._rows

    def put(self, network: str, digest: bytes, row: np.ndarray) -> None:
        with self._lock:
            self._rows[(network, digest)] = row
            self._rows.move_to_end((network, digest))
            while len(self._rows) > self.capacity:
                self._rows.popitem(last=False)
