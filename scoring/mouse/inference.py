"""The production mouse scorer: used by the worker pipeline and the real-time decision API.

It loads the active models from the model store: the *owner* backbone with its per-account
heads, and the *group* model. A session claiming an enrolled account is scored by that
account's head (mode ``owner``); any other session by the group model (mode ``group``);
with no trained model at all an untrained network scores it (mode ``untrained``) and nothing
is ever flagged on such a score; with an owner model but no group model, a session of an
account without a head is ``not_enrolled`` (score 0, never flagged).

Scores are logits (higher = more likely an impostor / non-customer). ``risk`` is
``sigmoid(score - threshold)``: above 0.5 exactly when the calibrated threshold is crossed.

Each network scores the windows it was trained on: its checkpoint's :class:`Preprocessing`
(:meth:`MouseScorer.prep_for`) sets a session's window length and count for its mode (the
group model's windows are page-visit scale, the owner model's shorter).
"""

from __future__ import annotations

import dataclasses
import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from torch.nn.utils.fusion import fuse_conv_bn_eval

from renderer.errors import InvalidSession
from renderer.mouse import Cleaned, draw_channels, sanitize
from scoring import model_store
from scoring.mouse import store
from scoring.mouse.data import Preprocessing, scoring_images
from scoring.mouse.live import (
    WindowCache,
    live_bounds,
    live_view_bounds,
    pick_evenly,
    window_digest,
)
from scoring.mouse.model import ModelConfig, build
from scoring.mouse.train import GroupModel, OwnerModel
from scoring.schema import Account, Site

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


class LiveScore(NamedTuple):
    """A live session's score: risk in [0, 1], windows scored, windows rendered and run for
    this call (the others came from the window cache)."""

    risk: float
    windows: int
    rendered: int


def fold_batch_norm(net: torch.nn.Module) -> None:
    """Fold every eval-mode batch norm that follows a convolution into that convolution, in
    place: the same function to float rounding, with one pass over each activation less
    (about a fifth of a forward pass here). For inference copies only: training needs them."""
    for seq in [m for m in net.modules() if isinstance(m, torch.nn.Sequential)]:
        for i in range(len(seq) - 1):
            conv, bn = seq[i], seq[i + 1]
            if isinstance(conv, torch.nn.Conv2d) and isinstance(bn, torch.nn.BatchNorm2d):
                seq[i] = fuse_conv_bn_eval(conv.eval(), bn.eval())
                seq[i + 1] = torch.nn.Identity()
    net.to(memory_format=torch.channels_last)


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
        for model in (self.owner, self.group, getattr(self, "untrained_model", None)):
            if model is not None:
                fold_batch_norm(model.model.eval())
        self.window_cache = WindowCache()  # outputs of the models just loaded only

    @property
    def untrained(self) -> bool:
        return self.owner is None and self.group is None

    def prep_for(self, mode: str) -> Preprocessing:
        """The preprocessing of the network that scores ``mode`` (:meth:`mode_for`): the owner
        model's for ``owner``, the group (or untrained) model's for the others."""
        if mode == "owner" and self.owner is not None:
            return self.owner.prep
        model = self.group or self.owner or self.untrained_model
        return model.prep

    @property
    def image_size(self) -> int:
        """Side of the worker's images, the same for every mode so that one batch can mix
        modes: the owner network's input (the group network's is resized to it in
        :meth:`forward` when they differ)."""
        return (self.owner or self.group or self.untrained_model).prep.size

    def mode_for(self, account: str | None) -> str:
        """owner (enrolled account), group, untrained (no model at all) or not_enrolled (an
        owner model exists, no group model, and this account has no head)."""
        if self.owner is not None and account and account in self.owner.heads:
            return "owner"
        if self.group is not None:
            return "group"
        return "untrained" if self.untrained else "not_enrolled"

    def images(self, clean: Cleaned, mode: str) -> torch.Tensor:
        """The session's windows for ``mode``'s network as the model input (K, C, H, W), at
        :attr:`image_size`."""
        if len(clean.events) < MIN_EVENTS:
            raise InvalidSession(
                "a session needs at least two events to be scored", "too_few_events"
            )
        prep = dataclasses.replace(self.prep_for(mode), size=self.image_size)
        return torch.from_numpy(scoring_images(clean, prep))

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
        # the networks were put in eval mode once, at load: .eval() walks every module, and
        # a live decision runs one window
        with self._lock, torch.inference_mode():
            if self.owner is not None and mode in (None, "owner"):
                parts.append(self.owner.model.embed(batch).float())
            group = self.group or (self.untrained_model if self.untrained else None)
            if group is not None and mode != "owner":
                size = group.prep.size
                x = batch if batch.shape[-1] == size else F.interpolate(batch, size=(size, size))
                parts.append(group.model(x).float())
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
        mode = self.mode_for(account)
        images = self.images(sanitize(events, viewport), mode)
        return self.summarise(account, self.forward(images, mode))

    def _live_windows(
        self, clean: Cleaned, mode: str, digest: bool = True
    ) -> tuple[list[tuple[int, int]], list[bytes]]:
        """Bounds and (``digest``) digests of the session's live windows for ``mode``'s
        network (:mod:`scoring.mouse.live`)."""
        if len(clean.events) < MIN_EVENTS:
            raise InvalidSession(
                "a session needs at least two events to be scored", "too_few_events"
            )
        prep = self.prep_for(mode)
        bounds = live_view_bounds(len(clean.events), prep.window_events, prep.window_views)
        return bounds, [window_digest(clean, a, b) for a, b in bounds] if digest else []

    def _run_windows(
        self, clean: Cleaned, bounds: list[tuple[int, int]], digests: list[bytes], mode: str
    ) -> list[np.ndarray]:
        """Render and run the windows ``bounds`` for ``mode``'s network; cache the outputs."""
        side = self.prep_for(mode).size
        size = (side, side)
        images = np.stack(
            [draw_channels(Cleaned(clean.events[a:b], clean.viewport), size) for a, b in bounds]
        )
        fresh = self.forward(torch.from_numpy(images), mode).numpy()
        rows = []
        for digest, row in zip(digests, fresh, strict=True):
            row = row.copy()  # not a view: an evicted row must not pin its whole batch
            self.window_cache.put(mode, digest, row)
            rows.append(row)
        return rows

    def live_outputs(self, clean: Cleaned, mode: str) -> tuple[torch.Tensor, int]:
        """:meth:`forward` outputs (K, …) of the session's live windows
        (:mod:`scoring.mouse.live`) for the network ``mode`` needs, and how many of them had to
        be rendered and run: the others come from :attr:`window_cache`."""
        bounds, _ = self._live_windows(clean, mode, digest=False)
        bounds = pick_evenly(bounds, self.prep_for(mode).max_windows)
        digests = [window_digest(clean, a, b) for a, b in bounds]
        rows = [self.window_cache.get(mode, d) for d in digests]
        todo = [i for i, row in enumerate(rows) if row is None]
        if todo:
            fresh = self._run_windows(
                clean, [bounds[i] for i in todo], [digests[i] for i in todo], mode
            )
            for i, row in zip(todo, fresh, strict=True):
                rows[i] = row
        filled = [row for row in rows if row is not None]  # all of them by now
        return torch.from_numpy(np.stack(filled)), len(todo)

    def prescore_live(
        self,
        events: np.ndarray,
        viewport: tuple[float, float],
        account: str | None = None,
        limit: int = 8,
    ) -> tuple[int, int]:
        """Score a growing session's *complete* windows (every live window but its last block,
        which can still change) that are not cached yet, at most ``limit`` of them, so that a later
        :meth:`score_live` finds them in :attr:`window_cache`. Returns (rendered, still to do).
        Every complete window is scored, not only those :func:`pick_evenly` would pick today:
        which ones it picks depends on the session's final length."""
        mode = self.mode_for(account)
        if mode not in ("owner", "group"):
            return 0, 0
        clean = sanitize(events, viewport)
        if len(clean.events) < MIN_EVENTS:
            return 0, 0
        bounds, digests = self._live_windows(clean, mode)
        growing = live_bounds(len(clean.events), self.prep_for(mode).window_events)[-1]
        todo = [
            i
            for i, bound in enumerate(bounds)
            if bound != growing and not self.window_cache.has(mode, digests[i])
        ]
        now = todo[: max(0, limit)]
        if now:
            self._run_windows(clean, [bounds[i] for i in now], [digests[i] for i in now], mode)
        return len(now), len(todo) - len(now)

    def score_live(
        self, events: np.ndarray, viewport: tuple[float, float], account: str | None = None
    ) -> LiveScore:
        """A live session's events scored on its stable windows, reusing the outputs of the
        windows already scored (:meth:`live_outputs`)."""
        mode = self.mode_for(account)
        outputs, rendered = self.live_outputs(sanitize(events, viewport), mode)
        a = self.summarise(account, outputs)
        return LiveScore(a.risk, a.n_windows, rendered)

    def score_events(
        self, events: np.ndarray, viewport: tuple[float, float], account: str | None = None
    ) -> tuple[float, int]:
        """(risk in [0, 1], windows scored) of a live session's events (:meth:`score_live`)."""
        live = self.score_live(events, viewport, account)
        return live.risk, live.windows

    def head_key(self, account_id: int | None) -> str | None:
        """The per-account head key of an account row: site-qualified, so the same external
        id on two sites never shares a head (see :mod:`scoring.mouse.store`)."""
        if account_id is None or self.sessions is None:
            return None
        with self.sessions() as s:
            acct = s.get(Account, account_id)
            return self._head_key(s, acct) if acct is not None else None

    def site_head_key(self, site_id: int, external_id: str | None) -> str | None:
        """:meth:`head_key` of a site's account given by its external id (worker sessions)."""
        if not external_id or self.sessions is None:
            return None
        with self.sessions() as s:
            acct = s.scalars(
                select(Account).where(
                    Account.site_id == site_id, Account.external_id == external_id
                )
            ).first()
            if acct is not None:
                return self._head_key(s, acct)
            site = s.get(Site, site_id)
            return store.account_key(site.key, external_id) if site is not None else None

    def _head_key(self, s: Session, acct: Account) -> str:
        heads = self.owner.heads if self.owner is not None else {}
        return store.head_key(s, acct, heads, self.owner_row[0] if self.owner_row else None)

    def for_account(self, account_id: int | None) -> AccountScorer:
        """A scorer bound to one account: ``kind`` is ``account``, ``group`` or ``none``."""
        account = self.head_key(account_id)
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

    def score_events(self, events: np.ndarray, viewport: tuple[float, float]) -> LiveScore:
        return self.scorer.score_live(events, viewport, self.account)

    @property
    def window_events(self) -> int:
        """Events per live window of this account's network (when the pre-scorer finds a
        window complete)."""
        return self.scorer.prep_for(self.scorer.mode_for(self.account)).window_events

    def prescore_events(
        self, events: np.ndarray, viewport: tuple[float, float], limit: int
    ) -> tuple[int, int]:
        """:meth:`MouseScorer.prescore_live` for this account: (rendered, still to do)."""
        return self.scorer.prescore_live(events, viewport, self.account, limit)
