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
    accounts=5, outsiders=5, enrol_sessions=4, enrol_events=4000, test_sessions=240,
    test_min_events=300, test_max_events=3000, seed=2024,
)  # fmt: skip


def auc_standard_error(auc: float, n_pos: int, n_neg: int) -> float:
    """Hanley & McNeil (1982): the standard error of an AUC from ``n_pos`` and ``n_neg``."""
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    var = auc * (1 - auc) + (n_pos - 1) * (q1 - auc**2) + (n_neg - 1) * (q2 - auc**2)
    return float(np.sqrt(var / (n_pos * n_neg)))


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
    # above chance on new sessions even with 16 k enrolment events per account: the AUC's
    # lower 99 % bound (Hanley-McNeil) clears 0.5. A fixed floor (0.6, with 60 test sessions)
    # sat inside the estimate's own noise (SE ~0.07) and failed on another CPU's numerics
    # (0.599); 240 test sessions cost seconds to score. Measured 0.62 and 0.74 on two seeds.
    auc, pos = m["pooled_auc"], m["positives"]
    assert auc - 2.33 * auc_standard_error(auc, pos, m["sessions"] - pos) > 0.5, auc
    assert m["trivial_cues_auc"]["events_per_second"] < 0.7


@pytest.mark.slow
@pytest.mark.xfail(
    reason="target reached at full size only: see docs/mouse.md, Quality", strict=False
)
def test_owner_reaches_the_issue_target_on_new_sessions(owner_eval: Evaluation) -> None:
    assert owner_eval.metrics["pooled_auc"] >= 0.9
