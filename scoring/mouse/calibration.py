"""Owner thresholds calibrated to a target false-alarm rate on unseen genuine sessions.

Two measured facts shape it (docs/mouse.md, *Calibration*):

- a session's score is the mean of its windows' scores, so its spread depends on its length:
  one window of 100-600 events scatters far more than the mean of twelve. Thresholds are
  therefore set on held-out genuine *pieces* cut to the lengths that get scored
  (log-uniform between ``min_events`` and ``max_events``), each scored exactly as a page
  session is (its own windows, then the mean);
- every session shifts all of its scores a little (its page, device, the day's habits), and
  an account has only a couple of held-out sessions, far too few to set a 95th percentile
  of new sessions on its own. The *shape* of the spread within a session is pooled over all
  accounts; the *session-to-session* variance is pooled too (a one-way analysis of variance
  of held-out session means), and enters an account's threshold with the error of the
  account's centre, estimated from its ``J`` held-out sessions (about ``1 + 1/J`` times the
  shift variance): a new session differs from that centre by its own shift plus the centre's
  error. An account with fewer held-out sessions thus gets a more cautious threshold,
  without any per-account tail estimate.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from renderer.mouse import Cleaned

NORMAL_NODES = 64
"""Equal-probability nodes standing in for the normal session shift in the convolution."""


@dataclass(frozen=True)
class PieceLengths:
    """Lengths (events) of the page sessions that get scored: log-uniform in [min, max].

    The defaults are the evaluation protocol's page sessions (100-5,000 events, log-uniform);
    a site whose pages are longer or shorter sets its own. Two cuttings of each held-out
    session: on two models trained on 8,000-event sessions the false-alarm rate moved with
    the cutting seed by 0.6-1.5 points (sd) with one cutting and 0.5-0.9 with two."""

    min_events: int = 100
    max_events: int = 5000
    cuttings: int = 2

    def draw(self, rng: np.random.Generator) -> int:
        return int(np.exp(rng.uniform(np.log(self.min_events), np.log(self.max_events))))


def cut_pieces(clean: Cleaned, lengths: PieceLengths, rng: np.random.Generator) -> list[Cleaned]:
    """The session cut ``lengths.cuttings`` times into consecutive pieces of drawn lengths.

    Each cutting covers the session once with other boundaries, so the same events are also
    seen in pieces of other lengths. A piece that would run past the end ends at the end
    instead (overlapping the one before it), so every drawn length is kept; a length above
    the session's own is cut down to the whole session."""
    n = len(clean.events)
    pieces = []
    for _ in range(lengths.cuttings):
        start = 0
        while start < n:
            k = min(lengths.draw(rng), n)
            a = min(start, n - k)
            pieces.append(Cleaned(clean.events[a : a + k], clean.viewport))
            start = a + k
    return [p for p in pieces if len(p.events) >= 2]


@dataclass(frozen=True)
class SessionShift:
    """How far one session's scores sit from its account's centre, pooled over accounts."""

    variance: float  # of a session's own mean about its account's centre
    mean_noise: float  # of a held-out session's measured mean, from its finite pieces

    def predictive(self, held_out: int) -> float:
        """Variance of a new session's shift from a centre estimated on ``held_out`` sessions:
        its own shift plus the centre's error (those sessions' shifts and measuring noise)."""
        return self.variance + (self.variance + self.mean_noise) / held_out


def session_shift(sessions: dict[str, list[np.ndarray]]) -> SessionShift:
    """One-way analysis of variance of the held-out sessions' mean scores within accounts,
    over the accounts with two or more held-out sessions (no shift when none has).

    The spread of measured session means is the true shifts' plus each mean's noise; the
    noise is estimated as if a session's pieces were independent (pieces of different
    cuttings overlap, so it is underestimated and the shift, if anything, overestimated)."""
    squares, noise, dof = 0.0, 0.0, 0
    for scores in sessions.values():
        means = np.array([s.mean() for s in scores])
        if len(means) < 2:
            continue
        squares += float(((means - means.mean()) ** 2).sum())
        noise += (len(means) - 1) * float(np.mean([_mean_noise(s) for s in scores]))
        dof += len(means) - 1
    if not dof:
        return SessionShift(0.0, 0.0)
    return SessionShift(max(0.0, (squares - noise) / dof), noise / dof)


def _mean_noise(scores: np.ndarray) -> float:
    return float(scores.var(ddof=1) / len(scores)) if len(scores) > 1 else 0.0


def pooled_thresholds(sessions: dict[str, list[np.ndarray]], target_far: float) -> dict[str, float]:
    """Per account, the score a new genuine session exceeds with probability ``target_far``.

    ``sessions[account]`` holds one array per held-out session: its pieces' scores. A new
    session's score is modelled as centre + session shift + within-session deviation; the
    deviations are the pooled empirical ones (all accounts' pieces about their own session's
    mean), the shift is normal with the pooled variance (:func:`session_shift`) plus the
    error of the account's centre, and the threshold is the ``1 - target_far`` quantile of
    their sum, added to the account's centre."""
    kept = {u: [s for s in v if len(s)] for u, v in sessions.items()}
    kept = {u: v for u, v in kept.items() if v}
    if not kept:
        return {}
    within = np.concatenate([s - s.mean() for v in kept.values() for s in v])
    shift = session_shift(kept)
    normal = NormalDist()
    nodes = np.array([normal.inv_cdf((i + 0.5) / NORMAL_NODES) for i in range(NORMAL_NODES)])
    by_count: dict[int, float] = {}
    out = {}
    for user, scores in kept.items():
        j = len(scores)
        if j not in by_count:
            sd = np.sqrt(shift.predictive(j))
            spread = np.add.outer(within, sd * nodes).ravel()
            by_count[j] = float(np.quantile(spread, 1 - target_far))
        centre = float(np.mean([s.mean() for s in scores]))
        out[user] = centre + by_count[j]
    return out
