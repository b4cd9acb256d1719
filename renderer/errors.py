"""The TrailGuard exception tree, in one place.

Every package raises these (``renderer`` is the bottom layer, so the tree lives here and
``scoring`` and ``server`` import it)::

    TrailGuardError                 root of everything TrailGuard raises on purpose
    ├── ConfigError                 a TRAILGUARD_* setting is missing or malformed (start-up)
    ├── InvalidInput (ValueError)   data from outside is malformed; ``code`` is machine-readable
    │   ├── InvalidFrame            a collector wire frame fails validation (has a close code)
    │   ├── InvalidSession          a mouse session cannot be rendered or scored
    │   ├── InvalidCard             a pump card is garbage (too short, NaN, zero range …)
    │   └── InvalidAudio            audio is corrupt, empty or in an unsupported format
    ├── NotFound (LookupError)      a site, session, model or case that does not exist
    │   └── ModelNotFound           no trained model; ``hint`` names the command that trains one
    ├── AccessDenied                authentication or authorisation failed
    ├── RateLimited                 too many requests; ``retry_after`` seconds
    └── StoreUnavailable            Redis or the database cannot be reached

Raise with ``raise X(...) from e`` when translating a lower-level error. Only a job
boundary (a worker step, a request handler) catches broadly, and it records the failure.
"""

from __future__ import annotations


class TrailGuardError(Exception):
    """Root of every error TrailGuard raises on purpose."""


class ConfigError(TrailGuardError):
    """A ``TRAILGUARD_*`` setting is missing or malformed."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable
        self.problem = problem


class InvalidInput(TrailGuardError, ValueError):
    """Input from outside is malformed. ``code`` is a short machine-readable reason."""

    def __init__(self, message: str, code: str = "invalid_input") -> None:
        super().__init__(message)
        self.code = code


class InvalidFrame(InvalidInput):
    """A collector frame failed validation; ``close_code`` is the WebSocket close code."""

    def __init__(self, message: str, code: str, close_code: int = 1008) -> None:
        super().__init__(message, code)
        self.close_code = close_code


class InvalidSession(InvalidInput):
    """A mouse session cannot be rendered or scored."""


class InvalidCard(InvalidInput):
    """A pump dynamometer card cannot be used."""


class InvalidAudio(InvalidInput):
    """Audio cannot be decoded or is unusable."""


class NotFound(TrailGuardError, LookupError):
    """Something asked for by id does not exist."""


class ModelNotFound(NotFound):
    """No trained model is available; ``hint`` names the command that trains one."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(f"{message} (train one with: {hint})" if hint else message)
        self.hint = hint


class AccessDenied(TrailGuardError):
    """Authentication or authorisation failed."""


class RateLimited(TrailGuardError):
    """Too many requests."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class StoreUnavailable(TrailGuardError):
    """Redis or the database cannot be reached."""
