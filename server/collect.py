"""Collector endpoints: the snippet (``GET /c.js``), its WebSocket and its beacon (``/collect``).

Every message is decoded and validated by :mod:`server.wire`; accepted frames go to Redis
through :mod:`scoring.session_store` (deduplicated by sequence number, atomically). A page
session ends on its end-of-page record, on socket close plus a grace period, or on idle
timeout (a sweeper task started from the app's lifespan); whichever comes first wins the end
lock, writes the ``PageSession`` row and enqueues the one mouse job.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session, sessionmaker
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from renderer.errors import InvalidFrame, NotFound
from scoring import jobs
from scoring import session_store as store
from scoring.schema import Account, PageSession, utcnow
from server import wire
from server.app import Services
from server.sites import normalise_origin, site_by_key

log = logging.getLogger(__name__)

SNIPPET_PATH = Path(__file__).resolve().parent.parent / "collector_js" / "c.js"

HTTP_STATUS = {
    "oversize": 413,
    "unknown_site": 403,
    "origin_not_allowed": 403,
    "rate_limited": 429,
    "session_ended": 409,
    "session_conflict": 409,
}


@dataclass(frozen=True)
class CollectorConfig:
    """Collector knobs; tests put their own on ``app.state.collector_config``."""

    grace_s: float = 10.0
    idle_s: float = 1800.0
    sweep_every_s: float = 1.0
    burst_samples: int = 20_000
    site_cache_s: float = 30.0
    end_linger_s: float = 0.5
    caps: store.Caps = field(default_factory=store.Caps)


@dataclass(frozen=True)
class SiteInfo:
    id: int
    origins: frozenset[str]


def _config(app: Starlette) -> CollectorConfig:
    cfg = getattr(app.state, "collector_config", None)
    return cfg if isinstance(cfg, CollectorConfig) else CollectorConfig()


def _services(app: Starlette) -> Services:
    svc: Services = app.state.services
    return svc


def _load_site(sessions: sessionmaker[Session], key: str) -> SiteInfo | None:
    with sessions() as s:
        try:
            site = site_by_key(s, key)
        except NotFound:
            return None
        return SiteInfo(id=site.id, origins=frozenset(site.allowed_origins or []))


async def _site(app: Starlette, key: str) -> SiteInfo | None:
    """The site for a key, cached for ``site_cache_s``; concurrent hellos for a key not yet in
    the cache share one database query instead of queueing one each for the pool."""
    cache: dict[str, tuple[asyncio.Future[SiteInfo | None], float]] = app.state.__dict__.setdefault(
        "collector_sites", {}
    )
    hit = cache.get(key)
    now = time.monotonic()
    if hit and hit[1] > now:
        return await asyncio.shield(hit[0])
    future: asyncio.Future[SiteInfo | None] = asyncio.get_running_loop().create_future()
    cache[key] = (future, now + _config(app).site_cache_s)
    try:
        future.set_result(await run_in_threadpool(_load_site, _services(app).sessions, key))
    except BaseException as e:  # failed or cancelled: waiters see it, the next hello retries
        cache.pop(key, None)
        future.set_exception(e if isinstance(e, Exception) else NotFound("site lookup cancelled"))
        future.exception()  # retrieved here, so an unawaited future logs nothing
        raise
    return await future


class Ingest:
    """One client's stream of messages: a WebSocket connection, or one beacon."""

    def __init__(self, app: Starlette, headers: Any, client_ip: str, connection: bool) -> None:
        self.app = app
        self.svc = _services(app)
        self.cfg = _config(app)
        self.origin = headers.get("origin")
        self.user_agent = (headers.get("user-agent") or "")[:1000]
        self.client_ip = client_ip
        self.connection = connection
        self.sid: str | None = None
        self.joined = False
        self.ended = False  # this connection ended the session (its end-of-page record)
        self.tokens = float(self.cfg.burst_samples)
        self.refilled = time.monotonic()
        self.touched = 0.0
        # Looked up once, not per frame (Starlette's State lookups showed up in profiles);
        # both are None in an app run without its lifespan.
        batcher = getattr(app.state, "collector_batcher", None)
        self.batcher = batcher if isinstance(batcher, store.AppendBatcher) else None
        ender = getattr(app.state, "collector_ender", None)
        self.ender = ender if isinstance(ender, SessionEnder) else None

    async def hello(self, raw: bytes) -> wire.Hello:
        h = wire.decode_hello(raw)
        site = await _site(self.app, h.site_key)
        if site is None:
            raise wire.fail("unknown_site", f"site key {h.site_key!r} is not registered")
        if not self._origin_ok(site):
            raise wire.fail("origin_not_allowed", f"origin {self.origin!r} is not allowed")
        fields: dict[str, str | int | float] = {
            "site_key": h.site_key,
            "account": h.account,
            "page_path": h.page_path,
            "viewport_w": h.viewport[0],
            "viewport_h": h.viewport[1],
            "dpr": h.dpr,
            "pointer_type": h.pointer_type,
            "user_agent": self.user_agent,
            "client_ip": self.client_ip,
            "started_ms": h.started_ms,
        }
        now = time.time()
        status = await store.open_session(
            self.svc.redis,
            h.session_id,
            site.id,
            fields,
            connection=self.connection,
            now=now,
            ttl_s=self.cfg.caps.ttl_s,
        )
        if status == -1:
            raise wire.fail("session_conflict", "this session id belongs to another site")
        self.sid = h.session_id
        if status == -2 and self.connection:
            raise wire.fail("session_ended", "this page session has ended")
        self.joined = status >= 0 and self.connection
        await self._touch(now, force=True)
        return h

    def _origin_ok(self, site: SiteInfo) -> bool:
        if not self.origin:
            return False
        try:
            return normalise_origin(self.origin) in site.origins
        except ValueError:  # InvalidInput: not an origin at all
            return False

    def _take_tokens(self, n: int) -> None:
        now = time.monotonic()
        rate = self.cfg.caps.max_rate_hz
        self.tokens = min(self.cfg.burst_samples, self.tokens + (now - self.refilled) * rate)
        self.refilled = now
        if n > self.tokens:
            raise wire.fail("rate_limited", f"more than {rate} samples per second")
        self.tokens -= n

    async def _touch(self, now: float, force: bool = False) -> None:
        if self.sid and (force or now - self.touched >= 1.0):
            self.touched = now
            if self.batcher is not None and not force:
                self.batcher.touch(self.sid, now)  # one ZADD per batch, not a round trip each
            else:
                await store.touch_live(self.svc.redis, self.sid, now)

    async def frame(self, frame: wire.Frame) -> None:
        """Store a decoded frame (once); raises :class:`InvalidFrame` when a cap says no."""
        if self.sid is None:
            raise wire.fail("expected_hello", "the first message must be a hello")
        if self.connection:
            self._take_tokens(frame.n_samples)
        now = time.time()
        args = (self.sid, frame.seq, bytes(frame.packed), frame.n_samples, frame.t0, frame.t_last)
        if self.batcher is not None:
            status = await self.batcher.append(*args, now, self.cfg.caps)
        else:  # an app run without its lifespan (no batcher task): one round trip per frame
            status = await store.append_packed(self.svc.redis, *args, now, self.cfg.caps)
        _raise_for(status, frame)
        if status == store.APPENDED and frame.other:
            await self._apply_records(frame)
        if now - self.touched >= 1.0:
            await self._touch(now)

    async def end_if_ended(self, frame: wire.Frame) -> None:
        """End the session when ``frame`` has the end-of-page record (after its ack went out:
        writing the row can take a while, and the frame itself is safely stored)."""
        if not (frame.ended and self.sid):
            return
        if self.ender is not None:  # runs in its own task: a closing page can't cut it
            await self.ender.end(self.sid, "end")
        else:  # an app run without its lifespan: end it here, shielded from the handler
            await _to_completion(end_session(self.svc, self.cfg, self.sid, "end", time.time()))
        self.ended = True

    async def _apply_records(self, frame: wire.Frame) -> None:
        updates: dict[str, str | int] = {}
        for name, _t, *values in frame.other:
            if name == "account":
                updates["account"] = str(values[0])
            elif name == "resize":
                updates["viewport_w"], updates["viewport_h"] = int(values[0]), int(values[1])  # type: ignore[call-overload]
            elif name == "pointer":
                updates["pointer_type"] = str(values[0])
        if updates and self.sid:
            await store.update_meta(self.svc.redis, self.sid, updates)

    async def finish(self) -> None:
        """The connection closed: its session's grace period starts, unless the connection
        itself ended the session (then nothing waits on the close: a round trip each, at the
        moment many pages close together, held up their last acknowledgements)."""
        if self.joined and self.sid and not self.ended:
            await store.connection_closed(self.svc.redis, self.sid, time.time())


_ENDING: set[asyncio.Future[Any]] = set()
"""Session ends and connection closes in progress, referenced so that they run to completion."""


async def _to_completion(work: Coroutine[Any, Any, Any]) -> Any:
    """Await ``work`` in a task of its own, which runs to the end even when the caller is
    cancelled (a handler cancelled as its socket goes)."""
    task = asyncio.ensure_future(work)
    _ENDING.add(task)
    task.add_done_callback(_ENDING.discard)
    return await asyncio.shield(task)


def _raise_for(status: int, frame: wire.Frame) -> None:
    if status == store.NON_MONOTONIC:
        raise wire.fail("non_monotonic_time", f"frame {frame.seq} starts before its predecessor")
    if status == store.TOO_MANY_SAMPLES:
        raise wire.fail("session_too_long", "the session reached its total sample cap")
    if status == store.TOO_FAST:
        raise wire.fail("rate_limited", "more samples per second of session time than allowed")
    if status == store.ENDED:
        raise wire.fail("session_ended", f"frame {frame.seq} arrived after the session ended")


# --- ending a session ---------------------------------------------------------------------------


def _find_accounts(s: Session, wanted: set[tuple[int, str]]) -> dict[tuple[int, str], int]:
    found: dict[tuple[int, str], int] = {}
    for site_id in {site for site, _ in wanted}:
        names = [name for site, name in wanted if site == site_id]
        query = select(Account.id, Account.external_id).where(
            Account.site_id == site_id, Account.external_id.in_(names)
        )
        found.update({(site_id, name): id_ for id_, name in s.execute(query)})
    return found


def _account_ids(s: Session, wanted: set[tuple[int, str]]) -> dict[tuple[int, str], int]:
    """Ids of the accounts ``(site_id, external_id)``, creating those that do not exist: one
    ``INSERT … ON CONFLICT DO NOTHING`` for all of them (another process may create one at
    the same moment), where a savepoint each cost ~1.3 ms an account."""
    found = _find_accounts(s, wanted)
    missing = wanted - found.keys()
    if missing:
        postgres = s.get_bind().dialect.name == "postgresql"  # else SQLite, the other back end
        insert_ = (postgresql_insert if postgres else sqlite_insert)(Account)
        rows = [{"site_id": site, "external_id": name} for site, name in sorted(missing)]
        s.execute(insert_.on_conflict_do_nothing(), rows)
        found.update(_find_accounts(s, missing))
    return found


def _row_fields(meta: dict[str, str], reason: str, account_id: int | None) -> dict[str, Any]:
    """A ``PageSession``'s columns from its Redis meta; no ``account_id`` when it has none."""
    started_ms = int(meta.get("started_ms", 0))
    fields: dict[str, Any] = {
        "page_path": meta.get("page_path", "")[:2000],
        "viewport_w": int(meta.get("viewport_w", 0)),
        "viewport_h": int(meta.get("viewport_h", 0)),
        "device_pixel_ratio": float(meta.get("dpr", 1.0)),
        "pointer_type": meta.get("pointer_type", "mouse")[:16],
        "user_agent": meta.get("user_agent", "")[:1000],
        "client_ip": meta.get("client_ip", "")[:64],
        "status": "ended",
        "end_reason": reason,
        "n_samples": int(meta.get("n_samples", 0)),
        "ended_at": utcnow(),
    }
    if started_ms:
        fields["started_at"] = dt.datetime.fromtimestamp(started_ms / 1000, dt.UTC)
    if account_id is not None:
        fields["account_id"] = account_id
    return fields


Ended = tuple[str, dict[str, str], str]
"""An ended session to record: its id, its Redis meta, the end reason."""


def record_page_sessions(sessions: sessionmaker[Session], ends: list[Ended]) -> None:
    """Write (or complete) the ``PageSession`` rows of ended sessions, in one transaction.
    New rows go in one bulk insert: through the unit of work they cost ~4× as much CPU."""
    with sessions() as s:
        ids = [sid for sid, _meta, _reason in ends]
        rows = {r.id: r for r in s.scalars(select(PageSession).where(PageSession.id.in_(ids)))}
        wanted = {(int(m["site_id"]), m["account"]) for _sid, m, _r in ends if m.get("account")}
        accounts = _account_ids(s, wanted)
        new: dict[str, dict[str, Any]] = {}
        for sid, meta, reason in ends:
            site_id = int(meta["site_id"])
            fields = _row_fields(meta, reason, accounts.get((site_id, meta.get("account", ""))))
            if (row := rows.get(sid)) is not None:
                for name, value in fields.items():
                    setattr(row, name, value)
            else:  # the last of a sid's duplicates in ``ends`` wins, as it did row by row
                new[sid] = {"id": sid, "site_id": site_id, **fields}
        if new:
            s.execute(insert(PageSession), list(new.values()))
        s.commit()


def _write_rows(sessions: sessionmaker[Session], ends: list[Ended]) -> list[str]:
    """Rows of many sessions in one transaction; if that fails, one transaction each, so one
    broken session does not hold up the others. Returns the sids whose row failed."""
    try:
        record_page_sessions(sessions, ends)
        return []
    except Exception:
        if len(ends) == 1:
            log.exception("could not end page session %s", ends[0][0])
            return [ends[0][0]]
        log.warning("writing %d ended page sessions at once failed; one at a time", len(ends))
    failed = []
    for end in ends:
        try:
            record_page_sessions(sessions, [end])
        except Exception:  # logged and left to a later sweep; the others go on
            log.exception("could not end page session %s", end[0])
            failed.append(end[0])
    return failed


async def _record(svc: Services, won: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Write the rows of the sessions whose end this caller won; returns those written.
    The others are released for a later sweep."""
    metas = await store.read_metas(svc.redis, [sid for sid, _ in won])
    gone = [sid for (sid, _), meta in zip(won, metas, strict=True) if meta is None]
    if gone:
        log.error("page sessions %s have no data in Redis: not ended", ", ".join(gone))
    ends = [(sid, m, reason) for (sid, reason), m in zip(won, metas, strict=True) if m is not None]
    failed = set(await run_in_threadpool(_write_rows, svc.sessions, ends) if ends else [])
    await store.release_end(svc.redis, *gone, *failed)
    return [(sid, reason) for sid, _meta, reason in ends if sid not in failed]


async def end_sessions(
    svc: Services, cfg: CollectorConfig, due: list[tuple[str, str]], now: float
) -> list[str]:
    """End each ``(sid, reason)`` of ``due`` once; returns the sids that this call ended.

    Whoever wins a session's end lock writes its ``PageSession`` row and enqueues its one
    mouse job; a session another caller won is left to it. The rows of all sessions won here
    go in one database transaction and each Redis step is one round trip for all of them:
    pages often end together, and one transaction and five round trips per session made
    their ends the collector's largest cost."""
    redis = svc.redis
    won = await store.claim_ends(redis, due, cfg.caps.ttl_s)
    if not won:
        return []
    try:
        recorded = await _record(svc, won)
    except BaseException:  # nothing enqueued yet: let a later sweep retry them all
        await store.release_end(redis, *(sid for sid, _ in won))
        raise
    await jobs.enqueue_many(redis, "mouse", [{"session_id": sid} for sid, _ in recorded])
    await store.mark_all_ended(redis, recorded, now)
    return [sid for sid, _ in recorded]


async def end_session(
    svc: Services, cfg: CollectorConfig, sid: str, reason: str, now: float
) -> bool:
    """End one session once: True for the caller that ended it."""
    return bool(await end_sessions(svc, cfg, [(sid, reason)], now))


class SessionEnder:
    """Ends the sessions whose pages sent their end-of-page record, those waiting together in
    one :func:`end_sessions` call. Each caller waits for its own result; run :meth:`run` as
    a task, and :meth:`stop` it so that the ends already asked for still happen.

    After the first end of a batch arrives it waits ``end_linger_s`` (:class:`CollectorConfig`)
    for more. Ending costs
    ~130 µs of CPU a session (Redis, the row, the job); pages that end together (a deploy, a
    campaign, a benchmark) ended one small batch after another while their last frames still
    arrived, and their acknowledgements queued behind that work. Nothing waits on an end but
    the mouse job, which is seconds of work anyway."""

    def __init__(self, app: Starlette, max_batch: int = 2000) -> None:
        self.app = app
        self.max_batch = max_batch
        self.queue: asyncio.Queue[tuple[str, str, asyncio.Future[bool]] | None] = asyncio.Queue()
        self.closed = False
        self.stopping = asyncio.Event()

    async def end(self, sid: str, reason: str) -> bool:
        if self.closed:  # shutting down: each end on its own
            return await end_session(
                _services(self.app), _config(self.app), sid, reason, time.time()
            )
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((sid, reason, future))
        return await future

    def stop(self) -> None:
        self.closed = True
        self.stopping.set()
        self.queue.put_nowait(None)

    async def run(self) -> None:
        while (first := await self.queue.get()) is not None:
            with contextlib.suppress(TimeoutError):  # stopping cuts the wait short
                await asyncio.wait_for(self.stopping.wait(), _config(self.app).end_linger_s)
            batch, stopping = [first], False
            while len(batch) < self.max_batch and not self.queue.empty():
                item = self.queue.get_nowait()
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            await self._end(batch)
            if stopping:
                return

    async def _end(self, batch: list[tuple[str, str, asyncio.Future[bool]]]) -> None:
        due = [(sid, reason) for sid, reason, _future in batch]
        try:
            ended = set(
                await end_sessions(_services(self.app), _config(self.app), due, time.time())
            )
        except Exception as e:  # Redis down: every waiting page gets the error
            for _sid, _reason, future in batch:
                if not future.done():
                    future.set_exception(e)
            return
        for sid, _reason, future in batch:
            if not future.done():
                future.set_result(sid in ended)


async def sweep_once(svc: Services, cfg: CollectorConfig, now: float) -> int:
    """End every session closed beyond the grace period or idle too long; returns how many."""
    due = await store.due_sessions(svc.redis, now, cfg.grace_s, cfg.idle_s)
    return len(await end_sessions(svc, cfg, due, now)) if due else 0


async def _sweep_forever(app: Starlette) -> None:
    while True:
        cfg = _config(app)
        await asyncio.sleep(cfg.sweep_every_s)
        try:
            await sweep_once(_services(app), cfg, time.time())
        except Exception:  # the sweeper outlives a Redis hiccup; it logs and tries again
            log.exception("session sweep failed")


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    """Runs the session sweeper, the Redis append batcher and the session ender for as long
    as the app runs."""
    batcher = store.AppendBatcher(_services(app).redis)
    ender = SessionEnder(app)
    app.state.collector_batcher = batcher
    app.state.collector_ender = ender
    ending = asyncio.create_task(ender.run())
    tasks = [asyncio.create_task(_sweep_forever(app)), asyncio.create_task(batcher.run())]
    try:
        yield
    finally:
        ender.stop()  # ends already asked for still happen: their pages were acknowledged
        await asyncio.wait([ending], timeout=10)
        app.state.collector_batcher = None
        for task in [*tasks, ending]:
            task.cancel()
        await asyncio.wait(tasks, timeout=10)
        batcher.close()


# --- endpoints ---------------------------------------------------------------------------


def _close_reason(e: InvalidFrame) -> str:
    return f"{e.code}: {e}".encode()[:120].decode("utf-8", "ignore")


async def _receive(ws: WebSocket) -> bytes | None:
    message = await ws.receive()
    if message["type"] == "websocket.disconnect":
        return None
    data = message.get("bytes")
    if data is None:
        raise wire.fail("not_binary", "text messages are not part of the protocol")
    return bytes(data)


async def _serve_socket(ws: WebSocket, ingest: Ingest) -> None:
    first = await _receive(ws)
    if first is None:
        return
    await ingest.hello(first)
    while (raw := await _receive(ws)) is not None:
        frame = wire.decode_frame(raw)
        await ingest.frame(frame)
        await ws.send_bytes(wire.encode_ack(frame.seq))
        await ingest.end_if_ended(frame)


async def collect_socket(ws: WebSocket) -> None:
    await ws.accept()
    ingest = Ingest(ws.app, ws.headers, ws.client.host if ws.client else "", connection=True)
    try:
        await _serve_socket(ws, ingest)
    except InvalidFrame as e:
        await ws.close(code=e.close_code, reason=_close_reason(e))
    except WebSocketDisconnect:
        pass
    except Exception:  # request boundary: log, tell the client to retry later
        log.exception("collector socket failed")
        with contextlib.suppress(Exception):
            await ws.close(code=1011, reason="internal error")
    finally:
        # a handler cancelled as the socket goes (a shutting-down server, the test client)
        # must still count the connection out, or the session would wait for the idle
        # timeout instead of the grace period
        with contextlib.suppress(Exception):
            await _to_completion(ingest.finish())


async def _read_body(request: Request) -> bytes:
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > wire.MAX_BEACON_BYTES:
        raise wire.fail("oversize", f"beacon of {length} bytes exceeds {wire.MAX_BEACON_BYTES}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > wire.MAX_BEACON_BYTES:
            raise wire.fail("oversize", f"beacon exceeds {wire.MAX_BEACON_BYTES} bytes")
    return bytes(body)


async def collect_beacon(request: Request) -> Response:
    """``POST /collect``: a hello then unacknowledged frames, as one binary body."""
    cors = {"Access-Control-Allow-Origin": request.headers.get("origin", "*"), "Vary": "Origin"}
    client = request.client.host if request.client else ""
    try:
        parts = wire.split_beacon(await _read_body(request))
        frames = [wire.decode_frame(p) for p in parts[1:]]  # all valid, or nothing is stored
        ingest = Ingest(request.app, request.headers, client, connection=False)
        await ingest.hello(parts[0])
        for frame in frames:
            await ingest.frame(frame)
            await ingest.end_if_ended(frame)
    except InvalidFrame as e:
        body = {"error": e.code, "detail": str(e), "close_code": e.close_code}
        return JSONResponse(body, status_code=HTTP_STATUS.get(e.code, 400), headers=cors)
    return Response(status_code=204, headers=cors)


@dataclass(frozen=True)
class _Snippet:
    body: bytes
    etag: str


def _snippet() -> _Snippet:
    body = SNIPPET_PATH.read_bytes()
    return _Snippet(body=body, etag='"' + hashlib.sha256(body).hexdigest()[:32] + '"')


async def snippet(request: Request) -> Response:
    """``GET /c.js`` with an ETag and an hour of caching; 304 when the client has it."""
    s = _snippet()
    headers = {
        "ETag": s.etag,
        "Cache-Control": "public, max-age=3600",
        "Access-Control-Allow-Origin": "*",
        "X-Content-Type-Options": "nosniff",
    }
    if request.headers.get("if-none-match") == s.etag:
        return Response(status_code=304, headers=headers)
    return Response(s.body, media_type="application/javascript; charset=utf-8", headers=headers)


def routes() -> list[BaseRoute]:
    return [
        Route("/c.js", snippet),
        Route("/collect", collect_beacon, methods=["POST"]),
        WebSocketRoute("/collect", collect_socket),
    ]
