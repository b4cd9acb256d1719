"""docker-compose.yml describes production; keep it valid and complete."""

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"


def _compose_command() -> list[str] | None:
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def test_compose_has_every_role_with_a_healthcheck() -> None:
    spec = yaml.safe_load(COMPOSE.read_text())
    services = spec["services"]
    assert {"redis", "postgres", "migrate", "server", "worker", "mailcatcher"} <= set(services)
    for name, service in services.items():
        assert "healthcheck" in service, f"{name} has no healthcheck"
    for name in ("migrate", "server", "worker"):
        env = services[name]["environment"]
        assert {"TRAILGUARD_DATABASE_URL", "TRAILGUARD_REDIS_URL"} <= set(env), name
        assert all(key.startswith("TRAILGUARD_") for key in env), name
    # scaling with --scale needs no fixed container name or host port on the worker
    assert "container_name" not in services["worker"]
    assert "ports" not in services["worker"]


def test_compose_config_accepts_the_file() -> None:
    command = _compose_command()
    if command is None:
        pytest.skip("no docker compose client on this machine")
    result = subprocess.run(
        [*command, "-f", str(COMPOSE), "config", "--quiet"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
