"""The production mouse scorer: used by the worker pipeline and the real-time decision API.

It loads the active models from the model store: the *owner* backbone with its per-account
heads, and the *group* model. A session claiming an enrolled account is scored by that
account's head (mode ``owner``); any other session by the group model (mode ``group``);
with no trained model at all an untrained network scores it (mode ``untrained``) and nothing
is ever flagged on such a score; with an owner model but no group model, a session of an
account without a head is ``not_enrolled`` (score 0, never flagged).

Scores are logits (higher = more likely an impostor / non-customer). ``risk`` is
``sigmoid(score - threshold)``: above 0.5 exactly when the calibrated threshold is crossed.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sqlalchemy.orm import Session, sessionmaker

from renderer.errors import InvalidSession
from renderer.mouse import Cleaned, sanitize
from scoring import model_store
from scoring.mouse import store
from scoring.mouse.data import Preprocessing, scoring_images
from scoring.mouse.model import ModelConfig, build
from scoring.mouse.train import GroupModel, OwnerModel
from scoring.schema import Account

MIN_EVENTS = 2
"""A session needs at least one segment to be scored (``too_few_events``)."""


@dataclass(frozen=True)
class Assessment:
    score: float
    risk: float
    threshold: float
    flagged: bool
    n_windows: int
    mode: str  # owner | group | untrained
    model_version_id: int | None
    version: str | None


def _risk(score: float, threshold: float) -> float:
    z = score - threshold if math.isfinite(threshold) else score
    return float(1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, z)))))


class MouseScorer:
    """Active mouse models, loaded once; thread-safe for scoring."""

    def __init__(
        self, sessions: sessionmaker[Session] | None, model_dir: Path, device: str = "cpu"
    ) -> None:
        self.sessions = sessions
        self.model_dir = model_dir
        self.device = device
        self.owner: OwnerModel | None = None
        self.group: GroupModel | None = None
        self.owner_row: tuple[int, str] | None = None
        self.group_row: tuple[int, str] | None = None
        self._lock = threading.Lock()
        self.load()

    def _path(self, raw: str) -> Path:
        path = Path(raw)
        return path if path.is_absolute() else self.model_dir / path

    def load(self) -> None:
        """(Re)load the active owner and group models; none active → untrained fallback."""
        self.owner = self.group = None
        self.owner_row = self.group_row = None
        if self.sessions is not None:
            with self.sessions() as s:
                owner_row = model_store.active(s, store.PIPELINE, "owner")
                group_row = model_store.active(s, store.PIPELINE, "group")
                if owner_row is not None:
                    loaded = store.load(self._path(owner_row.path))
                    if isinstance(loaded, OwnerModel):
                        self.owner, self.owner_row = loaded, (owner_row.id, owner_row.version)
                if group_row is not None:
                    loaded = store.load(self._path(group_row.path))
                    if isinstance(loaded, GroupModel):
                        self.group, self.group_row = loaded, (group_row.id, group_row.version)
        if self.owner is None and self.group is None:
            torch.manual_seed(0)
            net = build(ModelConfig(n_out=1)).eval()
            self.untrained_model = GroupModel(net, Preprocessing(), math.inf)

    @property
    def untrained(self) -> bool:
        return self.owner is None and self.group is None

    @property
    def prep(self) -> Preprocessing:
        model = self.owner or self.group or self.untrained_model
        return model.prep

    def mode_for(self, account: str | None) -> str:
        """owner (enrolled account), group, untrained (no model at all) or not_enrolled (an
        owner model exists, no group model, and this account has no head)."""
        if self.owner is not None and account and account in self.owner.heads:
            return "owner"
        if self.group is not None:
            return "group"
        return "untrained" if self.untrained else "not_enrolled"

    def images(self, clean: Cleaned) -> torch.Tensor:
        """The session's windows as the model input (K, C, H, W)."""
        if len(clean.events) < MIN_EVENTS:
            raise InvalidSession(
                "a session needs at least two events to be scored", "too_few_events"
            )
        return torch.from_numpy(scoring_images(clean, self.prep))

    def forward(self, batch: torch.Tensor, mode: str | None = None) -> torch.Tensor:
        """(B, D + 1): the owner backbone's embedding (D = 0 without one), then the group
        (or untrained) model's logit.

        ``mode`` (from :meth:`mode_for`) names the one network a single session needs: a live
        decision then pays for one forward pass, not two. ``None`` (a worker batch mixing
        accounts) runs both. A network not run leaves its columns out (owner) or NaN (group);
        :meth:`summarise` reads only the columns of the session's mode.
        """
        batch = batch.to(self.device).contiguous(memory_format=torch.channels_last)
        parts = []
        with self._lock, torch.inference_mode():
            if self.owner is not None and mode in (None, "owner"):
                parts.append(self.owner.model.eval().embed(batch).float())
            group = self.group or (self.untrained_model if self.untrained else None)
            if group is not None and mode != "owner":
                size = group.prep.size
                x = batch if batch.shape[-1] == size else F.interpolate(batch, size=(size, size))
                parts.append(group.model.eval()(x).float())
            else:
                parts.append(torch.full((len(batch), 1), float("nan")))
        return torch.cat(parts, dim=1).cpu()

    def summarise(self, account: str | None, outputs: torch.Tensor) -> Assessment:
        out = outputs.numpy()
        mode = self.mode_for(account)
        if mode == "owner" and self.owner is not None and account:
            head = self.owner.heads[account]
            score = float(head.window_scores(out[:, :-1]).mean())
            threshold, row = head.threshold, self.owner_row
        elif mode == "group" and self.group is not None:
            score, threshold, row = float(out[:, -1].mean()), self.group.threshold, self.group_row
        elif mode == "untrained":
            score, threshold, row = float(out[:, -1].mean()), math.inf, None
        else:  # not enrolled and no group model: no evidence either way
            score, threshold, row = 0.0, math.inf, None
        flagged = mode in ("owner", "group") and score > threshold
        return Assessment(
            score=score,
            risk=_risk(score, threshold),
            threshold=threshold,
            flagged=flagged,
            n_windows=len(out),
            mode=mode,
            model_version_id=row[0] if row else None,
            version=row[1] if row else None,
        )

    def assess(
        self, events: np.ndarray, viewport: tuple[float, float], account: str | None = None
    ) -> Assessment:
        images = self.images(sanitize(events, viewport))
        return self.summarise(account, self.forward(images, self.mode_for(account)))

    def score_events(
        self, events: np.ndarray, viewport: tuple[float, float], account: str | None = None
    ) -> tuple[float, int]:
        """(risk in [0, 1], windows scored) of a live session's events."""
        a = self.assess(events, viewport, account)
        return a.risk, a.n_windows

    def external_id(self, account_id: int | None) -> str | None:
        """The site's own id of an account row (what per-account heads are keyed by)."""
        if account_id is None or self.sessions is None:
            return None
        with self.sessions() as s:
            acct = s.get(Account, account_id)
            return acct.external_id if acct is not None else None

    def for_account(self, account_id: int | None) -> AccountScorer:
        """A scorer bound to one account: ``kind`` is ``account``, ``group`` or ``none``."""
        account = self.external_id(account_id)
        mode = self.mode_for(account)
        kind = {"owner": "account", "group": "group"}.get(mode, "none")
        row = self.owner_row if mode == "owner" else self.group_row
        return AccountScorer(self, account, kind, row[1] if row else None)


@dataclass(frozen=True)
class AccountScorer:
    scorer: MouseScorer
    account: str | None
    kind: str
    version: str | None

    def score_events(self, events: np.ndarray, viewport: tuple[float, float]) -> tuple[float, int]:
        return self.scorer.score_events(events, viewport, self.account)
