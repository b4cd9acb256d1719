"""The synthetic card generator: modes, kinds, imbalance, and no class given away by cheap cues."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import cross_val_score

from scoring.pump import synth
from scoring.pump.cards import MAX_POINTS, MIN_POINTS, validate


def test_at_least_ten_modes_each_generated() -> None:
    assert len(synth.MODES) >= 10
    assert set(synth.ALL_MODES) == set(synth.SHAPES)
    rng = np.random.default_rng(3)
    for mode in synth.ALL_MODES:
        for kind in ("surface", "downhole"):
            card = synth.synth_card(rng, mode, kind=kind)
            assert card.label == mode and card.kind == kind
            # every generated card is a valid card for the importer
            validate(card.card_id, card.position, card.load, kind=card.kind)
            assert MIN_POINTS <= card.n_points <= MAX_POINTS


def test_seeded_and_balanced() -> None:
    a = synth.synth_set(44, seed=5)
    b = synth.synth_set(44, seed=5)
    assert [c.card_id for c in a] == [c.card_id for c in b]
    assert all(np.array_equal(p.load, q.load) for p, q in zip(a, b, strict=True))
    counts = synth.class_counts(44)
    assert set(counts.values()) == {4} and sum(counts.values()) == 44


def test_realistic_imbalance() -> None:
    counts = synth.class_counts(1000, imbalance=True)
    assert sum(counts.values()) == 1000
    assert counts["gas_interference"] > 10 * counts["full_pump"]
    assert min(counts.values()) >= 1


def test_mixed_kind_gives_both() -> None:
    kinds = {c.kind for c in synth.synth_set(30, seed=1, kind="mixed")}
    assert kinds == {"surface", "downhole"}


def _cheap_features(card: synth.Card) -> list[float]:
    return [
        card.n_points,
        np.log10(np.ptp(card.load)),
        np.log10(np.ptp(card.position)),
        np.log10(abs(card.load.mean()) + 1e-9),
        np.log10(card.position.max()),
    ]


# A stuck plunger's scale is its physics, not the instrument's: the downhole stroke is ~0 by
# definition and the beam unit still drives the polished rod through the whole stroke, so the
# load range is the rod stretch k·S (several Fo). Normalised images never see either.
SCALE_IS_THE_MODE = ("stuck_plunger",)


@pytest.mark.parametrize("kind", ["surface", "downhole"])
def test_cheap_cues_do_not_give_the_class_away(kind: str) -> None:
    modes = tuple(m for m in synth.MODES if m not in SCALE_IS_THE_MODE)
    cards = synth.synth_set(440, seed=11, kind=kind, modes=modes)
    x = np.array([_cheap_features(c) for c in cards])
    y = np.array([modes.index(c.label or "") for c in cards])
    forest = RandomForestClassifier(n_estimators=60, random_state=0)
    accuracy = cross_val_score(forest, x, y, cv=4).mean()
    chance = 1 / len(modes)
    # point count, units, absolute load and offsets carry (almost) nothing about the mode
    assert accuracy < 2.2 * chance, accuracy


def test_a_stuck_plunger_still_strokes_the_polished_rod() -> None:
    # the beam unit's linkage sets the polished-rod stroke; what the plunger does not follow
    # stretches the rods, so the loads follow position at the rod stiffness
    rng = np.random.default_rng(4)
    for _ in range(20):
        stroke, well = synth._stroke(rng, 400), synth._well(rng)
        position, load = synth._downhole(rng, "stuck_plunger", stroke, well)
        assert np.ptp(position) <= 0.08 * well.stroke_m
        rod, _ = synth._surface(rng, stroke, well, position, load)
        assert np.ptp(rod) == pytest.approx(well.stroke_m, rel=1e-3)
        slope = np.ptp(load) / (well.stroke_m - np.ptp(position))
        assert slope == pytest.approx(well.stiffness_kn_per_m, rel=1e-3)
