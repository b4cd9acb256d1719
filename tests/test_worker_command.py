"""``trailguard worker``: choosing pipelines, reporting the ones that cannot load, and
``trailguard run`` starting workers beside the server on the embedded Redis."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from test_worker_faults import free_port, wait_for
from test_worker_pipeline import SPEC, ProbePipeline

from server.cli import main
from server.commands.worker import import_pipeline, load_pipelines

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def repo_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    """``tests.test_worker_pipeline`` as worker processes import it (cwd = the repository)."""
    monkeypatch.syspath_prepend(str(ROOT))


def test_import_pipeline_names_what_is_wrong(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "tg_broken_pipeline.py").write_text("import no_such_dep\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert import_pipeline(SPEC).__name__ == ProbePipeline.__name__
    with pytest.raises(LookupError, match=r"unknown pipeline 'nope'.*known: mouse, pump, whale"):
        import_pipeline("nope")
    with pytest.raises(LookupError, match=r"module scoring\.pipelines\.absent does not exist yet"):
        import_pipeline("scoring.pipelines.absent:Absent")
    with pytest.raises(LookupError, match=r"fails to import: .*No module named 'no_such_dep'"):
        import_pipeline("tg_broken_pipeline:Anything")
    with pytest.raises(LookupError, match="is not a Pipeline subclass"):
        import_pipeline("scoring.worker:Worker")


def test_load_pipelines_keeps_the_good_and_reports_the_rest() -> None:
    loaded = load_pipelines([SPEC, "scoring.pipelines.absent:Absent"])
    assert [c.name for c in loaded.classes] == ["probe"]
    assert loaded.problems == [
        "pipeline 'scoring.pipelines.absent:Absent': module "
        "scoring.pipelines.absent does not exist yet"
    ]


def test_worker_refuses_to_start_when_a_named_pipeline_cannot_load(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], redis_url: str
) -> None:
    monkeypatch.setenv("TRAILGUARD_REDIS_URL", redis_url)
    code = main(["worker", "--pipelines", f"{SPEC},scoring.pipelines.absent:Absent"])
    err = capsys.readouterr().err
    assert code == 2
    assert "module scoring.pipelines.absent does not exist yet" in err
    assert "not starting" in err


def test_worker_without_redis_url_says_so(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("TRAILGUARD_REDIS_URL", raising=False)
    assert main(["worker", "--pipelines", SPEC]) == 2
    assert "TRAILGUARD_REDIS_URL" in capsys.readouterr().err


def _consumers(port: int) -> dict[str, float]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        if line.startswith("trailguard_queue_consumers{"):
            name, value = line.split(" ")
            out[name.split('"')[1]] = float(value)
    return out


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def test_run_starts_workers_on_the_embedded_redis(tmp_path: Path) -> None:
    port = free_port()
    proc, log = start_run(tmp_path, port)
    children: list[int] = []
    try:
        # The worker joined the group of every pipeline that loads, on the embedded Redis's
        # unix socket, which the parent passed down in TRAILGUARD_REDIS_URL.
        wait_for(lambda: any(n == 1 for n in _consumers(port).values()), 90, "a worker")
        assert log.read_text().count("trailguard worker ") == 1
        children = _children(proc.pid)
        assert len(children) == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    deadline = time.monotonic() + 20
    while any(_alive(p) for p in children) and time.monotonic() < deadline:
        time.sleep(0.2)
    orphans = [p for p in children if _alive(p)]
    for pid in orphans:
        os.kill(pid, signal.SIGKILL)
    leftover_redis = _stop_embedded_redis(tmp_path / "var" / "redis")
    # SIGTERM to `trailguard run` stops its workers and its embedded Redis too
    assert orphans == []
    assert leftover_redis == 0


def start_run(
    tmp_path: Path, port: int, *args: str, **env: str
) -> tuple[subprocess.Popen[bytes], Path]:
    """``trailguard run ARGS`` on embedded defaults in ``tmp_path`` (``env``: more settings),
    its output in the returned log file."""
    environ = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "TRAILGUARD_DATA_DIR": str(tmp_path / "var"),
        "TRAILGUARD_DATABASE_URL": f"sqlite:///{tmp_path / 'tg.db'}",
        "TRAILGUARD_PORT": str(port),
        **env,
    }
    log = tmp_path / "run.log"
    with log.open("w") as out:
        cmd = [sys.executable, "-m", "server.cli", "run", *args]
        proc = subprocess.Popen(cmd, cwd=ROOT, env=environ, stdout=out, stderr=out)
    return proc, log


def _stop_embedded_redis(directory: Path) -> int:
    """Stop redis-servers left running in ``directory`` (their cwd); returns how many."""
    stopped = 0
    for proc_dir in Path("/proc").iterdir():
        if not proc_dir.name.isdigit():
            continue
        try:
            if Path(proc_dir, "cwd").resolve() == directory.resolve() and _alive(
                int(proc_dir.name)
            ):
                os.kill(int(proc_dir.name), signal.SIGTERM)
                stopped += 1
        except OSError:
            continue
    return stopped


def test_a_pipeline_whose_model_fails_to_load_is_reported_and_not_run(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    redis_url: str,
    sqlite_url: str,
) -> None:
    (tmp_path / "tg_bad_load.py").write_text(
        "from test_worker_pipeline import ProbePipeline\n\n\n"
        "class NoModel(ProbePipeline):\n"
        "    def load(self) -> None:\n"
        "        raise RuntimeError('model file var/models/probe.pt is missing')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("TRAILGUARD_REDIS_URL", redis_url)
    monkeypatch.setenv("TRAILGUARD_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("TRAILGUARD_DATA_DIR", str(tmp_path / "var"))
    assert main(["worker", "--pipelines", "tg_bad_load:NoModel"]) == 2
    err = capsys.readouterr().err
    assert "pipeline 'probe' failed to load: RuntimeError: model file var/models/probe.pt" in err
    assert "not starting" in err
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ, "metrics were set up for nothing"
