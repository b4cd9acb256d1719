import dataclasses

import numpy as np
import pytest

from renderer.mouse import LEFT_DOWN, LEFT_UP, RIGHT_DOWN, kinematics, sanitize
from scoring.mouse.metrics import trivial_cue_auc
from scoring.mouse.synth import SynthConfig, draw_habits, generate_events, group_sets, owner_sets
from scoring.sessionfile import POSITIVE

SMALL = SynthConfig(
    accounts=4, outsiders=4, enrol_sessions=2, enrol_events=3000, test_sessions=120,
    test_min_events=100, test_max_events=2000, group_train_people=16, group_test_people=16,
    group_sessions=4, group_min_events=200, group_max_events=1500, seed=123,
)  # fmt: skip


def test_sessions_are_time_ordered_clicks_pair_up_and_have_the_asked_length():
    rng = np.random.default_rng(5)
    events, viewport = generate_events(draw_habits(rng), 2500, rng)
    assert events.shape == (2500, 4)
    assert np.all(np.diff(events[:, 0]) >= 0)
    downs, ups = (events[:, 3] == LEFT_DOWN).sum(), (events[:, 3] == LEFT_UP).sum()
    assert downs > 0 and abs(int(downs) - int(ups)) <= 1
    clean = sanitize(events, viewport)
    speed = kinematics(clean.events).speed
    assert 0.05 < np.median(speed) < 3.0  # px/ms: human range


def test_people_differ_in_their_kinematics():
    rng = np.random.default_rng(9)
    a, b = draw_habits(rng), draw_habits(rng)
    assert a != b
    slow = dataclasses.replace(a, fitts_a=220, fitts_b=240)
    fast = dataclasses.replace(a, fitts_a=60, fitts_b=90)
    v = [
        np.median(
            kinematics(sanitize(*generate_events(h, 3000, np.random.default_rng(1))).events).speed
        )
        for h in (slow, fast)
    ]
    assert v[1] > 1.3 * v[0]


def test_visitors_who_do_not_know_the_site_search_but_are_not_busier():
    # the group difference is in how the pointer moves (search-and-point: slow scans with a
    # rest on each item before the target), not in how many events a second it makes
    rng = np.random.default_rng(11)
    people = [draw_habits(rng) for _ in range(6)]
    clicks, rates = {}, {}
    for known in (1.0, 0.1):
        c, r = [], []
        for k, h in enumerate(people):
            ev, _vp = generate_events(h, 4000, np.random.default_rng(k), familiarity=known)
            c.append(np.isin(ev[:, 3], (LEFT_DOWN, RIGHT_DOWN)).sum())
            r.append(len(ev) / np.ptp(ev[:, 0]) * 1000)
        clicks[known], rates[known] = np.array(c), np.array(r)
    assert (clicks[0.1] < 0.7 * clicks[1.0]).all()  # more pointer travel per target
    assert np.median(rates[0.1] / rates[1.0]) == pytest.approx(1.0, abs=0.15)


def test_owner_sets_have_genuine_enrolment_and_mixed_short_tests():
    train, tests = owner_sets(SMALL)
    assert len(train) == SMALL.accounts * SMALL.enrol_sessions
    assert {r.label for r in train} == {"genuine"}
    tests = list(tests)
    assert len(tests) == SMALL.test_sessions
    assert {r.label for r in tests} == {"genuine", "impostor"}
    lengths = [len(r.events) for r in tests]
    assert min(lengths) >= SMALL.test_min_events and max(lengths) <= SMALL.test_max_events
    # dirt is injected as in production data
    assert any((r.events[:, 1] == 65535).any() for r in tests)


def _cues(records):
    y = np.array([POSITIVE[r.label] for r in records])
    rate = np.array([len(r.events) / (np.ptp(r.events[:, 0]) / 1000 + 1e-3) for r in records])
    length = np.array([len(r.events) for r in records])
    return y, rate, length


def test_event_rate_and_length_alone_are_near_chance():
    _, tests = owner_sets(SMALL)
    y, rate, length = _cues(list(tests))
    assert trivial_cue_auc(y, rate) < 0.62
    assert trivial_cue_auc(y, length) < 0.62
    _, group_test = group_sets(SMALL)
    y, rate, length = _cues(group_test)
    assert trivial_cue_auc(y, rate) < 0.65
    assert trivial_cue_auc(y, length) < 0.62


def test_group_test_people_are_not_in_training():
    train, test = group_sets(SMALL)
    assert not {r.user_id for r in train} & {r.user_id for r in test}
    assert {r.label for r in test} == {"customer", "noncustomer"}


def test_group_splits_have_their_own_people_counts_and_the_test_set_not_moving_with_training():
    bigger = dataclasses.replace(SMALL, group_train_people=24, group_test_people=10)
    train, test = group_sets(bigger)
    assert len({r.user_id for r in train}) == 24 and len(train) == 24 * SMALL.group_sessions
    assert len({r.user_id for r in test}) == 10
    assert {r.label for r in train} == {"customer", "noncustomer"}
    # more training people leave the test people as they were (its own random stream)
    _, small_test = group_sets(dataclasses.replace(SMALL, group_test_people=10))
    assert [r.session_id for r in small_test] == [r.session_id for r in test]
    assert all(
        np.array_equal(a.events, b.events, equal_nan=True)
        for a, b in zip(small_test, test, strict=True)
    )
