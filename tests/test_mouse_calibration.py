"""Owner calibration: thresholds that hold the target false-alarm rate on *new* genuine sessions.

The statistics are checked on a simulated population whose truth is known (fast); the whole
chain (backbone, heads, held-out pieces, thresholds) on a small trained model against fresh
genuine sessions from the generator (slow).
"""

import numpy as np
import pytest
import torch

from renderer.mouse import Cleaned
from scoring.mouse.calibration import PieceLengths, cut_pieces, pooled_thresholds
from scoring.mouse.data import Preprocessing
from scoring.mouse.evaluate import score_record
from scoring.mouse.metrics import false_alarm_by_windows
from scoring.mouse.model import ModelConfig
from scoring.mouse.synth import SynthConfig, owner_sets
from scoring.mouse.train import TrainConfig, train_owner

TARGET = 0.05


def _piece_scores(
    rng: np.random.Generator, centre: float, scale: float, shift: float, count: int
) -> np.ndarray:
    """Scores of ``count`` pieces of one session, built the way page sessions are scored: a
    log-uniform length, windows of about 400 events, the mean of heavy-tailed window scores
    whose spread grows as windows get shorter."""
    n = np.exp(rng.uniform(np.log(100), np.log(5000), size=count))
    k = np.maximum(1, np.round(n / 400))
    windows = rng.standard_t(5, size=(count, 13)) * (np.arange(13) < k[:, None])
    noise = windows.sum(axis=1) / k * np.sqrt(400 / (n / k))
    return centre + shift + scale * noise


def _population(
    rng: np.random.Generator, accounts: int, held_out: int, shift_sd: float = 1.2
) -> tuple[dict[str, list[np.ndarray]], dict[str, np.ndarray]]:
    """Held-out pieces (``held_out`` sessions of 30 pieces per account) and 60 fresh genuine
    sessions per account, each a new session with its own shift."""
    held, fresh = {}, {}
    for a in range(accounts):
        centre, scale = rng.normal(-4, 1.5), rng.uniform(0.8, 1.25)
        held[f"a{a}"] = [
            _piece_scores(rng, centre, scale, rng.normal(0, shift_sd), 30) for _ in range(held_out)
        ]
        fresh[f"a{a}"] = np.concatenate(
            [_piece_scores(rng, centre, scale, rng.normal(0, shift_sd), 1) for _ in range(60)]
        )
    return held, fresh


def _far(thresholds: dict[str, float], fresh: dict[str, np.ndarray]) -> float:
    return float(np.mean(np.concatenate([fresh[u] > thresholds[u] for u in fresh])))


def test_pooled_thresholds_hold_the_target_on_new_sessions():
    held, fresh = _population(np.random.default_rng(0), accounts=300, held_out=2)
    far = _far(pooled_thresholds(held, TARGET), fresh)
    # 18,000 fresh sessions (binomial sd 0.16 points); over seeds 0-11 the false-alarm rate
    # was 4.1-5.9 % (mean 4.9 %, sd 0.5): the thresholds' own error (the session-shift
    # variance and each account's centre are estimates) and the model's approximations (normal
    # shifts, one shape of spread while accounts' spreads differ by up to 1.6x)
    assert far == pytest.approx(TARGET, abs=0.015), far
    # what the first calibration did, each account's own quantile of its two held-out
    # sessions, misses new sessions' shifts: 13-14 % here (seeds 0-3)
    naive = {u: float(np.quantile(np.concatenate(v), 1 - TARGET)) for u, v in held.items()}
    assert _far(naive, fresh) > 0.075


def test_fewer_held_out_sessions_give_a_more_cautious_threshold():
    rng = np.random.default_rng(1)
    held, _ = _population(rng, accounts=20, held_out=2)
    one = {u: v[:1] if i % 2 else v for i, (u, v) in enumerate(held.items())}
    thr = pooled_thresholds(one, TARGET)
    margins = {u: thr[u] - np.mean([s.mean() for s in v]) for u, v in one.items()}
    assert margins["a1"] > margins["a0"]  # a1 kept one session, a0 two
    assert len({round(m, 9) for m in margins.values()}) == 2  # one margin per session count


def test_without_a_second_held_out_session_only_the_within_session_spread_is_used():
    rng = np.random.default_rng(2)
    held = {"a": [rng.normal(size=200)], "b": [rng.normal(size=200) + 3]}
    thr = pooled_thresholds(held, TARGET)
    within = np.concatenate([s - s.mean() for v in held.values() for s in v])
    q = np.quantile(within, 1 - TARGET)
    assert thr["a"] == pytest.approx(held["a"][0].mean() + q)
    assert thr["b"] == pytest.approx(held["b"][0].mean() + q)
    assert pooled_thresholds({}, TARGET) == {}


def test_pieces_cover_the_session_at_the_scored_lengths():
    events = np.c_[np.arange(20_000.0), np.zeros((20_000, 3))]
    lengths = PieceLengths(min_events=100, max_events=5000, cuttings=3)
    pieces = cut_pieces(Cleaned(events, (100.0, 100.0)), lengths, np.random.default_rng(0))
    sizes = np.array([len(p.events) for p in pieces])
    assert sizes.min() >= 100 and sizes.max() <= 5000
    # log-uniform: the median length is near the geometric mean of the range (707)
    assert 450 < np.median(sizes) < 1100, np.median(sizes)
    # each cutting covers every event once, up to the last piece's overlap with the one before
    assert sizes.sum() >= 3 * 20_000
    starts = [int(p.events[0, 0]) for p in pieces]
    assert starts.count(0) == 3
    # a session shorter than a drawn length is one whole piece
    short = cut_pieces(Cleaned(events[:150], (100.0, 100.0)), lengths, np.random.default_rng(0))
    assert {len(p.events) for p in short} <= set(range(100, 151))


# -- the whole chain, on a small trained model ---------------------------------------------

SIZES = SynthConfig(accounts=6, outsiders=6, enrol_sessions=10, enrol_events=3000, seed=7)


@pytest.mark.slow
def test_calibrated_thresholds_on_fresh_genuine_sessions():
    torch.set_num_threads(2)
    train, _ = owner_sets(SIZES)
    model = train_owner(
        train,
        ModelConfig(width=0.125, size=48),
        Preprocessing(size=48),
        TrainConfig(epochs=5, progress=False),
    )
    fresh_cfg = SynthConfig(**{**SIZES.__dict__, "test_sessions": 400, "impostor_fraction": 0.0})
    _, fresh = owner_sets(fresh_cfg)
    flagged = [s.score > s.threshold for s in (score_record(model, r) for r in fresh)]
    far = float(np.mean(flagged))
    assert model.metrics["calibration_pieces"] > 6 * 2 * 3
    # 400 fresh sessions (binomial sd 1.1 points) and thresholds set from 12 held-out
    # sessions of 3,000 events, so the session-shift variance rests on 6 degrees of freedom:
    # measured 2.5 % here (seed 7), 4.75 % and 10.0 % with generator seeds 8 and 9; the
    # full-size figures (4.1 %; medium 3.7-4.8 %) are in docs/mouse.md
    assert 0.01 <= far <= 0.12, far


def test_false_alarms_are_reported_by_session_length_in_windows():
    labels = np.array([0, 0, 0, 0, 0, 1])
    flagged = np.array([True, False, False, True, False, True])
    windows = np.array([1, 1, 2, 3, 12, 1])
    out = false_alarm_by_windows(labels, flagged, windows)
    assert out == {
        "1": {"genuine": 2, "false_alarm_rate": 0.5},
        "2-3": {"genuine": 2, "false_alarm_rate": 0.5},
        "4+": {"genuine": 1, "false_alarm_rate": 0.0},
    }


def test_calibration_leaves_the_backbone_and_the_heads_unchanged():
    """Pieces are cut from their own random stream: how thresholds are set cannot change a
    score, so the AUC is the same whatever the calibration settings."""
    torch.set_num_threads(1)
    train, _ = owner_sets(
        SynthConfig(accounts=3, outsiders=1, enrol_sessions=5, enrol_events=1500, seed=3)
    )
    model_cfg, prep = ModelConfig(width=0.0625, size=32), Preprocessing(size=32)
    models = [
        train_owner(
            train,
            model_cfg,
            prep,
            TrainConfig(epochs=1, progress=False, calib_lengths=PieceLengths(cuttings=c)),
        )
        for c in (1, 3)
    ]
    a, b = models
    for (name, x), y in zip(
        a.model.state_dict().items(), b.model.state_dict().values(), strict=True
    ):
        assert torch.equal(x, y), name
    for user, head in a.heads.items():
        np.testing.assert_array_equal(head.weight, b.heads[user].weight)
        assert head.bias == b.heads[user].bias
    assert a.metrics["calibration_pieces"] < b.metrics["calibration_pieces"]
