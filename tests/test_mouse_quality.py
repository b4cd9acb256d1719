"""Quality at CI size: the full-size figures are in docs/mouse.md.

The generator runs with its documented population settings (nothing here changes how people
differ); only the sizes are small, so the thresholds are below the full-size targets.
"""

import numpy as np
import pytest
import torch

from scoring.mouse.data import Preprocessing
from scoring.mouse.evaluate import evaluate
from scoring.mouse.model import ModelConfig
from scoring.mouse.synth import SynthConfig, group_sets, owner_sets
from scoring.mouse.train import TrainConfig

MODEL = ModelConfig(width=0.125, size=48)
PREP = Preprocessing(size=48)
TRAIN = TrainConfig(epochs=5, progress=False)
SIZES = SynthConfig(
    accounts=5, outsiders=5, enrol_sessions=3, enrol_events=4000, test_sessions=60,
    test_min_events=300, test_max_events=3000, group_people=16, group_sessions=4, seed=2024,
)  # fmt: skip


@pytest.fixture(autouse=True)
def _threads() -> None:
    torch.set_num_threads(2)


@pytest.mark.slow
def test_owner_separates_impostors() -> None:
    train, tests = owner_sets(SIZES)
    result = evaluate("owner", train, tests, MODEL, PREP, TRAIN)
    m = result.metrics
    assert m["sessions"] == SIZES.test_sessions
    assert m["pooled_auc"] >= 0.80, m
    assert m["trivial_cues_auc"]["events_per_second"] < 0.7


@pytest.mark.slow
def test_group_tells_customers_from_non_customers() -> None:
    train, test = group_sets(SIZES)
    result = evaluate("group", train, test, MODEL, PREP, TRAIN)
    y, s = np.array(result.labels), np.array(result.scores)
    accuracy = float(((s > 0) == (y == 1)).mean())  # logit 0: the trained decision boundary
    assert result.metrics["pooled_auc"] >= 0.80, result.metrics
    assert accuracy >= 0.70, accuracy
