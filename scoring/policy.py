"""Per-site decision policy: thresholds per action, defaults, minimum evidence, burst limit.

A site's policy is stored as JSON in ``Site.policy``. What is stored is merged over
:data:`DEFAULT_POLICY` (``actions`` entry by entry), so an empty ``{}`` means "the documented
defaults" and a site may override one field only. :func:`parse_policy` validates the result and
raises :class:`~renderer.errors.InvalidInput` with a precise ``code`` for anything malformed.

Scores are risks in ``[0, 1]``: the higher, the less the movement looks like the account's owner
(or, with the group model, like a genuine customer). For each action a score at or above
``deny_at`` denies, at or above ``review_at`` asks for a review, below it allows.

The burst limit is a token bucket per site in Redis (:func:`admit`): ``burst`` requests at once,
refilled at ``per_second``. Admins change a policy with :func:`change_policy`, which stores the
full validated form and appends a ``PolicyChange`` row (who, why, before, after).
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from sqlalchemy import select
from sqlalchemy.orm import Session

from renderer.errors import InvalidInput
from scoring import keys
from scoring.schema import PolicyChange, Site

DECISIONS = ("allow", "review", "deny")
NOT_ENROLLED_CHOICES = ("group", *DECISIONS)
ACTION_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
MAX_SAMPLES = 10_000_000

DEFAULT_POLICY: dict[str, Any] = {
    "actions": {
        "login": {"review_at": 0.6, "deny_at": 0.85},
        "checkout": {"review_at": 0.5, "deny_at": 0.8},
        "change_password": {"review_at": 0.4, "deny_at": 0.7},
    },
    "default_action": {"review_at": 0.6, "deny_at": 0.9},
    "insufficient_data": "allow",
    "min_samples": 300,
    "min_windows": 1,
    "not_enrolled": "group",
    "no_model": "allow",
    "rate_limit": {"per_second": 50.0, "burst": 100},
}
"""The documented defaults (docs/decisions.md). ``min_samples`` counts pointer samples."""

TOP_KEYS = frozenset(DEFAULT_POLICY)


@dataclass(frozen=True)
class ActionPolicy:
    review_at: float
    deny_at: float


@dataclass(frozen=True)
class RateLimit:
    per_second: float
    burst: int


@dataclass(frozen=True)
class Policy:
    actions: Mapping[str, ActionPolicy]
    default_action: ActionPolicy
    insufficient_data: str
    min_samples: int
    min_windows: int
    not_enrolled: str
    no_model: str
    rate_limit: RateLimit

    def for_action(self, action: str) -> ActionPolicy:
        return self.actions.get(action, self.default_action)


def merged(stored: Mapping[str, Any] | None) -> dict[str, Any]:
    """``stored`` over the defaults; ``actions`` and ``rate_limit`` merge entry by entry."""
    if stored is not None and not isinstance(stored, Mapping):
        raise InvalidInput("a policy must be a JSON object", "bad_policy")
    out = copy.deepcopy(DEFAULT_POLICY)
    for key, value in (stored or {}).items():
        if key in ("actions", "rate_limit") and isinstance(value, Mapping):
            out[key] = {**out[key], **value}
        else:
            out[key] = copy.deepcopy(value)
    return out


def _number(value: Any, where: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidInput(f"{where} must be a number", "bad_policy_value")
    if not low <= value <= high:
        raise InvalidInput(f"{where} must be between {low:g} and {high:g}", "bad_policy_value")
    return float(value)


def _integer(value: Any, where: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{where} must be an integer", "bad_policy_value")
    if not low <= value <= high:
        raise InvalidInput(f"{where} must be between {low} and {high}", "bad_policy_value")
    return value


def _choice(value: Any, where: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise InvalidInput(f"{where} must be one of {', '.join(choices)}", "bad_policy_value")
    return str(value)


def _action_policy(raw: Any, where: str) -> ActionPolicy:
    if not isinstance(raw, Mapping) or set(raw) != {"review_at", "deny_at"}:
        raise InvalidInput(f"{where} must be {{'review_at': x, 'deny_at': y}}", "bad_policy_value")
    review = _number(raw["review_at"], f"{where}.review_at", 0.0, 1.0)
    deny = _number(raw["deny_at"], f"{where}.deny_at", 0.0, 1.0)
    if review > deny:
        raise InvalidInput(f"{where}: review_at must not exceed deny_at", "bad_policy_value")
    return ActionPolicy(review_at=review, deny_at=deny)


def _actions(raw: Any) -> dict[str, ActionPolicy]:
    if not isinstance(raw, Mapping):
        raise InvalidInput("actions must be an object of action → thresholds", "bad_policy_value")
    out = {}
    for name, value in raw.items():
        if not isinstance(name, str) or not ACTION_NAME.match(name):
            raise InvalidInput(
                f"action name {name!r} must match [a-z][a-z0-9_]{{0,31}}", "bad_action"
            )
        out[name] = _action_policy(value, f"actions.{name}")
    return out


def _rate_limit(raw: Any) -> RateLimit:
    if not isinstance(raw, Mapping) or set(raw) != {"per_second", "burst"}:
        raise InvalidInput("rate_limit must be {'per_second': x, 'burst': n}", "bad_policy_value")
    return RateLimit(
        per_second=_number(raw["per_second"], "rate_limit.per_second", 0.01, 100_000.0),
        burst=_integer(raw["burst"], "rate_limit.burst", 1, 1_000_000),
    )


def parse_policy(stored: Mapping[str, Any] | None) -> Policy:
    """The effective policy of a site whose ``Site.policy`` is ``stored``; InvalidInput if bad."""
    raw = merged(stored)
    unknown = sorted(set(raw) - TOP_KEYS)
    if unknown:
        raise InvalidInput(f"unknown policy field(s): {', '.join(unknown)}", "unknown_policy_field")
    return Policy(
        actions=_actions(raw["actions"]),
        default_action=_action_policy(raw["default_action"], "default_action"),
        insufficient_data=_choice(raw["insufficient_data"], "insufficient_data", DECISIONS),
        min_samples=_integer(raw["min_samples"], "min_samples", 0, MAX_SAMPLES),
        min_windows=_integer(raw["min_windows"], "min_windows", 0, 100_000),
        not_enrolled=_choice(raw["not_enrolled"], "not_enrolled", NOT_ENROLLED_CHOICES),
        no_model=_choice(raw["no_model"], "no_model", DECISIONS),
        rate_limit=_rate_limit(raw["rate_limit"]),
    )


def policy_to_json(policy: Policy) -> dict[str, Any]:
    """The full JSON form of ``policy`` (what the admin endpoint stores and shows)."""

    def thresholds(a: ActionPolicy) -> dict[str, float]:
        return {"review_at": a.review_at, "deny_at": a.deny_at}

    return {
        "actions": {name: thresholds(a) for name, a in sorted(policy.actions.items())},
        "default_action": thresholds(policy.default_action),
        "insufficient_data": policy.insufficient_data,
        "min_samples": policy.min_samples,
        "min_windows": policy.min_windows,
        "not_enrolled": policy.not_enrolled,
        "no_model": policy.no_model,
        "rate_limit": {
            "per_second": policy.rate_limit.per_second,
            "burst": policy.rate_limit.burst,
        },
    }


# Token bucket; the caller passes the clock so tests can drive it. Returns {allowed, wait_ms}.
_BUCKET = """
local rate = tonumber(ARGV[1]) / 1000.0
local burst = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ms')
local tokens = tonumber(state[1]) or burst
local last = tonumber(state[2]) or now
if now > last then
  tokens = math.min(burst, tokens + (now - last) * rate)
  last = now
end
local allowed = 0
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait = math.ceil((1 - tokens) / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ms', tostring(last))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate) + 1000)
return {allowed, wait}
"""


async def admit(redis: aioredis.Redis, site_id: int, limit: RateLimit, now_ms: int) -> float:
    """Take one token from the site's bucket: 0.0 when admitted, else seconds to wait."""
    allowed, wait_ms = await redis.eval(
        _BUCKET, 1, keys.decision_rate(site_id), limit.per_second, limit.burst, now_ms
    )
    return 0.0 if int(allowed) else max(int(wait_ms), 1) / 1000.0


def change_policy(
    db: Session, site: Site, new: Mapping[str, Any], *, actor: str, reason: str
) -> PolicyChange:
    """Validate ``new`` (merged over the defaults), store its full form, audit the change.

    The caller commits. InvalidInput when the policy is malformed or no reason is given."""
    reason = reason.strip()
    if not reason:
        raise InvalidInput("say why the policy changes", "missing_reason")
    after = policy_to_json(parse_policy(new))
    before = policy_to_json(parse_policy(site.policy))
    change = PolicyChange(
        site_id=site.id, actor=actor[:320], before=before, after=after, reason=reason[:4000]
    )
    site.policy = after
    db.add(change)
    db.flush()
    return change


def policy_history(db: Session, site: Site, limit: int = 50) -> list[PolicyChange]:
    return list(
        db.scalars(
            select(PolicyChange)
            .where(PolicyChange.site_id == site.id)
            .order_by(PolicyChange.id.desc())
            .limit(limit)
        )
    )
