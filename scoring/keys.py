"""Every Redis key and stream name TrailGuard uses, in one place.

Per-session keys carry a hash tag, ``tg:{<sid>}:…``, so that all keys of one page session
land in the same Redis Cluster slot and multi-key commands on them stay legal. Queue
streams carry a tag of their own per pipeline.
"""

from __future__ import annotations

PREFIX = "tg"

PIPELINES = ("mouse", "pump", "whale")


def session_samples(sid: str) -> str:
    """Stream of accepted sample frames of one page session."""
    return f"{PREFIX}:{{{sid}}}:samples"


def session_meta(sid: str) -> str:
    """Hash with one page session's metadata (site, account, viewport, state …)."""
    return f"{PREFIX}:{{{sid}}}:meta"


def session_seqs(sid: str) -> str:
    """Set of frame sequence numbers already accepted: drops resends."""
    return f"{PREFIX}:{{{sid}}}:seqs"


def session_windows(sid: str) -> str:
    """Hash ``<models>:<network>:<window digest>`` → that network's output for one complete
    window of the page (float32 bytes): scored once by any server process, read by all."""
    return f"{PREFIX}:{{{sid}}}:windows"


def session_end_lock(sid: str) -> str:
    """Set once with NX when the session ends, so exactly one scoring job is enqueued."""
    return f"{PREFIX}:{{{sid}}}:ended"


def jobs_stream(pipeline: str) -> str:
    """The jobs stream of a pipeline, read by worker consumer groups."""
    return f"{PREFIX}:{{jobs:{pipeline}}}:stream"


def dead_letter_stream(pipeline: str) -> str:
    """Jobs that failed too often end here."""
    return f"{PREFIX}:{{jobs:{pipeline}}}:dead"


def job_attempts(pipeline: str) -> str:
    """Hash job id → attempts so far."""
    return f"{PREFIX}:{{jobs:{pipeline}}}:attempts"


def decision_rate(site_id: int) -> str:
    """Hash (tokens, ms) of one site's token bucket limiting bursts of decision requests."""
    return f"{PREFIX}:{{site:{site_id}}}:decisions:rate"


def consumer_group(pipeline: str) -> str:
    return f"{PREFIX}-{pipeline}-workers"


LIVE_SESSIONS = f"{PREFIX}:{{sessions}}:live"
"""Sorted set sid → last activity (unix seconds) of sessions not yet ended."""


def rate_limit(scope: str, ident: str) -> str:
    """Counter for a fixed-window rate limit."""
    return f"{PREFIX}:{{rl:{scope}:{ident}}}"


def analyst_session(token: str) -> str:
    """An analyst's login session (hash: analyst id, created); expires with the session."""
    return f"{PREFIX}:{{auth:{token}}}:session"


ALERT_DISPATCH_LOCK = f"{PREFIX}:{{alerts}}:dispatch-lock"
"""Held by the one process sending alerts at a time (server lifespan task or CLI)."""
