import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st

from renderer.errors import InvalidInput
from scoring.policy import (
    DEFAULT_POLICY,
    ActionPolicy,
    RateLimit,
    admit,
    parse_policy,
    policy_to_json,
)


def test_empty_policy_is_the_documented_defaults() -> None:
    policy = parse_policy({})
    assert policy_to_json(policy) == policy_to_json(parse_policy(DEFAULT_POLICY))
    assert policy.for_action("checkout") == ActionPolicy(review_at=0.5, deny_at=0.8)
    assert policy.for_action("unlisted_action") == ActionPolicy(review_at=0.6, deny_at=0.9)
    assert policy.insufficient_data == "allow"
    assert policy.not_enrolled == "group"


def test_one_override_keeps_the_other_defaults() -> None:
    policy = parse_policy({"actions": {"checkout": {"review_at": 0.3, "deny_at": 0.4}}})
    assert policy.for_action("checkout") == ActionPolicy(0.3, 0.4)
    assert policy.for_action("login") == ActionPolicy(0.6, 0.85)
    policy = parse_policy({"insufficient_data": "review", "rate_limit": {"burst": 3}})
    assert policy.insufficient_data == "review"
    assert policy.rate_limit == RateLimit(per_second=50.0, burst=3)


@pytest.mark.parametrize(
    ("stored", "code"),
    [
        ({"actions": {"login": {"review_at": 0.9, "deny_at": 0.5}}}, "bad_policy_value"),
        ({"actions": {"login": {"review_at": 1.5, "deny_at": 1.6}}}, "bad_policy_value"),
        ({"actions": {"login": {"review_at": "0.5", "deny_at": 0.6}}}, "bad_policy_value"),
        ({"actions": {"login": {"review_at": float("nan"), "deny_at": 0.6}}}, "bad_policy_value"),
        ({"actions": {"login": {"review_at": 0.5}}}, "bad_policy_value"),
        ({"actions": {"Log In": {"review_at": 0.5, "deny_at": 0.6}}}, "bad_action"),
        ({"actions": []}, "bad_policy_value"),
        ({"insufficient_data": "maybe"}, "bad_policy_value"),
        ({"not_enrolled": "block"}, "bad_policy_value"),
        ({"min_samples": -1}, "bad_policy_value"),
        ({"min_samples": True}, "bad_policy_value"),
        ({"rate_limit": {"per_second": 0, "burst": 1}}, "bad_policy_value"),
        ({"rate_limit": {"per_second": 1, "burst": 0, "x": 1}}, "bad_policy_value"),
        ({"treshold": 0.5}, "unknown_policy_field"),
    ],
)
def test_malformed_policies_are_refused_precisely(stored: dict[str, Any], code: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_policy(stored)
    assert info.value.code == code


def test_a_policy_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(InvalidInput) as info:
        parse_policy([1, 2])  # type: ignore[arg-type]
    assert info.value.code == "bad_policy"


unit = st.floats(0.0, 1.0, allow_nan=False)


@given(
    thresholds=st.dictionaries(
        st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True),
        st.tuples(unit, unit).map(sorted),
        max_size=5,
    ),
    default=st.sampled_from(["allow", "review", "deny"]),
    min_samples=st.integers(0, 100_000),
)
def test_the_json_form_round_trips(
    thresholds: dict[str, list[float]], default: str, min_samples: int
) -> None:
    stored = {
        "actions": {k: {"review_at": r, "deny_at": d} for k, (r, d) in thresholds.items()},
        "insufficient_data": default,
        "min_samples": min_samples,
    }
    policy = parse_policy(stored)
    assert parse_policy(policy_to_json(policy)) == policy
    for name, (review, deny) in thresholds.items():
        assert policy.for_action(name) == ActionPolicy(review, deny)


def test_token_bucket_admits_a_burst_then_refills_per_site(redis_url: str) -> None:
    async def scenario() -> None:
        redis = aioredis.Redis.from_url(redis_url)
        limit = RateLimit(per_second=2.0, burst=3)
        try:
            t0 = 1_000_000
            waits = [await admit(redis, 1, limit, t0) for _ in range(5)]
            assert waits[:3] == [0.0, 0.0, 0.0]
            assert waits[3] == pytest.approx(0.5, abs=0.002)
            assert waits[4] == pytest.approx(0.5, abs=0.002)
            # another site has its own bucket
            assert await admit(redis, 2, limit, t0) == 0.0
            # 500 ms later one token is back, and only one
            assert await admit(redis, 1, limit, t0 + 500) == 0.0
            assert await admit(redis, 1, limit, t0 + 500) > 0.0
            # after a long pause the bucket is full again, never above burst
            later = t0 + 60_000
            assert [await admit(redis, 1, limit, later) for _ in range(4)][-1] > 0.0
        finally:
            await redis.aclose()

    asyncio.run(scenario())
