"""Quality at CI size (the larger measured figures are in docs/mouse.md).

The generator runs with its documented population settings (nothing here changes how people
differ); only the sizes are small. What the model reliably achieves at this size is asserted;
the issue's target, reached at full size (pooled AUC 0.972 over 2 M enrolment events) but not
with 60 k, is an expected failure here so the gap stays visible in every test report instead
of being hidden by a lowered threshold.
"""

import numpy as np
import pytest
import torch

from scoring.mouse.data import Preprocessing
from scoring.mouse.evaluate import Evaluation, evaluate
from scoring.mouse.model import ModelConfig
from scoring.mouse.synth import SynthConfig, owner_sets
from scoring.mouse.train import TrainConfig

MODEL = ModelConfig(width=0.125, size=48)
PREP = Preprocessing(size=48)
TRAIN = TrainConfig(epochs=5, progress=False)
SIZES = SynthConfig(
    accounts=5, outsiders=5, enrol_sessions=4, enrol_events=4000, test_sessions=60,
    test_min_events=300, test_max_events=3000, seed=2024,
)  # fmt: skip


@pytest.fixture(scope="module")
def owner_eval() -> Evaluation:
    torch.set_num_threads(2)
    train, tests = owner_sets(SIZES)
    return evaluate("owner", train, tests, MODEL, PREP, TRAIN)


@pytest.mark.slow
def test_owner_model_learns_the_enrolled_accounts(owner_eval: Evaluation) -> None:
    m = owner_eval.metrics
    assert m["sessions"] == SIZES.test_sessions
    assert np.isfinite(owner_eval.scores).all()
    losses = m["training"]["losses"]
    assert losses[-1] < 0.8 * losses[0]
    # above chance on new sessions even with 16 k enrolment events per account (measured
    # 0.62-0.85 over three seeds at this size; the per-account validation AUC, now taken on
    # whole enrolment sessions never trained on, is 0.55-0.82 and too noisy to assert on)
    assert m["pooled_auc"] >= 0.6, m["pooled_auc"]
    assert m["trivial_cues_auc"]["events_per_second"] < 0.7


@pytest.mark.slow
@pytest.mark.xfail(
    reason="target reached at full size only: see docs/mouse.md, Quality", strict=False
)
def test_owner_reaches_the_issue_target_on_new_sessions(owner_eval: Evaluation) -> None:
    assert owner_eval.metrics["pooled_auc"] >= 0.9
