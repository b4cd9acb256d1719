import subprocess
import sys
from pathlib import Path

import pytest

from server.cli import build_parser, main


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for name in build_parser()._subparsers._group_actions[0].choices:  # type: ignore[union-attr]
        assert name in out
    assert "TRAILGUARD_DATABASE_URL" in out


def _run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server.cli", *args],
        env={"PATH": "/usr/bin:/bin", **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_malformed_url_gives_one_line_naming_the_variable(tmp_path: Path) -> None:
    result = _run(["db", "upgrade"], {"TRAILGUARD_DATABASE_URL": "mysql//nope"}, tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "TRAILGUARD_DATABASE_URL" in lines[0]


def test_unreachable_database_gives_one_line(tmp_path: Path) -> None:
    env = {"TRAILGUARD_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"}
    result = _run(["db", "upgrade"], env, tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "database unreachable" in lines[0]
    assert "Traceback" not in result.stderr


def test_db_upgrade_then_check_on_sqlite(tmp_path: Path) -> None:
    env = {"TRAILGUARD_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"}
    assert _run(["db", "upgrade"], env, tmp_path).returncode == 0
    check = _run(["db", "check"], env, tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
