"""Page sessions buffered in Redis: the collector writes them, scoring reads them.

Layout (names from :mod:`scoring.keys`, all hash-tagged by session id):

- ``session_meta(sid)``: hash of metadata (see docs/architecture.md) plus bookkeeping fields
  ``max_seq``, ``last_t`` (0.1 ms), ``last_seen`` (unix s), ``connections``, ``started_ms``.
- ``session_samples(sid)``: stream, one entry per accepted frame: ``s`` = sequence number,
  ``e`` = the frame's pointer events packed as :data:`SAMPLE_DTYPE` records (9 bytes each).
- ``session_seqs(sid)``: set of accepted sequence numbers (drops resends).
- ``session_end_lock(sid)``: set once with NX by whoever ends the session.
- ``LIVE_SESSIONS``: sorted set sid → last activity, swept for sessions to end.

A frame is accepted atomically (one Lua script: dedupe, monotonic time, caps, append), so a
resend, a beacon and a reconnect racing each other can never double or reorder samples.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import math
import struct
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Any, TypeVar

import numpy as np
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from renderer.errors import InvalidInput, NotFound, StoreUnavailable
from scoring import keys

SAMPLE_DTYPE = np.dtype([("t", "<u4"), ("x", "<i2"), ("y", "<i2"), ("code", "u1")])
"""One stored event: time in 0.1 ms since the session started, CSS pixels, event code."""

TIME_UNITS_PER_MS = 10
ARCHIVE_MAGIC = b"TGA1"

# Results of append_frame.
APPENDED = 1
DUPLICATE = 0
NON_MONOTONIC = -1
TOO_MANY_SAMPLES = -2
TOO_FAST = -3
ENDED = -4

_APPEND_LUA = """
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return 0 end
if redis.call('EXISTS', KEYS[4]) == 1 then return -4 end
local seq = tonumber(ARGV[1])
local n = tonumber(ARGV[3])
local m = redis.call('HMGET', KEYS[3], 'max_seq', 'last_t', 'n_samples')
local max_seq = tonumber(m[1] or '-1')
local last_t = tonumber(m[2] or '0')
if seq > max_seq and tonumber(ARGV[4]) < last_t then return -1 end
local total = tonumber(m[3] or '0') + n
if total > tonumber(ARGV[8]) then return -2 end
local t_end = math.max(last_t, tonumber(ARGV[5]))
if total > tonumber(ARGV[9]) * (t_end / 10000 + 1) then return -3 end
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('XADD', KEYS[2], '*', 's', ARGV[1], 'e', ARGV[2])
if seq > max_seq then
  redis.call('HSET', KEYS[3], 'n_samples', total, 'last_seen', ARGV[6], 'max_seq', seq,
             'last_t', ARGV[5])
else
  redis.call('HSET', KEYS[3], 'n_samples', total, 'last_seen', ARGV[6])
end
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ARGV[7]) end
return 1
"""

_OPEN_LUA = """
if redis.call('EXISTS', KEYS[2]) == 1 then return -2 end
local cur = redis.call('HGET', KEYS[1], 'site_id')
if cur and cur ~= ARGV[1] then return -1 end
local created = 0
if not cur then
  created = 1
  for i = 6, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
  redis.call('HSET', KEYS[1], 'state', 'live', 'n_samples', 0, 'max_seq', -1, 'last_t', 0,
             'connections', 0, 'end_reason', '')
elseif ARGV[4] ~= '' then
  redis.call('HSET', KEYS[1], 'account', ARGV[4])
end
redis.call('HINCRBY', KEYS[1], 'connections', tonumber(ARGV[3]))
redis.call('HSET', KEYS[1], 'last_seen', ARGV[5])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return created
"""


class _Script:
    """A Lua script run by hash, loaded on first use on each Redis server."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, redis: aioredis.Redis, keys_: list[str], args: list[Any]) -> int:
        try:
            result = await redis.evalsha(self.sha, len(keys_), *keys_, *args)
        except NoScriptError:
            result = await redis.eval(self.source, len(keys_), *keys_, *args)
        return int(result)


_append = _Script(_APPEND_LUA)
_open = _Script(_OPEN_LUA)


@dataclass
class SessionData:
    meta: dict[str, str]
    viewport: tuple[int, int]
    events: np.ndarray  # (N, 4) float64: t_ms, x, y, code; sorted by time
    windows: dict[bytes, bytes] = field(default_factory=dict)
    """Stored window outputs of the page (:mod:`scoring.window_store`), when read with it."""


@dataclass(frozen=True)
class Caps:
    max_total_samples: int = 500_000
    max_rate_hz: int = 1000
    ttl_s: int = 24 * 3600


# --- packing --------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _records(n: int) -> struct.Struct:
    return struct.Struct("<" + "IhhB" * n)  # SAMPLE_DTYPE, n times


def pack_events(events: list[tuple[int, int, int, int]]) -> bytes:
    """Pointer events ``(t in 0.1 ms, x, y, code)`` as :data:`SAMPLE_DTYPE` records.

    With ``struct``: a frame's worth costs a third of what ``np.array`` of the tuples took,
    and this runs for every frame the collector stores."""
    return _records(len(events)).pack(*chain.from_iterable(events)) if events else b""


def unpack_events(raw: bytes) -> np.ndarray:
    """Packed records → (N, 4) float64 ``t_ms, x, y, code`` sorted by time."""
    rec = np.frombuffer(raw, dtype=SAMPLE_DTYPE)
    out = np.empty((len(rec), 4), dtype=np.float64)
    out[:, 0] = rec["t"] / TIME_UNITS_PER_MS
    out[:, 1] = rec["x"]
    out[:, 2] = rec["y"]
    out[:, 3] = rec["code"]
    return out[np.argsort(out[:, 0], kind="stable")]


def archive(events: np.ndarray) -> bytes:
    """Compact bytes of a session's events, for ``PageSession.samples``.

    ``TGA1`` then zlib of int32 little-endian rows ``(dt, dx, dy, code)`` (dt in 0.1 ms,
    deltas from the previous row, the first from zero)."""
    ev = np.asarray(events, dtype=np.float64).reshape(-1, 4)
    ints = np.empty((len(ev), 4), dtype=np.int64)
    ints[:, 0] = np.rint(ev[:, 0] * TIME_UNITS_PER_MS)
    ints[:, 1:] = np.rint(ev[:, 1:])
    deltas = ints.copy()
    deltas[1:, :3] = np.diff(ints[:, :3], axis=0)
    return ARCHIVE_MAGIC + zlib.compress(deltas.astype("<i4").tobytes(), 6)


def unarchive(raw: bytes) -> np.ndarray:
    """The (N, 4) float64 ``t_ms, x, y, code`` events that :func:`archive` stored."""
    if not raw.startswith(ARCHIVE_MAGIC):
        raise InvalidInput("archived samples do not start with TGA1", "bad_archive")
    try:
        body = zlib.decompress(raw[len(ARCHIVE_MAGIC) :])
    except zlib.error as e:
        raise InvalidInput(f"archived samples are corrupt: {e}", "bad_archive") from e
    if len(body) % 16:
        raise InvalidInput("archived samples have a partial row", "bad_archive")
    ints = np.frombuffer(body, dtype="<i4").reshape(-1, 4).astype(np.int64)
    ints[:, :3] = np.cumsum(ints[:, :3], axis=0)
    out = ints.astype(np.float64)
    out[:, 0] /= TIME_UNITS_PER_MS
    return out


# --- writing (the collector) ------------------------------------------------------------------


async def open_session(
    redis: aioredis.Redis,
    sid: str,
    site_id: int,
    fields: dict[str, str | int | float],
    *,
    connection: bool,
    now: float,
    ttl_s: int,
) -> int:
    """Create the meta hash (first hello) or join it (reconnect, beacon).

    Returns 1 created, 0 joined, -1 the sid belongs to another site, -2 already ended."""
    args: list[Any] = [site_id, ttl_s, int(connection), fields.get("account", ""), int(now)]
    for name, value in {**fields, "site_id": site_id}.items():
        args += [name, value]
    return await _open(redis, [keys.session_meta(sid), keys.session_end_lock(sid)], args)


def _append_keys(sid: str) -> list[str]:
    return [
        keys.session_seqs(sid),
        keys.session_samples(sid),
        keys.session_meta(sid),
        keys.session_end_lock(sid),
    ]


async def append_frame(
    redis: aioredis.Redis,
    sid: str,
    seq: int,
    events: list[tuple[int, int, int, int]],
    t_first: int,
    t_last: int,
    now: float,
    caps: Caps,
) -> int:
    """Store one frame's events unless already stored; one of the result constants."""
    args = [seq, pack_events(events), len(events), t_first, t_last, int(now)]
    return await _append_alone(redis, sid, args, caps)


async def append_packed(
    redis: aioredis.Redis,
    sid: str,
    seq: int,
    packed: bytes,
    n: int,
    t_first: int,
    t_last: int,
    now: float,
    caps: Caps,
) -> int:
    """:func:`append_frame` of ``n`` events already packed as :data:`SAMPLE_DTYPE` records."""
    return await _append_alone(redis, sid, [seq, packed, n, t_first, t_last, int(now)], caps)


def _bulk(args: Iterable[bytes | str | float]) -> bytes:
    """Arguments of a Redis command in the wire protocol (RESP), as redis-py sends them."""
    out: list[bytes] = []
    for arg in args:
        raw = arg if isinstance(arg, bytes) else str(arg).encode()
        out += (b"$%d\r\n" % len(raw), raw, b"\r\n")
    return b"".join(out)


def _resp(*args: bytes | str | float) -> bytes:
    """One Redis command in the wire protocol."""
    return b"*%d\r\n" % len(args) + _bulk(args)


_APPEND_ARGS = 6  # per frame: seq, events, count, first and last time, now


@functools.lru_cache(maxsize=8192)
def _append_head(sid: str) -> bytes:
    """``EVALSHA`` with a session's keys: the same for each of its frames, so made once."""
    keys_ = _append_keys(sid)
    n_args = 3 + len(keys_) + _APPEND_ARGS + 3
    return b"*%d\r\n" % n_args + _bulk(["EVALSHA", _append.sha, len(keys_), *keys_])


@functools.lru_cache(maxsize=16)
def _append_tail(caps: Caps) -> bytes:
    return _bulk([caps.ttl_s, caps.max_total_samples, caps.max_rate_hz])


class _Append:
    """One queued :func:`append_frame` call, and who waits for its result."""

    __slots__ = ("args", "caps", "future", "sid")

    def __init__(self, sid: str, args: list[Any], caps: Caps, future: asyncio.Future[int]) -> None:
        self.sid, self.args, self.caps, self.future = sid, args, caps, future

    def command(self) -> bytes:
        return _append_head(self.sid) + _bulk(self.args) + _append_tail(self.caps)


async def _append_alone(redis: aioredis.Redis, sid: str, args: list[Any], caps: Caps) -> int:
    """One :func:`append_frame` call through redis-py (which loads the script if Redis lost
    it); ``args`` as in :class:`_Append`."""
    tail = [caps.ttl_s, caps.max_total_samples, caps.max_rate_hz]
    return await _append(redis, _append_keys(sid), [*args, *tail])


class AppendBatcher:
    """Sends the :func:`append_frame` calls of many connections in one pipelined round trip.

    Each caller still waits for its own result, so a connection's frames stay in order; what
    is saved is redis-py's per-command overhead, which dominated the collector's CPU time at
    thousands of frames a second. The batch is written as one block of protocol bytes on a
    pooled connection and the replies read back in order: redis-py's pipeline packs every
    argument through its encoder, which cost more per frame than decoding the frame did.
    Run :meth:`run` as a task.
    """

    def __init__(self, redis: aioredis.Redis, max_batch: int = 256) -> None:
        self.redis = redis
        self.max_batch = max_batch
        self.pending: list[_Append] = []  # a list and a wake-up future: an asyncio.Queue's
        self.wake: asyncio.Future[None] | None = None  # bookkeeping cost ~2 µs a frame
        self.in_flight: list[_Append] = []
        self.touches: dict[str, float] = {}
        self.conn: Any = None
        self.closed = False

    async def append(
        self,
        sid: str,
        seq: int,
        packed: bytes,
        n: int,
        t_first: int,
        t_last: int,
        now: float,
        caps: Caps,
    ) -> int:
        """:func:`append_packed`, with the next batch."""
        args = [seq, packed, n, t_first, t_last, int(now)]
        if self.closed:  # shutting down: no batches any more, one round trip each
            return await _append_alone(self.redis, sid, args, caps)
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.pending.append(_Append(sid, args, caps, future))
        if self.wake is not None and not self.wake.done():
            self.wake.set_result(None)
        return await future

    def touch(self, sid: str, now: float) -> None:
        """Mark a session live, with the next batch: all pending marks go in one ZADD.

        The live index only says which sessions the sweeper should look at; it reads each
        one's ``last_seen`` (which every append sets) before ending it, so a mark that rides
        with a later batch, or is lost at shutdown, never ends a session early."""
        self.touches[sid] = now

    def close(self) -> None:
        """After :meth:`run` is cancelled: fail whatever still waits, so no caller hangs."""
        self.closed = True
        error = StoreUnavailable("the collector is shutting down")
        for item in [*self.in_flight, *self.pending]:
            if not item.future.done():
                item.future.set_exception(error)
        self.in_flight, self.pending = [], []

    async def run(self) -> None:
        try:
            while True:
                await self._run_one()
        finally:
            if self.conn is not None:
                await self.redis.connection_pool.release(self.conn)
                self.conn = None

    async def _run_one(self) -> None:
        while not self.pending:
            self.wake = asyncio.get_running_loop().create_future()
            await self.wake
        batch, self.pending = self.pending[: self.max_batch], self.pending[self.max_batch :]
        self.in_flight = batch
        try:
            results = await self._send(batch)
        except Exception as e:  # Redis down: every caller in the batch gets the error
            results = [e] * len(batch)
        self.in_flight = []
        for item, result in zip(batch, results, strict=True):
            if item.future.done():
                continue
            if isinstance(result, BaseException):
                item.future.set_exception(result)
            else:
                item.future.set_result(int(result))

    async def _send(self, batch: list[_Append]) -> list[Any]:
        touches, self.touches = self.touches, {}
        commands = [item.command() for item in batch]
        if touches:
            pairs = [v for sid, now in touches.items() for v in (now, sid)]
            commands.append(_resp("ZADD", keys.LIVE_SESSIONS, *pairs))
        if self.conn is None:  # kept from batch to batch: one batch is in flight at a time
            self.conn = await self.redis.connection_pool.get_connection()
        try:
            results = (await _exchange(self.conn, commands))[: len(batch)]
            missing = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
            if missing:  # a new Redis, or one that restarted or flushed its scripts
                # Loaded once, then those frames go again in one round trip (resent one at a
                # time, a fresh Redis's first batch took ~70 ms and stalled every page)
                await self.redis.script_load(_append.source)
                again = await _exchange(self.conn, [batch[i].command() for i in missing])
                for i, result in zip(missing, again, strict=True):
                    results[i] = result
            return results
        except BaseException:
            conn, self.conn = self.conn, None
            await conn.disconnect()  # replies may still be on their way: never reuse it
            await self.redis.connection_pool.release(conn)
            raise


async def _exchange(conn: Any, commands: list[bytes]) -> list[Any]:
    """Send RESP ``commands`` in one write on ``conn``; their replies, in order, a
    :class:`ResponseError` in the place of a command that failed.

    The connection's socket timeout bounds the whole batch's replies, not each one: redis-py
    enters a timeout context per read, and at thousands of replies a second those contexts
    were ~10 % of the collector's CPU."""
    await conn.send_packed_command(b"".join(commands))
    replies: list[Any] = []
    try:
        async with asyncio.timeout(conn.socket_timeout):  # None: no limit
            for _ in commands:
                try:
                    replies.append(await conn.read_response(timeout=math.inf))
                except ResponseError as e:
                    replies.append(e)
    except TimeoutError as e:  # the caller drops the connection, as redis-py would
        raise RedisTimeoutError(f"no reply from Redis within {conn.socket_timeout} s") from e
    return replies


async def _round_trip(redis: aioredis.Redis, commands: list[bytes]) -> list[Any]:
    """:func:`_exchange` on a connection from ``redis``'s pool."""
    pool = redis.connection_pool
    conn = await pool.get_connection()
    try:
        return await _exchange(conn, commands)
    except BaseException:
        await conn.disconnect()  # replies may still be on their way: never reuse it
        raise
    finally:
        await pool.release(conn)


async def update_meta(redis: aioredis.Redis, sid: str, fields: dict[str, str | int]) -> None:
    await redis.hset(keys.session_meta(sid), mapping=fields)  # type: ignore[arg-type]


async def touch_live(redis: aioredis.Redis, sid: str, now: float) -> None:
    await redis.zadd(keys.LIVE_SESSIONS, {sid: now})


async def connection_closed(redis: aioredis.Redis, sid: str, now: float) -> None:
    """One connection of the session went away; the grace period starts now.

    One round trip: the count and time change together (MULTI, so no sweep sees the count
    drop without the new time), then the live mark."""
    meta = keys.session_meta(sid)
    commands = [
        _resp("MULTI"),
        _resp("HINCRBY", meta, "connections", -1),
        _resp("HSET", meta, "last_seen", int(now)),
        _resp("EXEC"),
        _resp("ZADD", keys.LIVE_SESSIONS, now, sid),
    ]
    for reply in await _round_trip(redis, commands):
        if isinstance(reply, Exception):
            raise reply


async def due_sessions(
    redis: aioredis.Redis, now: float, grace_s: float, idle_s: float, limit: int = 500
) -> list[tuple[str, str]]:
    """(sid, reason) of live sessions to end: closed beyond the grace period, or idle.

    Sessions already ended, or whose data expired, are dropped from the live index here."""
    raw = await redis.zrangebyscore(keys.LIVE_SESSIONS, "-inf", now - grace_s, 0, limit)
    sids = [_text(sid) for sid in raw]
    fields = ["connections", "last_seen", "state"]
    async with redis.pipeline(transaction=False) as pipe:
        for sid in sids:
            pipe.hmget(keys.session_meta(sid), fields)
        metas = await pipe.execute()
    due: list[tuple[str, str]] = []
    gone: list[str] = []
    for sid, (conns, seen, state) in zip(sids, metas, strict=True):
        if seen is None or _text(state) == "ended":
            gone.append(sid)
        elif int(conns or 0) <= 0 and float(seen) <= now - grace_s:
            due.append((sid, "closed"))
        elif float(seen) <= now - idle_s:
            due.append((sid, "idle"))
    if gone:
        await redis.zrem(keys.LIVE_SESSIONS, *gone)
    return due


async def claim_end(redis: aioredis.Redis, sid: str, reason: str, ttl_s: int) -> bool:
    """True for exactly one caller per session: the one that gets to end it."""
    return bool(await redis.set(keys.session_end_lock(sid), reason, nx=True, ex=ttl_s))


async def claim_ends(
    redis: aioredis.Redis, due: list[tuple[str, str]], ttl_s: int
) -> list[tuple[str, str]]:
    """:func:`claim_end` for many sessions, pipelined; the (sid, reason) won here."""
    won = await _per_session(
        redis, due, lambda pipe, d: pipe.set(keys.session_end_lock(d[0]), d[1], nx=True, ex=ttl_s)
    )
    return [item for item, ok in zip(due, won, strict=True) if ok]


async def release_end(redis: aioredis.Redis, *sids: str) -> None:
    """Undo :func:`claim_end` when ending failed half-way, so a later sweep retries."""
    # one DEL each: the locks are in different cluster slots
    await _per_session(redis, sids, lambda pipe, sid: pipe.delete(keys.session_end_lock(sid)))


async def read_metas(redis: aioredis.Redis, sids: list[str]) -> list[dict[str, str] | None]:
    """:func:`read_meta` of many sessions, pipelined; None where one is gone."""
    raws = await _per_session(redis, sids, lambda pipe, sid: pipe.hgetall(keys.session_meta(sid)))
    return [{_text(k): _text(v) for k, v in raw.items()} if raw else None for raw in raws]


async def read_fields(redis: aioredis.Redis, sids: list[str], fields: list[str]) -> list[Any]:
    """``fields`` of each session's meta (``HMGET``: a list each, None where missing), in the
    order of ``sids``, pipelined."""
    return await _per_session(
        redis, sids, lambda pipe, sid: pipe.hmget(keys.session_meta(sid), fields)
    )


SESSIONS_PER_TRIP = 256
"""Sessions per pipelined round trip in :func:`_per_session`: one pipeline of thousands held
the event loop (packing the commands, parsing the replies) for tens of milliseconds, and every
collector socket of the process with it."""

_Item = TypeVar("_Item")


async def _per_session(
    redis: aioredis.Redis, items: Sequence[_Item], add: Callable[[Any, _Item], object]
) -> list[Any]:
    """``add(pipe, item)`` for each of ``items``, :data:`SESSIONS_PER_TRIP` a round trip; the
    replies in order."""
    out: list[Any] = []
    for i in range(0, len(items), SESSIONS_PER_TRIP):
        async with redis.pipeline(transaction=False) as pipe:
            for item in items[i : i + SESSIONS_PER_TRIP]:
                add(pipe, item)
            out += await pipe.execute()
    return out


async def mark_ended(redis: aioredis.Redis, sid: str, reason: str, now: float) -> None:
    await mark_all_ended(redis, [(sid, reason)], now)


async def mark_all_ended(redis: aioredis.Redis, ended: list[tuple[str, str]], now: float) -> None:
    """Record the end of sessions in their meta and take them off the live index."""
    if not ended:
        return
    async with redis.pipeline(transaction=False) as pipe:
        for sid, reason in ended:
            fields = {"state": "ended", "end_reason": reason, "ended_at": int(now)}
            pipe.hset(keys.session_meta(sid), mapping=fields)  # type: ignore[arg-type]
        pipe.zrem(keys.LIVE_SESSIONS, *(sid for sid, _ in ended))
        await pipe.execute()


# --- reading (scoring, the sessions API) -------------------------------------------------------


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


async def read_meta(redis: aioredis.Redis, sid: str) -> dict[str, str]:
    raw = await redis.hgetall(keys.session_meta(sid))
    if not raw:
        raise NotFound(f"no page session {sid!r} in Redis")
    return {_text(k): _text(v) for k, v in raw.items()}


async def read_session(redis: aioredis.Redis, sid: str) -> SessionData:
    """The session's metadata, viewport and time-sorted events; :class:`NotFound` if gone."""
    meta = await read_meta(redis, sid)
    entries: list[tuple[bytes, dict[bytes, bytes]]] = await redis.xrange(keys.session_samples(sid))  # type: ignore[assignment]
    packed = b"".join(fields[b"e"] for _id, fields in entries)
    viewport = (int(meta.get("viewport_w", 0)), int(meta.get("viewport_h", 0)))
    return SessionData(meta=meta, viewport=viewport, events=unpack_events(packed))


async def live_session_ids(redis: aioredis.Redis) -> list[str]:
    return [_text(s) for s in await redis.zrange(keys.LIVE_SESSIONS, 0, -1)]
