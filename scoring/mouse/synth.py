"""A synthetic mouse-dynamics population: people with subtly different habits.

Each person has :class:`Habits` drawn from a population distribution; each session perturbs
them a little (day-to-day variation). A session is a sequence of aimed movements to targets
laid out on a page:

- duration by Fitts' law ``a + b·log2(D/W + 1)`` (a, b per person);
- progress along the movement follows a regularised incomplete beta profile whose shape
  (α, β) sets where the velocity peaks and how peaked it is;
- the path bows sideways by a per-person curvature that depends on movement direction;
- some movements overshoot and are corrected by a short second sub-movement, some pass
  through a hesitation waypoint (searching);
- hand tremor is a per-person band of 6–12 Hz oscillation plus sensor noise;
- dwell before a click, press duration and pauses between movements are per-person
  log-normals.

What a session *does not* reveal about its person: the sampling rate (60–200 Hz, from the
device), the viewport, the page layout and the session length are drawn the same way for
everyone, so events per second and length alone carry almost nothing (checked in tests and
reported in docs/mouse.md). Dirty rows (65535 coordinates, duplicate timestamps, swapped
rows) are injected at realistic rates so training sees what production sees.

Groups (customers vs non-customers) differ in *familiarity with the site*, not in motor
habits (both groups are drawn from the same population of people): each session has a
familiarity, the probability that the visitor knows where the next control is. A known
target is acquired by one aimed movement (plus the person's own overshoot and hesitation
habits). An unknown one is searched for first: the pointer visits one to three candidate
controls and rests briefly on each (hover-reading a label) before the aimed movement to the
target. Customers know most of the site (familiarity 0.7–1.0: a page they rarely use still
needs searching); non-customers are on a first or second visit (0.1–0.6: common controls are
where they expect them). Account owners in the *owner* sets are customers, and so are the
impostors' sessions there (familiarity is not an impostor cue in that task). Idle time
between movements and the device's sampling rate are drawn the same way in both groups, so
events per second and session length stay near chance for the group task too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from scipy.special import betainc

from renderer.mouse import LEFT_DOWN, LEFT_UP, MOVE, RIGHT_DOWN, RIGHT_UP
from scoring.sessionfile import SessionRecord

VIEWPORTS = ((1920, 1080), (1536, 864), (1440, 900), (1366, 768), (2560, 1440), (1280, 720))


@dataclass(frozen=True)
class Habits:
    """One person's movement habits."""

    fitts_a: float  # ms
    fitts_b: float  # ms per bit
    alpha: float  # velocity-profile shape
    beta: float
    curv_bias: float  # sideways bow / distance
    curv_dir: float  # amplitude of the direction-dependent bow
    curv_phase: float  # rad
    curv_sd: float
    overshoot_p: float
    overshoot_mag: float  # fraction of distance
    search_p: float  # probability of a hesitation waypoint
    pause_mu: float  # log ms between movements
    dwell_mu: float  # log ms before a click
    press_mu: float  # log ms button held
    tremor_amp: float  # px
    tremor_hz: float
    click_p: float
    right_p: float


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def draw_habits(rng: np.random.Generator) -> Habits:
    """A person from the population."""
    return Habits(
        fitts_a=_u(rng, 60, 220),
        fitts_b=_u(rng, 90, 240),
        alpha=_u(rng, 1.7, 3.6),
        beta=_u(rng, 1.9, 4.0),
        curv_bias=_u(rng, -0.12, 0.12),
        curv_dir=_u(rng, 0.0, 0.12),
        curv_phase=_u(rng, -np.pi, np.pi),
        curv_sd=_u(rng, 0.02, 0.08),
        overshoot_p=_u(rng, 0.05, 0.55),
        overshoot_mag=_u(rng, 0.02, 0.12),
        search_p=_u(rng, 0.02, 0.3),
        pause_mu=float(np.log(_u(rng, 120, 900))),
        dwell_mu=float(np.log(_u(rng, 60, 450))),
        press_mu=float(np.log(_u(rng, 55, 170))),
        tremor_amp=_u(rng, 0.15, 1.6),
        tremor_hz=_u(rng, 6.0, 12.0),
        click_p=_u(rng, 0.3, 0.7),
        right_p=_u(rng, 0.02, 0.15),
    )


def perturb(h: Habits, rng: np.random.Generator, amount: float = 0.06) -> Habits:
    """The same person on another day: every habit multiplied by about 1 ± ``amount``."""
    changes = {}
    for f in dataclasses.fields(h):
        value = getattr(h, f.name)
        if f.name.endswith("_mu"):
            changes[f.name] = value + rng.normal(0, amount * 2)
        elif f.name == "curv_phase":
            changes[f.name] = value + rng.normal(0, amount * 3)
        else:
            changes[f.name] = value * float(np.exp(rng.normal(0, amount)))
    return dataclasses.replace(h, **changes)


@dataclass
class _Page:
    viewport: tuple[int, int]
    rate_hz: float
    anchors: np.ndarray  # (K, 2) where the page's controls are
    familiarity: float = 1.0  # probability that the visitor knows where the next target is


CUSTOMER_FAMILIARITY = (0.7, 1.0)
NONCUSTOMER_FAMILIARITY = (0.1, 0.6)
READ_MEDIAN_MS = 450.0
"""Median rest on a candidate item while searching (reading its label)."""


def _new_page(rng: np.random.Generator, familiarity: float = 1.0) -> _Page:
    vw, vh = VIEWPORTS[rng.integers(len(VIEWPORTS))]
    anchors = rng.uniform([0.05 * vw, 0.05 * vh], [0.95 * vw, 0.95 * vh], size=(8, 2))
    return _Page((vw, vh), float(rng.uniform(60, 200)), anchors, familiarity)


def _times(duration: float, rate_hz: float, rng: np.random.Generator) -> np.ndarray:
    """Sample instants in (0, duration] at a jittery device rate."""
    n = max(2, int(duration * rate_hz / 1000) + 2)
    steps = (1000.0 / rate_hz) * rng.uniform(0.75, 1.25, n)
    t = np.cumsum(steps)
    return t[t <= duration] if t[0] <= duration else t[:1]


def _stroke(
    start: np.ndarray,
    end: np.ndarray,
    duration: float,
    h: Habits,
    page: _Page,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """One aimed sub-movement: times (ms from its start) and positions."""
    t = _times(duration, page.rate_hz, rng)
    tau = np.clip(t / duration, 0.0, 1.0)
    progress = betainc(h.alpha, h.beta, tau)
    vec = end - start
    dist = float(np.hypot(*vec)) + 1e-9
    normal = np.array([-vec[1], vec[0]]) / dist
    angle = float(np.arctan2(vec[1], vec[0]))
    bow = h.curv_bias + h.curv_dir * np.cos(angle - h.curv_phase) + rng.normal(0, h.curv_sd)
    side = bow * dist * np.sin(np.pi * progress)
    pos = start + progress[:, None] * vec + side[:, None] * normal
    phase = rng.uniform(0, 2 * np.pi, 2)
    tremor = h.tremor_amp * np.sin(2 * np.pi * h.tremor_hz * t[:, None] / 1000 + phase)
    noise = rng.normal(0, 0.3, pos.shape)
    return t, pos + tremor + noise


def _fitts(h: Habits, dist: float, width: float, rng: np.random.Generator) -> float:
    base = h.fitts_a + h.fitts_b * np.log2(dist / width + 1)
    return float(base * np.exp(rng.normal(0, 0.12)))


def _search(page: _Page, pos: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """Where the pointer goes while looking for a target whose place the visitor does not
    know (nothing when it is known), as (x, y, slow-down, rest ms) rows.

    Search-and-point, as novices do it: a visually guided move to a likely region (slower than
    an aimed movement: the pointer follows the eyes), then a scan over neighbouring items along
    a menu or list axis, short slow steps with a rest on each item to read it."""
    if page.familiarity >= 1.0 or rng.random() < page.familiarity:
        return []
    region = page.anchors[rng.integers(len(page.anchors))] + rng.normal(0, 40, 2)
    stops = [np.r_[region, rng.uniform(1.2, 1.6), 0.0]]
    axis = np.array([0.0, 1.0]) if rng.random() < 0.7 else np.array([1.0, 0.0])
    direction = rng.choice([-1.0, 1.0])
    spot = region
    for _ in range(int(rng.integers(1, 5))):
        spot = spot + direction * axis * rng.uniform(30, 120) + rng.normal(0, 5, 2)
        rest = READ_MEDIAN_MS * float(np.exp(rng.normal(0, 0.5)))
        stops.append(np.r_[spot, rng.uniform(1.2, 1.8), rest])
    return stops


def _movement(
    pos: np.ndarray, h: Habits, page: _Page, rng: np.random.Generator
) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """An aimed movement to a target near one of the page's controls, with its sub-moves
    (after a search when the target's place is not known)."""
    target = page.anchors[rng.integers(len(page.anchors))] + rng.normal(0, 40, 2)
    width = float(rng.uniform(16, 120))
    times, points = [], []
    for x, y, slow, rest in _search(page, pos, rng):
        spot = np.array([x, y])
        d = float(np.hypot(*(spot - pos)))
        t, p = _stroke(pos, spot, slow * _fitts(h, max(d, 1.0), width, rng), h, page, rng)
        pos = p[-1]
        if rest > 0:  # the pointer rests on the item: one still sample when it moves on
            t, p = np.r_[t, t[-1] + rest], np.vstack([p, pos])
        times.append(t)
        points.append(p)
    waypoints = []
    if rng.random() < h.search_p:
        waypoints.append(pos + (target - pos) * rng.uniform(0.3, 0.7) + rng.normal(0, 80, 2))
    dist = float(np.hypot(*(target - pos)))
    if rng.random() < h.overshoot_p:
        over = (target - pos) / (dist + 1e-9) * dist * h.overshoot_mag * rng.uniform(0.5, 1.5)
        waypoints.append(target + over)
    waypoints.append(target)
    for wp in waypoints:
        d = float(np.hypot(*(wp - pos)))
        t, p = _stroke(pos, wp, _fitts(h, max(d, 1.0), width, rng), h, page, rng)
        times.append(t)
        points.append(p)
        pos = p[-1]
    return times, points, pos


def _click(h: Habits, rng: np.random.Generator) -> tuple[float, float, int, int]:
    dwell = float(np.exp(rng.normal(h.dwell_mu, 0.35)))
    press = float(np.exp(rng.normal(h.press_mu, 0.25)))
    down, up = (RIGHT_DOWN, RIGHT_UP) if rng.random() < h.right_p else (LEFT_DOWN, LEFT_UP)
    return dwell, press, down, up


def generate_events(
    h: Habits,
    n_events: int,
    rng: np.random.Generator,
    page: _Page | None = None,
    familiarity: float = 1.0,
) -> tuple[np.ndarray, tuple[int, int]]:
    """About ``n_events`` clean events of one session of person ``h`` and the viewport;
    ``familiarity`` is the probability of knowing where each target is (1: never searches)."""
    page = page or _new_page(rng, familiarity)
    pos = np.array(page.viewport, dtype=float) / 2
    now = float(rng.uniform(0, 1e6))
    chunks: list[np.ndarray] = []
    total = 0
    while total < n_events:
        times, points, pos = _movement(pos, h, page, rng)
        for t, p in zip(times, points, strict=True):
            chunks.append(np.column_stack([now + t, p, np.full(len(t), MOVE)]))
            now += float(t[-1]) + float(rng.exponential(25))
            total += len(t)
        if rng.random() < h.click_p:
            dwell, press, down, up = _click(h, rng)
            now += dwell
            chunks.append(np.array([[now, *pos, down], [now + press, *pos, up]]))
            now += press
            total += 2
        now += float(np.exp(rng.normal(h.pause_mu, 0.5)))
    events = np.concatenate(chunks)[:n_events]
    return events, page.viewport


def dirty(events: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Real-world dirt: 65535 rows, ms-quantised timestamps (duplicates), swapped rows."""
    ev = events.copy()
    if rng.random() < 0.5:
        ev[:, 0] = np.floor(ev[:, 0])
    garbage = rng.random(len(ev)) < 0.002
    ev[garbage, 1:3] = 65535.0
    if rng.random() < 0.1 and len(ev) > 3:
        i = int(rng.integers(len(ev) - 1))
        ev[[i, i + 1]] = ev[[i + 1, i]]
    return ev


@dataclass(frozen=True)
class SynthConfig:
    """Sizes of a synthetic data set; defaults are the documented full-size evaluation."""

    accounts: int = 10
    outsiders: int = 10
    enrol_sessions: int = 10
    enrol_events: int = 20_000
    test_sessions: int = 1000
    test_min_events: int = 100
    test_max_events: int = 5000
    impostor_fraction: float = 0.5
    group_train_people: int = 480
    group_test_people: int = 60
    group_sessions: int = 6
    group_min_events: int = 5000
    group_max_events: int = 10000
    seed: int = 0


def _record(
    sid: str,
    user: str,
    h: Habits,
    n: int,
    label: str,
    rng: np.random.Generator,
    familiarity: tuple[float, float] = CUSTOMER_FAMILIARITY,
) -> SessionRecord:
    """One dirty session; its familiarity with the site is drawn from the given range."""
    known = _u(rng, *familiarity)
    events, viewport = generate_events(perturb(h, rng), n, rng, familiarity=known)
    return SessionRecord(sid, user, viewport, dirty(events, rng), label)


def _test_length(cfg: SynthConfig, rng: np.random.Generator, lo: int, hi: int) -> int:
    return int(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def owner_sets(cfg: SynthConfig) -> tuple[list[SessionRecord], Iterator[SessionRecord]]:
    """Enrolment sessions (genuine only) and a lazy stream of labelled test sessions.

    Test sessions claim an enrolled account; an impostor is another enrolled account's
    person or an outsider never seen in training, half and half.
    """
    rng = np.random.default_rng(cfg.seed)
    people = [draw_habits(rng) for _ in range(cfg.accounts)]
    outsiders = [draw_habits(rng) for _ in range(cfg.outsiders)]
    users = [f"acct{i:03d}" for i in range(cfg.accounts)]
    train = [
        _record(f"enrol-{u}-{j}", u, h, cfg.enrol_events, "genuine", rng)
        for u, h in zip(users, people, strict=True)
        for j in range(cfg.enrol_sessions)
    ]

    def tests() -> Iterator[SessionRecord]:
        trng = np.random.default_rng(cfg.seed + 1)
        for k in range(cfg.test_sessions):
            i = int(trng.integers(cfg.accounts))
            n = _test_length(cfg, trng, cfg.test_min_events, cfg.test_max_events)
            if trng.random() >= cfg.impostor_fraction:
                yield _record(f"test-{k}", users[i], people[i], n, "genuine", trng)
                continue
            if trng.random() < 0.5 or cfg.accounts < 2:
                who = outsiders[int(trng.integers(len(outsiders)))]
            else:
                other = (i + 1 + int(trng.integers(cfg.accounts - 1))) % cfg.accounts
                who = people[other]
            yield _record(f"test-{k}", users[i], who, n, "impostor", trng)

    return train, tests()


def group_sets(cfg: SynthConfig) -> tuple[list[SessionRecord], list[SessionRecord]]:
    """Customers vs non-customers: people from one population, sessions differing in how
    well the visitor knows the site. The people in the test set are not in the training set.

    Each split has its own random stream, so the test set does not change with the number of
    training people."""
    return (
        _group_split(cfg, "tr", cfg.group_train_people, np.random.default_rng([cfg.seed, 2, 0])),
        _group_split(cfg, "te", cfg.group_test_people, np.random.default_rng([cfg.seed, 2, 1])),
    )


def _group_split(
    cfg: SynthConfig, prefix: str, people: int, rng: np.random.Generator
) -> list[SessionRecord]:
    """``people`` people, alternately customers and non-customers, ``group_sessions`` each."""
    out = []
    for p in range(people):
        customer = p % 2 == 0
        label = "customer" if customer else "noncustomer"
        known = CUSTOMER_FAMILIARITY if customer else NONCUSTOMER_FAMILIARITY
        h = draw_habits(rng)
        user = f"{prefix}{p:03d}"
        for j in range(cfg.group_sessions):
            n = _test_length(cfg, rng, cfg.group_min_events, cfg.group_max_events)
            out.append(_record(f"{user}-{j}", user, h, n, label, rng, known))
    return out
