"""The collector endpoints against real Redis and a real database (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis
from sqlalchemy import select
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from scoring import keys
from scoring import session_store as store
from scoring.database import make_engine, make_sessionmaker
from scoring.schema import Account, PageSession, Site
from server import collect, wire
from server.app import Services, create_app
from server.settings import Settings, load_settings
from server.sites import create_site

ORIGIN = "https://shop.example"
QUIET = collect.CollectorConfig(sweep_every_s=3600, grace_s=5, idle_s=60)


def _settings(tmp_path: Path, database_url: str, redis_url: str) -> Settings:
    return load_settings(
        {}, database_url=database_url, redis_url=redis_url, data_dir=tmp_path / "var"
    )


def _site(database_url: str, origins: list[str] | None = None) -> str:
    engine = make_engine(database_url)
    try:
        with make_sessionmaker(engine)() as s:
            new = create_site(s, "Shop", origins or [ORIGIN])
            s.commit()
            return new.site.key
    finally:
        engine.dispose()


def _hello(sid: str, site_key: str, account: str = "") -> bytes:
    h = wire.Hello(sid, site_key, "/checkout?x=1", (1280, 720), 2.0, "mouse", account, 1)
    return wire.encode_hello(h)


def _path(seq: int, n: int = 30, t0: int = 0) -> list[tuple[int, int, int]]:
    base = t0 + seq * n * 80
    return [(base + i * 80, 100 + seq * n + i, 200 + i) for i in range(n)]


def _jobs(r: redis.Redis) -> list[dict[bytes, bytes]]:
    return [fields for _id, fields in r.xrange(keys.jobs_stream("mouse"))]  # type: ignore[union-attr]


def _sid() -> str:
    return secrets.token_hex(16)


def _wait_ended(r: redis.Redis, sid: str) -> None:
    """The server ends a session just after acknowledging its end-of-page frame."""
    deadline = time.monotonic() + 10
    while r.hget(keys.session_meta(sid), "state") != b"ended":
        assert time.monotonic() < deadline, "the session did not end"
        time.sleep(0.02)


def _wait_closed(r: redis.Redis, sid: str) -> None:
    """The server counts a closed connection out just after the close (in a task of its own,
    so that a handler cancelled then still does it)."""
    deadline = time.monotonic() + 10
    while r.hget(keys.session_meta(sid), "connections") != b"0":
        assert time.monotonic() < deadline, "the close was not counted"
        time.sleep(0.02)


@pytest.fixture
def env(tmp_path: Path, migrated_database_url: str, redis_url: str) -> Iterator[tuple]:
    key = _site(migrated_database_url)
    app = create_app(_settings(tmp_path, migrated_database_url, redis_url))
    app.state.collector_config = QUIET
    with TestClient(app) as client:
        yield client, key, migrated_database_url


@pytest.fixture
def quick(settings: Settings) -> Iterator[tuple]:
    """SQLite only: for rules where the database does not matter."""
    key = _site(settings.database_url)
    app = create_app(settings)
    app.state.collector_config = QUIET
    with TestClient(app) as client:
        yield client, key, app


def _send(ws, seq: int, end: str | None = None) -> int:  # type: ignore[no-untyped-def]
    ws.send_bytes(wire.encode_moves(seq, _path(seq), end=end))
    return wire.decode_ack(ws.receive_bytes())


def test_session_end_to_end_stores_samples_row_and_one_job(
    env: tuple, redis_client: redis.Redis
) -> None:
    client, key, db = env
    sid = _sid()
    with client.websocket_connect("/collect", headers={"origin": ORIGIN}) as ws:
        ws.send_bytes(_hello(sid, key, account="acct-1"))
        assert [_send(ws, s) for s in range(3)] == [0, 1, 2]
        assert _send(ws, 3, end="pagehide") == 3
    _wait_ended(redis_client, sid)
    meta = {k.decode(): v.decode() for k, v in redis_client.hgetall(keys.session_meta(sid)).items()}
    assert meta["state"] == "ended" and meta["end_reason"] == "end"
    assert meta["n_samples"] == "120" and meta["page_path"] == "/checkout"
    assert (meta["viewport_w"], meta["viewport_h"], meta["account"]) == ("1280", "720", "acct-1")
    jobs = _jobs(redis_client)
    assert len(jobs) == 1 and jobs[0][b"session_id"] == sid.encode()
    engine = make_engine(db)
    with make_sessionmaker(engine)() as s:
        row = s.get(PageSession, sid)
        assert row is not None and row.status == "ended" and row.n_samples == 120
        account = s.get(Account, row.account_id)
        assert account is not None and account.external_id == "acct-1"
    engine.dispose()


def test_read_session_returns_the_path_sorted_in_ms(quick: tuple, redis_url: str) -> None:
    client, key, _app = quick
    sid = _sid()
    with client.websocket_connect("/collect", headers={"origin": ORIGIN}) as ws:
        ws.send_bytes(_hello(sid, key))
        for seq in (0, 1):
            _send(ws, seq)

    async def read() -> store.SessionData:
        r = aioredis.Redis.from_url(redis_url)
        try:
            return await store.read_session(r, sid)
        finally:
            await r.aclose()

    data = asyncio.run(read())
    want = [(t / 10, x, y, 0) for seq in (0, 1) for t, x, y in _path(seq)]
    assert data.viewport == (1280, 720)
    assert data.events.shape == (60, 4)
    assert [tuple(row) for row in data.events.tolist()] == want


def test_resent_frames_are_acked_but_stored_once(quick: tuple, redis_client: redis.Redis) -> None:
    client, key, _app = quick
    sid = _sid()
    with client.websocket_connect("/collect", headers={"origin": ORIGIN}) as ws:
        ws.send_bytes(_hello(sid, key))
        _send(ws, 0)
        _send(ws, 1)
    # the connection dropped before the client saw the acks: it reconnects and resends all
    with client.websocket_connect("/collect", headers={"origin": ORIGIN}) as ws:
        ws.send_bytes(_hello(sid, key))
        assert [_send(ws, s) for s in (0, 1, 2)] == [0, 1, 2]
    assert redis_client.xlen(keys.session_samples(sid)) == 3
    assert redis_client.hget(keys.session_meta(sid), "n_samples") == b"90"


def _rejected(client: TestClient, messages: list[bytes], origin: str | None = ORIGIN) -> tuple:
    headers = {"origin": origin} if origin else {}
    with client.websocket_connect("/collect", headers=headers) as ws:
        for m in messages:
            ws.send_bytes(m)
        with pytest.raises(WebSocketDisconnect) as err:
            while True:
                ws.receive_bytes()
    return err.value.code, err.value.reason


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("unknown_site", 4013),
        ("bad_origin", 4014),
        ("no_origin", 4014),
        ("frame_first", 4012),
        ("unknown_version", 4001),
        ("insane_coordinates", 4008),
        ("unknown_record", 4005),
        ("truncated_varint", 4003),
        ("oversize", 1009),
        ("non_monotonic_time", 4007),
    ],
)
def test_each_rule_closes_with_its_code_and_stores_nothing(
    quick: tuple, redis_client: redis.Redis, case: str, code: int
) -> None:
    client, key, _app = quick
    sid = _sid()
    hello = _hello(sid, key)
    good = wire.encode_moves(0, _path(0))
    messages = {
        "unknown_site": [_hello(sid, "tgk_nobody"), good],
        "bad_origin": [hello, good],
        "no_origin": [hello, good],
        "frame_first": [good],
        "unknown_version": [hello, b"\x02" + good[1:]],
        "insane_coordinates": [hello, wire.encode_moves(0, [(0, 10, 10), (80, 40000, 10)])],
        "unknown_record": [hello, good + b"\x63"],
        "truncated_varint": [hello, good + b"\x01\x01\x80"],
        "oversize": [hello, wire.encode_moves(0, _path(0, n=4000))[:100] + b"\x00" * 70000],
        "non_monotonic_time": [hello, good, wire.encode_moves(1, _path(1, t0=-2400))],
    }[case]
    origin = {"bad_origin": "https://evil.example", "no_origin": None}.get(case, ORIGIN)
    closed, reason = _rejected(client, messages, origin)
    assert closed == code
    prefix = {"bad_origin": "origin", "no_origin": "origin", "frame_first": "expected_hello"}
    assert reason.startswith(prefix.get(case, case))
    stored = redis_client.xlen(keys.session_samples(sid))
    assert stored == (1 if case == "non_monotonic_time" else 0)
    assert _jobs(redis_client) == []


def test_caps_on_total_and_rate(quick: tuple, redis_client: redis.Redis) -> None:
    client, key, app = quick
    caps = store.Caps(max_total_samples=50, max_rate_hz=1000)
    app.state.collector_config = replace(QUIET, caps=caps)
    sid = _sid()
    code, _ = _rejected(
        client, [_hello(sid, key), *(wire.encode_moves(s, _path(s)) for s in (0, 1))]
    )
    assert code == 4010
    assert redis_client.hget(keys.session_meta(sid), "n_samples") == b"30"
    # 3,000 samples within 0.3 s of session time: far above 1,000 per second
    app.state.collector_config = replace(QUIET, caps=store.Caps(max_rate_hz=1000))
    dense = [(i, 10, 10 + i % 3) for i in range(3000)]
    code, reason = _rejected(client, [_hello(_sid(), key), wire.encode_moves(0, dense)])
    assert (code, reason.split(":")[0]) == (4015, "rate_limited")
    # wall-clock bucket: a burst beyond burst_samples on one connection
    app.state.collector_config = replace(QUIET, burst_samples=40)
    code, _ = _rejected(
        client, [_hello(_sid(), key), *(wire.encode_moves(s, _path(s)) for s in (0, 1))]
    )
    assert code == 4015


def test_a_bad_session_leaves_other_sessions_untouched(
    quick: tuple, redis_client: redis.Redis
) -> None:
    client, key, _app = quick
    good_sid, bad_sid = _sid(), _sid()
    with client.websocket_connect("/collect", headers={"origin": ORIGIN}) as good:
        good.send_bytes(_hello(good_sid, key))
        _send(good, 0)
        _rejected(client, [_hello(bad_sid, key), b"\x01\x02\x00\x00\x00\x00\x63"])
        assert _send(good, 1) == 1
    assert redis_client.hget(keys.session_meta(good_sid), "n_samples") == b"60"
    assert redis_client.exists(keys.session_samples(bad_sid)) == 0


def test_a_session_id_cannot_be_taken_over_by_another_site(
    quick: tuple, settings: Settings, redis_client: redis.Redis
) -> None:
    client, key, _app = quick
    other = _site(settings.database_url, [ORIGIN])
    sid = _sid()
    with client.websocket_connect("/collect", headers={"origin": ORIGIN}) as ws:
        ws.send_bytes(_hello(sid, key))
        _send(ws, 0)
    code, _ = _rejected(client, [_hello(sid, other), wire.encode_moves(1, _path(1))])
    assert code == 4016
    assert redis_client.hget(keys.session_meta(sid), "n_samples") == b"30"


def test_text_messages_are_refused(quick: tuple) -> None:
    client, _key, _app = quick
    with client.websocket_connect("/collect", headers={"origin": ORIGIN}) as ws:
        ws.send_text("hello")
        with pytest.raises(WebSocketDisconnect) as err:
            ws.receive_bytes()
    assert err.value.code == 1003


def _beacon(client: TestClient, body: bytes, origin: str = ORIGIN):  # type: ignore[no-untyped-def]
    return client.post("/collect", content=body, headers={"origin": origin})


def test_beacon_after_socket_close_is_merged_not_duplicated(
    env: tuple, redis_client: redis.Redis
) -> None:
    client, key, _db = env
    sid = _sid()
    with client.websocket_connect("/collect", headers={"origin": ORIGIN}) as ws:
        ws.send_bytes(_hello(sid, key))
        _send(ws, 0)
        _send(ws, 1)
    # the page never saw ack 1, so its beacon carries frames 1, 2 and the end record
    frames = [wire.encode_moves(1, _path(1)), wire.encode_moves(2, _path(2), end="pagehide")]
    response = _beacon(client, wire.encode_beacon([_hello(sid, key), *frames]))
    assert response.status_code == 204
    assert redis_client.hget(keys.session_meta(sid), "n_samples") == b"90"
    assert redis_client.xlen(keys.session_samples(sid)) == 3
    assert len(_jobs(redis_client)) == 1
    # the same beacon again (the browser retried): nothing changes, still one job
    assert _beacon(client, wire.encode_beacon([_hello(sid, key), *frames])).status_code == 204
    assert redis_client.xlen(keys.session_samples(sid)) == 3
    assert len(_jobs(redis_client)) == 1


@pytest.mark.parametrize(
    ("body", "origin", "status", "code"),
    [
        (b"\x01\x03\x01\x02\x01", ORIGIN, 400, "truncated"),
        (b"\x09\x03", ORIGIN, 400, "unknown_version"),
        (b"\x01\x03" + b"\x00" * (wire.MAX_BEACON_BYTES + 1), ORIGIN, 413, "oversize"),
        (None, "https://evil.example", 403, "origin_not_allowed"),
    ],
)
def test_bad_beacons_get_a_status_and_reason(
    quick: tuple, redis_client: redis.Redis, body: bytes | None, origin: str, status: int, code: str
) -> None:
    client, key, _app = quick
    sid = _sid()
    if body is None:
        body = wire.encode_beacon([_hello(sid, key), wire.encode_moves(0, _path(0))])
    response = _beacon(client, body, origin)
    assert (response.status_code, response.json()["error"]) == (status, code)
    assert redis_client.exists(keys.session_meta(sid)) == 0


def test_a_beacon_with_one_bad_frame_stores_none_of_it(
    quick: tuple, redis_client: redis.Redis
) -> None:
    client, key, _app = quick
    sid = _sid()
    bad = wire.encode_moves(1, [(9000, 5, 5), (9080, 99999, 5)])
    body = wire.encode_beacon([_hello(sid, key), wire.encode_moves(0, _path(0)), bad])
    response = _beacon(client, body)
    assert (response.status_code, response.json()["error"]) == (400, "insane_coordinates")
    assert redis_client.exists(keys.session_samples(sid)) == 0


async def _services(settings: Settings) -> Services:
    engine = make_engine(settings.database_url)
    assert settings.redis_url
    return Services(
        settings, engine, make_sessionmaker(engine), aioredis.from_url(settings.redis_url)
    )


def test_close_beacon_and_timeout_racing_enqueue_exactly_one_job(
    quick: tuple, settings: Settings, redis_client: redis.Redis
) -> None:
    client, key, _app = quick
    sids = [_sid() for _ in range(5)]
    for sid in sids:
        with client.websocket_connect("/collect", headers={"origin": ORIGIN}) as ws:
            ws.send_bytes(_hello(sid, key))
            _send(ws, 0)

    async def race() -> list[bool]:
        svc = await _services(settings)
        try:
            far = 10**10  # every session is past its grace period and idle timeout
            tasks = []
            for sid in sids:
                tasks += [
                    collect.end_session(svc, QUIET, sid, "end", far),
                    collect.end_session(svc, QUIET, sid, "closed", far),
                    collect.sweep_once(svc, QUIET, far),
                ]
            return await asyncio.gather(*tasks)  # type: ignore[arg-type]
        finally:
            await svc.redis.aclose()
            svc.engine.dispose()

    asyncio.run(race())
    jobs = _jobs(redis_client)
    assert sorted(j[b"session_id"].decode() for j in jobs) == sorted(sids)
    assert redis_client.zcard(keys.LIVE_SESSIONS) == 0


def test_sweeper_ends_closed_sessions_after_grace_and_idle_ones_after_timeout(
    quick: tuple, settings: Settings, redis_client: redis.Redis
) -> None:
    client, key, _app = quick
    closed, idle = _sid(), _sid()
    with client.websocket_connect("/collect", headers={"origin": ORIGIN}) as ws:
        ws.send_bytes(_hello(closed, key))
        _send(ws, 0)
    ws_idle = client.websocket_connect("/collect", headers={"origin": ORIGIN})
    with ws_idle as ws:
        ws.send_bytes(_hello(idle, key))
        _send(ws, 0)

        async def sweep(offset: float) -> int:
            svc = await _services(settings)
            try:
                return await collect.sweep_once(svc, QUIET, time.time() + offset)
            finally:
                await svc.redis.aclose()
                svc.engine.dispose()

        _wait_closed(redis_client, closed)
        assert asyncio.run(sweep(1)) == 0  # inside the grace period: nothing ends
        assert asyncio.run(sweep(QUIET.grace_s + 1)) == 1  # the closed one
        assert redis_client.hget(keys.session_meta(closed), "end_reason") == b"closed"
        assert redis_client.hget(keys.session_meta(idle), "state") == b"live"
        assert asyncio.run(sweep(QUIET.idle_s + 1)) == 1  # the idle one, though still open
    assert redis_client.hget(keys.session_meta(idle), "end_reason") == b"idle"
    assert len(_jobs(redis_client)) == 2


def test_snippet_is_served_with_cache_headers_and_etag(quick: tuple) -> None:
    client, _key, _app = quick
    first = client.get("/c.js")
    assert first.status_code == 200
    assert first.headers["content-type"].startswith("application/javascript")
    assert "max-age=" in first.headers["cache-control"]
    assert first.content == collect.SNIPPET_PATH.read_bytes()
    again = client.get("/c.js", headers={"if-none-match": first.headers["etag"]})
    assert again.status_code == 304 and again.content == b""


@pytest.mark.parametrize("doc_path", ["docs/collector.md", "README.md"])
def test_docs_give_the_current_subresource_integrity_hash(doc_path: str) -> None:
    import base64
    import hashlib
    import re

    doc = (Path(__file__).resolve().parent.parent / doc_path).read_text()
    digest = hashlib.sha384(collect.SNIPPET_PATH.read_bytes()).digest()
    want = "sha384-" + base64.b64encode(digest).decode()
    assert re.findall(r"sha384-[A-Za-z0-9+/=]{64}", doc) == [want]


def test_new_frames_after_the_end_are_refused_but_resends_are_fine(
    quick: tuple, redis_client: redis.Redis
) -> None:
    client, key, _app = quick
    sid = _sid()
    with client.websocket_connect("/collect", headers={"origin": ORIGIN}) as ws:
        ws.send_bytes(_hello(sid, key))
        _send(ws, 0, end="pagehide")
    _wait_ended(redis_client, sid)
    resend = wire.encode_beacon([_hello(sid, key), wire.encode_moves(0, _path(0), "pagehide")])
    assert client.post("/collect", content=resend, headers={"origin": ORIGIN}).status_code == 204
    late = wire.encode_beacon([_hello(sid, key), wire.encode_moves(1, _path(1))])
    response = client.post("/collect", content=late, headers={"origin": ORIGIN})
    assert (response.status_code, response.json()["error"]) == (409, "session_ended")
    code, _ = _rejected(client, [_hello(sid, key)])
    assert code == 4017
    assert redis_client.hget(keys.session_meta(sid), "n_samples") == b"30"
    assert len(_jobs(redis_client)) == 1


def _open_sessions(client: TestClient, key: str, accounts: list[str]) -> list[str]:
    """One session per account ("" for none), each with one frame, socket closed."""
    sids = []
    for account in accounts:
        sid = _sid()
        with client.websocket_connect("/collect", headers={"origin": ORIGIN}) as ws:
            ws.send_bytes(_hello(sid, key, account=account))
            _send(ws, 0)
        sids.append(sid)
    return sids


async def _end_all(settings: Settings, due: list[tuple[str, str]]) -> list[str]:
    svc = await _services(settings)
    try:
        return await collect.end_sessions(svc, QUIET, due, time.time())
    finally:
        await svc.redis.aclose()
        svc.engine.dispose()


def test_sessions_ended_together_get_their_rows_accounts_and_one_job_each(
    env: tuple, tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    client, key, db = env
    accounts = ["shared", "", "shared", "alone", ""]
    sids = _open_sessions(client, key, accounts)
    settings = _settings(tmp_path, db, redis_url)
    due = [(sid, "closed") for sid in sids]
    ended = asyncio.run(_end_all(settings, [*due, due[0]]))  # a sid twice ends once
    assert sorted(ended) == sorted(sids)
    assert asyncio.run(_end_all(settings, due)) == []  # already ended: nobody ends it again
    assert sorted(j[b"session_id"].decode() for j in _jobs(redis_client)) == sorted(sids)
    assert redis_client.zcard(keys.LIVE_SESSIONS) == 0
    engine = make_engine(db)
    with make_sessionmaker(engine)() as s:
        rows = [s.get(PageSession, sid) for sid in sids]
        assert all(r is not None and r.status == "ended" and r.n_samples == 30 for r in rows)
        assert all(r is not None and r.end_reason == "closed" for r in rows)
        names = {a.id: a.external_id for a in s.scalars(select(Account))}
        assert [names.get(r.account_id or 0, "") for r in rows if r] == accounts
        assert len({r.account_id for r in rows if r and r.account_id}) == 2  # one "shared" row
    engine.dispose()


def test_ending_reuses_existing_accounts_and_completes_existing_rows(
    env: tuple, tmp_path: Path, redis_url: str
) -> None:
    client, key, db = env
    sids = _open_sessions(client, key, ["known", "new", "new"])
    engine = make_engine(db)
    with make_sessionmaker(engine)() as s:
        site_id = s.scalars(select(Site.id).where(Site.key == key)).one()
        known = Account(site_id=site_id, external_id="known")
        s.add(known)
        # a row that exists before the end (written by another part of the system) is
        # completed, not inserted twice
        s.add(PageSession(id=sids[0], site_id=site_id, page_path="/before"))
        s.commit()
        known_id = known.id
    ended = asyncio.run(_end_all(_settings(tmp_path, db, redis_url), [(s, "end") for s in sids]))
    assert sorted(ended) == sorted(sids)
    with make_sessionmaker(engine)() as s:
        rows = [s.get(PageSession, sid) for sid in sids]
        assert all(r is not None and r.status == "ended" and r.n_samples == 30 for r in rows)
        assert rows[0] is not None and rows[0].account_id == known_id
        assert rows[0].page_path == "/checkout"  # from the session's meta, query cut off
        accounts = {a.external_id: a.id for a in s.scalars(select(Account))}
        assert sorted(accounts) == ["known", "new"]
        assert [r.account_id for r in rows[1:] if r] == [accounts["new"]] * 2
    engine.dispose()


def test_ends_wait_to_batch_but_stopping_the_ender_ends_them_at_once(
    quick: tuple, settings: Settings, redis_client: redis.Redis
) -> None:
    client, key, _app = quick
    sids = _open_sessions(client, key, ["", ""])

    async def scenario() -> tuple[list[bool], float]:
        app = create_app(settings)
        app.state.services = await _services(settings)
        app.state.collector_config = replace(QUIET, end_linger_s=60.0)
        ender = collect.SessionEnder(app)
        runner = asyncio.create_task(ender.run())
        ends = [asyncio.create_task(ender.end(sid, "end")) for sid in sids]
        await asyncio.sleep(0.2)
        assert not any(e.done() for e in ends)  # lingering for more ends to batch with
        started = time.monotonic()
        ender.stop()  # shutting down: what was asked for ends now, not after the linger
        results = await asyncio.gather(*ends)
        await runner
        await app.state.services.redis.aclose()
        app.state.services.engine.dispose()
        return results, time.monotonic() - started

    results, took = asyncio.run(scenario())
    assert results == [True, True] and took < 10
    assert sorted(j[b"session_id"].decode() for j in _jobs(redis_client)) == sorted(sids)


def test_one_broken_session_does_not_stop_the_others_from_ending(
    quick: tuple, settings: Settings, redis_client: redis.Redis
) -> None:
    client, key, _app = quick
    sids = _open_sessions(client, key, ["", "", ""])
    broken = sids[1]
    redis_client.hset(keys.session_meta(broken), "site_id", 987654)  # no such site: no row
    ended = asyncio.run(_end_all(settings, [(sid, "closed") for sid in sids]))
    assert sorted(ended) == sorted([sids[0], sids[2]])
    assert sorted(j[b"session_id"].decode() for j in _jobs(redis_client)) == sorted(ended)
    # the broken one is left live, unlocked, for a later sweep to retry
    assert redis_client.exists(keys.session_end_lock(broken)) == 0
    assert redis_client.hget(keys.session_meta(broken), "state") == b"live"
    assert redis_client.zscore(keys.LIVE_SESSIONS, broken) is not None


def test_an_ended_session_leaves_the_live_index_for_good(
    quick: tuple, settings: Settings, redis_client: redis.Redis
) -> None:
    client, key, _app = quick
    ended, closed = _sid(), _sid()
    with client.websocket_connect("/collect", headers={"origin": ORIGIN}) as ws:
        ws.send_bytes(_hello(ended, key))
        _send(ws, 0, end="pagehide")
    _wait_ended(redis_client, ended)
    # closing the socket that ended it did not put it back among the live sessions
    assert redis_client.zscore(keys.LIVE_SESSIONS, ended) is None
    with client.websocket_connect("/collect", headers={"origin": ORIGIN}) as ws:
        ws.send_bytes(_hello(closed, key))
        _send(ws, 0)
    # an ended session that got back there anyway (another of its sockets closed late) is
    # dropped by the sweep instead of filling every sweep's first places until it expires
    redis_client.zadd(keys.LIVE_SESSIONS, {ended: 1.0})

    async def due(limit: int) -> list[tuple[str, str]]:
        r = aioredis.Redis.from_url(settings.redis_url or "")
        try:
            return await store.due_sessions(r, time.time() + 3600, 5, 60, limit=limit)
        finally:
            await r.aclose()

    assert asyncio.run(due(1)) == []
    assert redis_client.zscore(keys.LIVE_SESSIONS, ended) is None
    assert asyncio.run(due(1)) == [(closed, "closed")]
    assert len(_jobs(redis_client)) == 1
