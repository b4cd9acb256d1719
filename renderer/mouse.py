"""Mouse sessions to images: a speed-coloured trail for people, kinematic channels for models.

Everything here is a pure, vectorised function of an event array ``(N, 4)`` with columns
``t_ms, x, y, code`` (codes: 0 move, 1 left down, 2 left up, 3 right down, 4 right up,
5 middle down, 6 middle up, 7 wheel) and a viewport ``(width, height)`` in CSS pixels.
No Python loop runs per point: lines are sampled once per output pixel with ``np.repeat``
and splatted bilinearly with ``np.bincount``, which anti-aliases them.

Dirty data is handled by :func:`sanitize` with fixed rules (documented in docs/mouse.md and
in its docstring); every public renderer calls it, so any array either renders or raises
:class:`~renderer.errors.InvalidSession` with a machine-readable code.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass, field
from typing import Final

import numpy as np

from renderer.errors import InvalidSession

MOVE, LEFT_DOWN, LEFT_UP, RIGHT_DOWN, RIGHT_UP, MIDDLE_DOWN, MIDDLE_UP, WHEEL = range(8)
N_CODES = 8

GARBAGE_COORD = 32767.0
"""|x| or |y| at or above this is a sentinel (65535, 0xFFFF …), not a position: the row goes."""
OFFSCREEN_MARGIN = 1.0
"""Points up to this many viewport sizes outside the viewport are clamped to its edge; points
further out are dropped as garbage."""
MIN_DT_MS = 1.0
"""Floor on a segment's duration when computing speed (timestamps are often ms-quantised)."""
GAP_MS = 1000.0
"""A segment spanning a longer silence is not drawn (the pointer left the page or the tab)."""
PAUSE_MS = 150.0
"""A silence at least this long before a movement is a pause (marked in the model channels)."""
MAX_EVENTS = 2_000_000
"""Longer sessions are refused (``session_too_large``); split them upstream."""

SPEED_RANGE = (0.03, 10.0)
"""Fixed speed scale in viewport px/ms, mapped logarithmically to the colormap: 0.03 px/ms
(30 px/s, creeping) is the darkest colour, 10 px/ms (10,000 px/s, a flick) the brightest."""
ACC_SCALE = 0.02
"""px/ms²: acceleration channel value is ``tanh(a / ACC_SCALE)``."""
TURN_SCALE = 0.1
"""rad/ms: turning-rate channel value is ``tanh(|dθ/dt| / TURN_SCALE)``."""
PRESS_SCALE_MS = 150.0
"""Click channel value is ``tanh(press duration / PRESS_SCALE_MS)``."""

# Plasma (perceptually uniform) sampled at 12 points over [0, 0.88]: the brightest yellow of
# the full map is left out because it vanishes on the white background.
PLASMA = np.array(
    [
        (13, 8, 135),
        (56, 4, 154),
        (89, 1, 165),
        (122, 2, 168),
        (150, 19, 161),
        (177, 42, 144),
        (198, 65, 125),
        (217, 88, 106),
        (232, 112, 89),
        (245, 139, 71),
        (252, 166, 54),
        (253, 198, 39),
    ],
    dtype=np.float32,
)
BACKGROUND = np.array([255, 255, 255], dtype=np.float32)
LEFT_COLOUR = np.array([0, 170, 60], dtype=np.float32)
RIGHT_COLOUR = np.array([220, 20, 30], dtype=np.float32)

MODEL_CHANNELS = (
    "coverage",
    "speed",
    "acceleration",
    "turning",
    "pauses",
    "clicks",
    "phase_speed_acceleration",
    "phase_speed_turning",
)
"""Channels of :func:`render_channels`, the model's input. The first six are the trail in
screen space; the last two draw the same movement in phase space (x: speed level, y:
acceleration or turning level), a picture of the person's velocity profile that does not
depend on where the page's controls are."""
PHASE_INK = 8.0
"""Phase-plane ink is ``log1p(coverage) / log1p(PHASE_INK)`` (clipped at 1): dense regions
saturate gently instead of at the first overlap."""


@dataclass(frozen=True)
class Cleaned:
    """A sanitised session: events sorted by time, positions inside ``viewport``.
    (``sanitize`` stores ``events`` column-major, Fortran order.)"""

    events: np.ndarray
    viewport: tuple[float, float]
    dropped: dict[str, int] = field(default_factory=dict)


def _as_events(events: object) -> np.ndarray:
    try:
        arr = np.asarray(events, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise InvalidSession(f"events are not numeric: {e}", "bad_events") from e
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise InvalidSession(f"events must have shape (N, 4), got {arr.shape}", "bad_events")
    if len(arr) > MAX_EVENTS:
        raise InvalidSession(
            f"{len(arr)} events in one session; at most {MAX_EVENTS}", "session_too_large"
        )
    return arr


def _viewport(viewport: tuple[float, float], xy: np.ndarray) -> tuple[float, float]:
    """The given viewport when usable, else the bounding box of the points."""
    vw, vh = (float(v) for v in viewport)
    if np.isfinite(vw) and np.isfinite(vh) and vw >= 1 and vh >= 1:
        return vw, vh
    if len(xy) == 0:
        raise InvalidSession("no usable viewport and no points to infer one", "zero_viewport")
    vw, vh = float(xy[:, 0].max()) + 1.0, float(xy[:, 1].max()) + 1.0
    if vw < 2 or vh < 2:
        raise InvalidSession("viewport is empty and cannot be inferred", "zero_viewport")
    return vw, vh


def _drop_duplicates(cols: np.ndarray) -> np.ndarray:
    """Of the (4, N) columns, drop exact repeats of the previous row, then of consecutive
    moves sharing one timestamp keep the last (browsers coalesce; the last position is the
    current one)."""
    t = cols[0]
    if not (t[1:] == t[:-1]).any():  # both rules need two rows with one timestamp
        return cols
    t, x, y, c = cols
    repeat = t[1:] == t[:-1]
    repeat &= x[1:] == x[:-1]
    repeat &= y[1:] == y[:-1]
    repeat &= c[1:] == c[:-1]
    if repeat.any():
        cols = np.compress(~np.r_[False, repeat], cols, axis=1)
        t, c = cols[0], cols[3]
    move = c == MOVE
    same_next = t[1:] == t[:-1]
    same_next &= move[1:]
    same_next &= move[:-1]
    if same_next.any():
        cols = np.compress(~np.r_[same_next, False], cols, axis=1)
    return cols


def _keep(cols: np.ndarray, drop: np.ndarray) -> np.ndarray:
    """The (4, N) columns without the rows in ``drop``."""
    return np.compress(~drop, cols, axis=1) if drop.any() else cols


def sanitize(events: object, viewport: tuple[float, float]) -> Cleaned:
    """Apply the dirty-data rules, in this order:

    1. not an (N, 4) numeric array, or more than ``MAX_EVENTS`` rows: ``InvalidSession``;
    2. rows with NaN/inf anywhere, a code outside 0–7 or a fractional code are dropped;
    3. rows with |x| or |y| ≥ ``GARBAGE_COORD`` (65535 and similar sentinels) are dropped;
    4. a zero, negative or non-finite viewport is replaced by the points' bounding box
       (``zero_viewport`` when that is empty too);
    5. points more than ``OFFSCREEN_MARGIN`` viewports outside are dropped, the rest are
       clamped to the viewport's edge;
    6. rows are stably sorted by time;
    7. exact duplicate rows are dropped; of consecutive moves with one timestamp the last
       is kept;
    8. nothing left: ``InvalidSession("empty_session")``. One point is a valid session.
    """
    # the rules read whole columns: one transposed copy makes every column contiguous
    # (about 1.5× faster than testing the strided columns of the (N, 4) array), and it is
    # the copy that the clamping writes into
    cols = _as_events(events).T.copy()
    bounds = _usable_bounds(cols, viewport)
    if bounds is not None:  # the usual case, in a few whole-array reductions
        vw, vh = float(viewport[0]), float(viewport[1])
        dropped = dict.fromkeys(("non_finite", "bad_code", "garbage_coord", "far_offscreen"), 0)
        lo, hi = bounds
        inside = lo[1] >= 0 and hi[1] <= vw and lo[2] >= 0 and hi[2] <= vh
    else:
        cols, (vw, vh), dropped = _drop_unusable_rows(cols, viewport)
        inside = False
    if not inside:  # (clamping points that are all inside would change nothing)
        np.clip(cols[1], 0.0, vw, out=cols[1])
        np.clip(cols[2], 0.0, vh, out=cols[2])
    before = cols.shape[1]
    cols = _sort_and_drop_duplicates(cols)
    dropped["duplicate_time"] = before - cols.shape[1]
    if cols.shape[1] == 0:
        raise InvalidSession("no usable events in the session", "empty_session")
    # (N, 4) in column-major order: the renderers read it column by column
    return Cleaned(cols.T, (vw, vh), dropped)


def _sort_and_drop_duplicates(cols: np.ndarray) -> np.ndarray:
    """Rules 6 and 7 on the (4, N) columns."""
    t = cols[0]
    if (t[1:] > t[:-1]).all():  # the usual case: sorted, and no two rows share a time
        return cols
    if not (t[1:] >= t[:-1]).all():
        cols = cols[:, np.argsort(t, kind="stable")]
    return _drop_duplicates(cols)


def _usable_bounds(
    cols: np.ndarray, viewport: tuple[float, float]
) -> tuple[list[float], list[float]] | None:
    """The per-column minima and maxima of the (4, N) columns when rules 2–5 would drop
    nothing and keep ``viewport``, else None (min/max are NaN when any value is, which
    fails the finiteness test)."""
    vw, vh = float(viewport[0]), float(viewport[1])
    if cols.shape[1] == 0 or not (math.isfinite(vw) and math.isfinite(vh) and vw >= 1 and vh >= 1):
        return None
    lo, hi = cols.min(axis=1).tolist(), cols.max(axis=1).tolist()  # (Python floats: 8 values)
    if not (all(map(math.isfinite, lo + hi)) and lo[3] >= 0 and hi[3] < N_CODES):
        return None
    mx, my = OFFSCREEN_MARGIN * vw, OFFSCREEN_MARGIN * vh
    inside = -mx <= lo[1] and hi[1] <= vw + mx and -my <= lo[2] and hi[2] <= vh + my
    no_sentinel = max(-lo[1], hi[1], -lo[2], hi[2]) < GARBAGE_COORD
    c = cols[3]
    usable = inside and no_sentinel and (c == np.round(c)).all()
    return (lo, hi) if usable else None


def _drop_unusable_rows(
    cols: np.ndarray, viewport: tuple[float, float]
) -> tuple[np.ndarray, tuple[float, float], dict[str, int]]:
    """Rules 2–5 row by row: the kept (4, N) columns, the viewport and the drop counts."""
    t, x, y, c = cols
    finite = np.isfinite(t)
    finite &= np.isfinite(x)
    finite &= np.isfinite(y)
    finite &= np.isfinite(c)
    ok = c >= 0
    ok &= c < N_CODES
    ok &= c == np.round(c)
    ok &= finite
    dropped = {"non_finite": len(finite) - int(np.count_nonzero(finite))}
    dropped["bad_code"] = int(np.count_nonzero(finite)) - int(np.count_nonzero(ok))
    cols = _keep(cols, ~ok)
    garbage = np.abs(cols[1]) >= GARBAGE_COORD
    garbage |= np.abs(cols[2]) >= GARBAGE_COORD
    dropped["garbage_coord"] = int(np.count_nonzero(garbage))
    cols = _keep(cols, garbage)
    vw, vh = _viewport(viewport, cols[1:3].T)
    mx, my = OFFSCREEN_MARGIN * vw, OFFSCREEN_MARGIN * vh
    x, y = cols[1], cols[2]
    far = (x < -mx) | (x > vw + mx)
    far |= (y < -my) | (y > vh + my)
    dropped["far_offscreen"] = int(np.count_nonzero(far))
    return _keep(cols, far), (vw, vh), dropped


@dataclass(frozen=True)
class Kinematics:
    """Per-segment quantities between consecutive points (length N-1)."""

    speed: np.ndarray  # px/ms
    acceleration: np.ndarray  # px/ms²
    turning: np.ndarray  # rad/ms, absolute
    dt: np.ndarray  # ms


def kinematics(ev: np.ndarray) -> Kinematics:
    """Speed, acceleration and turning rate of each segment of a sanitised event array."""
    dxy = np.diff(ev[:, 1:3], axis=0)
    dt_raw = np.diff(ev[:, 0])
    dt = np.maximum(dt_raw, MIN_DT_MS)
    dist = np.hypot(dxy[:, 0], dxy[:, 1])
    speed = dist / dt
    if len(speed) < 2:
        zeros = np.zeros_like(speed)
        return Kinematics(speed, zeros, zeros, dt_raw)
    mid = ev[:-1, 0] + 0.5 * dt
    dv = np.diff(speed)
    dmid = np.maximum(np.diff(mid), MIN_DT_MS)
    acc_between = dv / dmid
    acc = np.empty_like(speed)
    acc[0], acc[-1] = acc_between[0], acc_between[-1]
    acc[1:-1] = 0.5 * (acc_between[:-1] + acc_between[1:])
    heading = np.arctan2(dxy[:, 1], dxy[:, 0])
    dtheta = np.abs((np.diff(heading) + np.pi) % (2 * np.pi) - np.pi)
    # a segment of zero length has no heading: it contributes no turning
    moving = dist > 0
    dtheta = np.where(moving[1:] & moving[:-1], dtheta, 0.0)
    turn = np.zeros_like(speed)
    turn[1:] = dtheta / dmid
    return Kinematics(speed, acc, turn, dt_raw)


def speed_level(speed: np.ndarray) -> np.ndarray:
    """Speed in px/ms to [0, 1] on the fixed logarithmic scale ``SPEED_RANGE``."""
    lo, hi = SPEED_RANGE
    level = np.log(np.maximum(speed, 1e-9) / lo) / np.log(hi / lo)
    return np.clip(level, 0.0, 1.0)


@dataclass(frozen=True)
class Mapping:
    """Viewport px → image px, keeping the aspect ratio and centring."""

    scale: float
    ox: float
    oy: float

    def apply(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.ox + xy[:, 0] * self.scale, self.oy + xy[:, 1] * self.scale


def mapping(viewport: tuple[float, float], size: tuple[int, int], margin: float = 2.0) -> Mapping:
    """The aspect-preserving map of ``viewport`` into an image of ``size`` = (height, width)."""
    h, w = size
    vw, vh = viewport
    scale = min((w - 2 * margin) / vw, (h - 2 * margin) / vh)
    return Mapping(scale, (w - vw * scale) / 2, (h - vh * scale) / 2)


FRAME_MIN_FRACTION = 0.3
"""The model input frames each window's own bounding square, at least this fraction of the
viewport's longer side (so a window of tiny movements is not magnified without limit)."""


def frame_mapping(clean: Cleaned, size: tuple[int, int], margin: float = 2.0) -> Mapping:
    """Map the square around the window's points into the image (model input only): where
    on the page a person moved, and the viewport's shape, say more about the page than about
    the person, so the model does not see them."""
    h, w = size
    x, y = clean.events[:, 1], clean.events[:, 2]  # per column: min(axis=0) over 2 is slow
    lo, hi = np.array([x.min(), y.min()]), np.array([x.max(), y.max()])
    side = max(float((hi - lo).max()), FRAME_MIN_FRACTION * max(clean.viewport), 1.0)
    centre = (lo + hi) / 2
    scale = min(w - 2 * margin, h - 2 * margin) / side
    return Mapping(scale, w / 2 - centre[0] * scale, h / 2 - centre[1] * scale)


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    h, w = int(size[0]), int(size[1])
    if h < 8 or w < 8 or h * w > 4096 * 4096:
        raise InvalidSession(f"image size {size} must be between 8×8 and 4096×4096", "bad_size")
    return h, w


def _bilinear(
    px: np.ndarray, py: np.ndarray, h: int, w: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Flat pixel indices (4, S), float32-rounded tap weights (4, S) and an in-image mask
    (4, S) of the four bilinear taps of each sample; the mask is None when every tap is in
    the image (the usual case, tested on the S base pixels instead of the 4·S taps).
    Indices are ``np.intp``: ``np.bincount`` converts any other integer type first, which
    costs more than the count."""
    u, v = px - 0.5, py - 0.5
    i0, j0 = np.floor(u).astype(np.intp), np.floor(v).astype(np.intp)
    a, b = (u - i0).astype(np.float32), (v - j0).astype(np.float32)
    idx = np.empty((4, len(i0)), dtype=np.intp)  # filled in place: np.stack costs more
    np.multiply(j0, w, out=idx[0])
    idx[0] += i0
    np.add(idx[0], 1, out=idx[1])
    np.add(idx[0], w, out=idx[2])
    np.add(idx[0], w + 1, out=idx[3])
    taps = np.empty((4, len(i0)), dtype=np.float32)
    na, nb = 1 - a, 1 - b
    np.multiply(na, nb, out=taps[0])
    np.multiply(a, nb, out=taps[1])
    np.multiply(na, b, out=taps[2])
    np.multiply(a, b, out=taps[3])
    if len(i0) == 0 or (i0.min() >= 0 and j0.min() >= 0 and i0.max() < w - 1 and j0.max() < h - 1):
        return idx, taps, None
    cols = np.stack([i0, i0 + 1, i0, i0 + 1])
    rows = np.stack([j0, j0, j0 + 1, j0 + 1])
    return idx, taps, (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)


def _inside(values: np.ndarray, inside: np.ndarray | None) -> np.ndarray:
    """The entries of (4, S) tap ``values`` whose tap is in the image, flat."""
    return values.ravel() if inside is None else values[inside]


def splat_segments(
    x0: np.ndarray,
    y0: np.ndarray,
    x1: np.ndarray,
    y1: np.ndarray,
    values: np.ndarray,
    size: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray]:
    """Anti-aliased segments: coverage (H, W) and coverage-weighted value sums (K, H, W).

    Each segment is sampled about once per pixel of its length; each sample carries the
    length it stands for and is spread bilinearly over its four nearest pixels, so a line
    deposits one unit of coverage per pixel of length whatever its slope. (The model input:
    its float32 rounding is kept as the models were trained on it.)
    """
    h, w = size
    k = values.shape[1]
    x0, y0 = x0.astype(np.float32), y0.astype(np.float32)
    dx, dy = x1.astype(np.float32) - x0, y1.astype(np.float32) - y0
    length = np.hypot(dx, dy)
    n = np.maximum(np.ceil(length), 1).astype(np.int32)
    if int(n.max(initial=1)) == 1:  # every segment shorter than a pixel: one sample each
        seg = np.arange(len(x0))
        frac = np.full(len(x0), 0.5, dtype=np.float32)
    else:
        seg = np.repeat(np.arange(len(x0)), n)
        starts = np.cumsum(n) - n
        frac = ((np.arange(len(seg)) - starts[seg] + 0.5) / n[seg]).astype(np.float32)
    px = x0[seg] + frac * dx[seg]
    py = y0[seg] + frac * dy[seg]
    idx, taps, inside = _bilinear(px, py, h, w)
    wt = taps * (length / n)[seg]
    flat_idx = _inside(idx, inside)
    cov = np.bincount(flat_idx, weights=_inside(wt, inside), minlength=h * w).reshape(h, w)
    sums = np.empty((k, h, w))
    for c in range(k):  # one pass per channel, not per point
        per_tap = wt * values[seg, c].astype(np.float32)[None, :]
        sums[c] = np.bincount(flat_idx, weights=_inside(per_tap, inside), minlength=h * w).reshape(
            h, w
        )
    return cov, sums


def stamp_discs(
    cx: np.ndarray,
    cy: np.ndarray,
    values: np.ndarray,
    radius: float,
    size: tuple[int, int],
    ring: float | None = None,
) -> np.ndarray:
    """Anti-aliased filled discs (or rings of width ``ring``) of per-disc ``values`` summed."""
    h, w = size
    flat, cover = _disc_taps(cx, cy, radius, size, ring)
    wt = cover * values[:, None]
    return np.bincount(flat.ravel(), weights=wt.ravel(), minlength=h * w).reshape(h, w)


def _segments(
    clean: Cleaned, cmap: Mapping
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, Kinematics, np.ndarray]:
    """Image-space endpoints of the drawn segments, all kinematics and the drawn mask."""
    ev = clean.events
    px, py = cmap.apply(ev[:, 1:3])
    kin = kinematics(ev)
    drawn = kin.dt <= GAP_MS
    return px, py, px[1:], py[1:], kin, drawn


def _press_durations(ev: np.ndarray, down: int, up: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of ``down`` events and the time to the next ``up`` (NaN when none)."""
    downs = np.flatnonzero(ev[:, 3] == down)
    ups = np.flatnonzero(ev[:, 3] == up)
    if len(downs) == 0:
        return downs, np.empty(0)
    nxt = np.searchsorted(ups, downs)
    dur = np.full(len(downs), np.nan)
    has = nxt < len(ups)
    dur[has] = ev[ups[nxt[has]], 0] - ev[downs[has], 0]
    return downs, dur


def _colormap(level: np.ndarray) -> np.ndarray:
    """Levels in [0, 1] to RGB on the plasma table, linearly interpolated."""
    pos = level * (len(PLASMA) - 1)
    lo = np.clip(np.floor(pos).astype(np.int64), 0, len(PLASMA) - 2)
    frac = (pos - lo).astype(np.float32)[:, None]
    out: np.ndarray = PLASMA[lo] * (1 - frac) + PLASMA[lo + 1] * frac
    return out


TRAIL_LEVELS = 256
"""The trail's pixels are looked up in a table of 256 speed levels × 256 opacities: one
opacity step moves a channel by less than one 8-bit level, one speed-level step by at most
1.9 (the steepest stretch of the colormap), so the lookup is off by at most one level."""


def _trail_table() -> np.ndarray:
    """Pixel colour (as one 3-byte item) for each (opacity, speed level) pair:
    ``BACKGROUND·(1 - α) + plasma(level)·α``, rounded."""
    alpha = np.linspace(0.0, 1.0, TRAIL_LEVELS)[:, None, None]
    colour = _colormap(np.linspace(0.0, 1.0, TRAIL_LEVELS))[None, :, :]
    rgb = np.rint(BACKGROUND * (1 - alpha) + colour * alpha).astype(np.uint8)
    return rgb.reshape(-1, 3).view("V3").ravel()


_TRAIL_TABLE = _trail_table()
# 3-byte items: moving whole pixels as one item is several times faster than (n, 3) rows


def render_trail(
    events: object,
    viewport: tuple[float, float],
    size: tuple[int, int] = (224, 224),
    line_gain: float = 1.6,
) -> np.ndarray:
    """The picture for people: RGB uint8 (H, W, 3) of the speed-coloured trail and clicks."""
    return draw_trail(sanitize(events, viewport), size, line_gain)


def draw_trail(
    clean: Cleaned, size: tuple[int, int] = (224, 224), line_gain: float = 1.6
) -> np.ndarray:
    """:func:`render_trail` of an already sanitised session.

    The trail is sampled once per pixel of path length and splatted bilinearly (coverage and
    coverage-weighted speed level in one ``np.bincount``); only the touched pixels are
    coloured, from a table, then the click rings are blended over them.
    """
    h, w = _check_size(size)
    cmap = mapping(clean.viewport, (h, w))
    ev = clean.events
    image = _blank(h, w).copy()
    pixels = image.view("V3").ravel()  # one 3-byte item per pixel
    _paint_trail(pixels, ev, cmap, (h, w), line_gain)
    _blend_clicks(pixels, ev, cmap, (h, w))
    return image.reshape(h, w, 3)


def _paint_trail(
    pixels: np.ndarray, ev: np.ndarray, cmap: Mapping, size: tuple[int, int], line_gain: float
) -> None:
    """Colour the trail's touched pixels of the flat 3-byte ``pixels`` from the table."""
    start, nz, ink, level = _splat_path(ev, cmap, size)
    code = level.astype(np.intp)  # level·top + ½: truncation rounds it
    np.minimum(code, TRAIL_LEVELS - 1, out=code)
    steps = _opacity_steps(line_gain)
    if steps is None:
        code += _opacity(ink, line_gain) * TRAIL_LEVELS
    else:  # the same values from a table: raw ink is a whole number
        np.minimum(ink, len(steps) - 1, out=ink)
        code += steps.take(ink.astype(np.intp), mode=_IN_RANGE)
    # np.put writes 3-byte items faster than fancy assignment; ``nz`` counts from ``start``
    np.put(pixels[start:], nz, _TRAIL_TABLE.take(code))


def _opacity(ink: np.ndarray, line_gain: float) -> np.ndarray:
    """Opacity steps (0 … TRAIL_LEVELS-1) of raw ink (1/TAP_STEPS² of a pixel); ``ink`` is
    consumed. One multiplication scales it (the same double as scaling it by 1/TAP_STEPS²
    first: that factor is a power of two)."""
    top = TRAIL_LEVELS - 1
    ink *= line_gain * top / TAP_STEPS**2
    np.minimum(ink, top, out=ink)
    ink += 0.5
    steps: np.ndarray = ink.astype(np.intp)
    return steps


@functools.lru_cache(maxsize=8)
def _opacity_steps(line_gain: float) -> np.ndarray | None:
    """``TRAIL_LEVELS·_opacity(ink)`` for raw ink 0, 1, … up to the first ink that is fully
    opaque (all ink beyond is too), by the same float operations; None when that table
    would be unbounded or large (a gain that is not positive, or tiny)."""
    scale = line_gain * (TRAIL_LEVELS - 1) / TAP_STEPS**2
    if not 0 < scale < math.inf or (TRAIL_LEVELS - 1) / scale > 1 << 16:
        return None
    ink = np.arange(math.ceil((TRAIL_LEVELS - 1) / scale) + 2, dtype=np.float64)
    steps = _opacity(ink, line_gain) * TRAIL_LEVELS
    if steps[-1] != (TRAIL_LEVELS - 1) * TRAIL_LEVELS:  # (cannot happen: kept for safety)
        return None
    steps.flags.writeable = False
    return steps


@functools.lru_cache(maxsize=4)
def _blank(h: int, w: int) -> np.ndarray:
    blank = np.empty((h * w, 3), dtype=np.uint8)
    blank[:] = BACKGROUND
    blank.flags.writeable = False
    return blank


_IN_RANGE: Final = "wrap"
"""``take`` mode for indices that are in range by construction: numpy's wrapping path is
about 30% faster than its bounds-checking one and gives the same result for them."""

TAP_STEPS = 32
"""Sample positions are rounded to 1/32 px inside their pixel, so the bilinear tap weights
are integers (a sample's four add up to 32² = 1024)."""
_PACK = 2.0**40
"""Coverage and level sums share one ``np.bincount``: each tap adds ``weight·(2⁴⁰ + level)``,
so a pixel's sum is ``2⁴⁰·Σweight + Σweight·level``: the level part (< 256·Σweight) stays
below 2⁴⁰, and the mean level is exact to about 2⁻¹² of a level, while fewer than
``_PACK_MAX_SAMPLES`` are drawn (more: two counts)."""
_PACK_MAX_SAMPLES = int(_PACK / (TAP_STEPS**2 * TRAIL_LEVELS))


def _splat_path(
    ev: np.ndarray, cmap: Mapping, size: tuple[int, int]
) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """The trail's touched pixels: the first pixel of the band of rows the trail spans (flat
    index), the touched pixels' flat indices counted from it, their coverage in
    1/``TAP_STEPS``² of a pixel and their coverage-weighted mean ``level·(TRAIL_LEVELS-1) + ½``.

    Samples lie every pixel of *path* length (not one set per segment): about half of a
    mouse's segments are shorter than an output pixel. Each sample stands for one pixel of
    line, spread over its four nearest pixels (bilinear), so the ink per pixel of length does
    not depend on the slope. Written with in-place ufuncs on whole rows: at ~10,000 points
    the number of numpy calls and temporaries, not the arithmetic, is the cost.
    """
    w = size[1]
    geo, length, (top, bottom) = _trail_segments(ev, cmap, size)
    seg = _sample_segments(geo, length)
    if len(seg) == 0:
        return 0, np.empty(0, dtype=np.intp), np.empty(0), np.empty(0)
    packed = len(seg) < _PACK_MAX_SAMPLES
    if packed:
        geo[5] += _PACK  # before the gather: there are fewer segments than samples
    at = _samples(geo, length, seg)
    # only the band of rows the trail spans is counted (a 16:9 page fills ~56% of a square)
    base, wt = _bilinear_taps(at[2:4], w, top)
    band = (bottom - top) * w
    if packed:
        wt *= at[5]
        count = _count_taps(base, wt, w, band)
        nz = (count > 0).nonzero()[0]  # 5× faster than the nonzero entries of count
        level_sum = count.take(nz, mode=_IN_RANGE)
        ink = level_sum * (1 / _PACK)
        np.floor(ink, out=ink)
        level_sum -= ink * _PACK  # exact: the fractional part of level_sum / 2⁴⁰, scaled back
    else:
        cov = _count_taps(base, wt, w, band)
        wt *= at[5]
        nz = (cov > 0).nonzero()[0]
        level_sum = _count_taps(base, wt, w, band).take(nz)
        ink = cov.take(nz)
    np.divide(level_sum, ink, out=level_sum)
    return top * w, nz, ink, level_sum


def _count_taps(base: np.ndarray, wt: np.ndarray, w: int, band: int) -> np.ndarray:
    """Per-pixel sums (``band`` pixels) of the weights (4, S) of the taps at ``base`` + 0,
    + 1, + w and + w + 1. The sums are those of one ``np.bincount`` over all the taps, tap
    0 of every sample first (each pixel adds the same terms in the same order), without
    building the (4, S) indices, and ``np.add.at`` is ~20% faster than ``np.bincount``."""
    count = np.zeros(band)
    for k, offset in enumerate((0, 1, w, w + 1)):  # one call per tap, not per point
        np.add.at(count[offset:], base, wt[k])
    return count


_LOG_SPEED = np.log(SPEED_RANGE)
_GEO_ROWS = 6
"""Per point: image x and y, the vector (later the unit vector) to the next point, the arc
length at the point and the level of the segment that starts there; one (6, N) array, so
that the samples gather all six with one ``take``."""


def _trail_segments(
    ev: np.ndarray, cmap: Mapping, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """Per-point geometry (6, N) (``_GEO_ROWS``; the arc lengths are left to
    ``_sample_segments``): image positions relative to pixel centres (clamped so that all
    four taps are inside), segment vectors and ``speed_level·(TRAIL_LEVELS-1) + ½``; also the
    drawn length of each segment (N-1; 0 across a gap) and the band of image rows the taps
    touch. x and y share one (2, ·) block so that each step is one ufunc call for both."""
    h, w = size
    geo = np.empty((_GEO_ROWS, len(ev)))
    pos = geo[0:2]
    np.multiply(ev[:, 1:3].T, cmap.scale, out=pos)
    pos += np.array([[cmap.ox - 0.5], [cmap.oy - 0.5]])
    lo, hi = pos.min(axis=1).tolist(), pos.max(axis=1).tolist()
    limit = (w - 1.001, h - 1.001)
    if lo[0] < 0 or lo[1] < 0 or hi[0] > limit[0] or hi[1] > limit[1]:  # not when sanitised
        np.clip(pos, 0.0, np.array([[limit[0]], [limit[1]]]), out=pos)
        lo, hi = pos.min(axis=1).tolist(), pos.max(axis=1).tolist()
    step = np.subtract(pos[:, 1:], pos[:, :-1], out=geo[2:4, :-1])
    sq = step * step
    length = sq[0]
    length += sq[1]
    np.sqrt(length, out=length)
    t = ev[:, 0]
    dt = t[1:] - t[:-1]
    speed = np.maximum(dt, MIN_DT_MS)
    np.divide(length, speed, out=speed)  # image px/ms: viewport px/ms × scale
    np.maximum(speed, 1e-9, out=speed)
    level = np.log(speed, out=geo[5, :-1])  # speed_level, scaled for the table, in place
    top = TRAIL_LEVELS - 1
    level -= _LOG_SPEED[0] + np.log(cmap.scale)
    level *= top / (_LOG_SPEED[1] - _LOG_SPEED[0])
    np.clip(level, 0.0, top, out=level)
    level += 0.5
    geo[5, -1] = 0.0  # the last point starts no segment
    length[dt > GAP_MS] = 0.0  # a gap is skipped, not drawn
    return geo, length, (int(lo[1]), int(hi[1]) + 2)


def _sample_segments(geo: np.ndarray, length: np.ndarray) -> np.ndarray:
    """The segment of each sample at arc lengths ½, 1½, 2½ … along the polyline; fills the
    arc length at each point into ``geo[4]``."""
    cum = geo[4]
    cum[0] = 0.0
    np.cumsum(length, out=cum[1:])
    first = (cum + 0.5).astype(np.intp)  # samples before each vertex
    return np.arange(len(length)).repeat(np.subtract(first[1:], first[:-1]))


def _samples(geo: np.ndarray, length: np.ndarray, seg: np.ndarray) -> np.ndarray:
    """Per-sample geometry (6, S): ``geo`` of each sample's segment, with rows 2–3 holding the
    sample's position. ``geo``'s segment vectors become unit vectors."""
    step = geo[2:4, :-1]
    step /= np.maximum(length, 1e-12)  # unit vectors (segments of length 0 hold no sample)
    at: np.ndarray = geo.take(seg, axis=1, mode=_IN_RANGE)
    along = at[4]
    np.subtract(np.arange(0.5, len(seg), 1.0), along, out=along)  # from the segment's start
    q = at[2:4]
    q *= along
    q += at[0:2]
    return at


def _bilinear_taps(q: np.ndarray, w: int, top: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat index (S,), counted from row ``top``, of the top-left tap of each of the points
    ``q`` (2, S) given relative to pixel centres, and the integer weights (4, S), in
    1/``TAP_STEPS``², of its taps at + 0, + 1, + w and + w + 1 (the caller keeps all taps
    inside the image). ``q`` is consumed."""
    n = q.shape[1]
    cell = np.floor(q)
    q -= cell
    q *= TAP_STEPS
    # (32 - u, u) and (32 - v, v), u and v the sub-pixel steps: the four weights are the
    # products, (32 - u)(32 - v), u(32 - v), (32 - u)v and uv, exact in float64
    steps = np.empty((2, 2, n))
    np.rint(q, out=steps[:, 1])
    np.subtract(TAP_STEPS, steps[:, 1], out=steps[:, 0])
    wt = np.empty((4, n))
    np.multiply(steps[1][:, None], steps[0][None, :], out=wt.reshape(2, 2, n))
    cell[1] -= top
    cell[1] *= w
    cell[1] += cell[0]
    # np.intp: np.add.at converts any other integer type first
    return cell[1].astype(np.intp), wt


CLICK_SUBPIXEL = 8
"""Click rings are stamped from kernels precomputed at 1/8-pixel centre offsets."""


def _blend_clicks(pixels: np.ndarray, ev: np.ndarray, cmap: Mapping, size: tuple[int, int]) -> None:
    """Anti-aliased rings over the flat 3-byte (H·W) ``pixels``: left clicks, then right
    (overlapping rings of one colour add up their coverage, clipped at 1)."""
    h, w = size
    code = ev[:, 3]
    is_right = code == RIGHT_DOWN
    is_click = code == LEFT_DOWN
    is_click |= is_right
    rows = is_click.nonzero()[0]
    if len(rows) == 0:
        return
    radius = max(2.0, 3.5 * min(h, w) / 224)
    ring = max(1.0, 1.5 * min(h, w) / 224)
    first, span, taps, cover = _ring_taps(ev[rows, 1:3], cmap, radius, ring, size)
    # both colours' coverage summed per pixel in one count over the span of pixels the rings
    # touch (left, then right); every tap then reads its pixel's totals, so repeated pixels
    # all write the same value and no de-duplication (a sort) is needed
    label = is_right.take(rows) * span
    label = taps + label[:, None]
    alpha = np.bincount(label.ravel(), weights=cover.ravel(), minlength=2 * span)
    taps = taps.ravel()
    opacity = alpha.reshape(2, span).take(taps, axis=1, mode=_IN_RANGE)  # left, right
    np.minimum(opacity, 1.0, out=opacity)
    left_a, right_a = opacity
    # over-compositing left then right: pixel·(1-aL)(1-aR) + L·aL(1-aR) + R·aR
    left_a *= 1.0 - right_a
    pixels = pixels[first:]  # the taps count from ``first``
    rgb = np.array(pixels.take(taps).view(np.uint8).reshape(-1, 3).T, dtype=np.float64)
    rgb *= 1.0 - left_a - right_a
    rgb += _CLICK_COLOURS @ opacity
    rgb += 0.5
    blended = np.empty((len(taps), 3), dtype=np.uint8)
    blended[:] = rgb.T
    np.put(pixels, taps, blended.view("V3").ravel())


_CLICK_COLOURS = np.stack([LEFT_COLOUR, RIGHT_COLOUR], axis=1).astype(np.float64)


def _ring_taps(
    xy: np.ndarray, cmap: Mapping, radius: float, ring: float, size: tuple[int, int]
) -> tuple[int, int, np.ndarray, np.ndarray]:
    """The rings around M viewport points, from the precomputed kernels: a first pixel and
    a span of pixels (flat indices) holding all taps, and the taps' indices counted from
    that first pixel and their coverage, each (M, K); taps outside the image point at
    pixel 0 with coverage 0."""
    h, w = size
    ox, oy, kernels, reach = _ring_kernels(radius, ring)
    offsets = _ring_offsets(radius, ring, w)
    # x and y together in 1/S-pixel steps: the pixel is step // S, the kernel step % S
    steps = xy * (cmap.scale * CLICK_SUBPIXEL)
    steps += (cmap.ox * CLICK_SUBPIXEL, cmap.oy * CLICK_SUBPIXEL)
    pix, sub = np.divmod(np.floor(steps).astype(np.intp), CLICK_SUBPIXEL)
    phase = sub @ _PHASE_OF_STEP
    taps = offsets.take(phase, axis=0, mode=_IN_RANGE)
    cover = kernels.take(phase, axis=0, mode=_IN_RANGE)
    lo, hi = pix.min(axis=0).tolist(), pix.max(axis=0).tolist()
    if min(lo) < reach or hi[0] >= w - reach or hi[1] >= h - reach:
        cols, rows = pix[:, 0:1] + ox.take(phase, axis=0), pix[:, 1:2] + oy.take(phase, axis=0)
        inside = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
        taps += (pix @ (1, w))[:, None]
        taps, cover = np.where(inside, taps, 0), np.where(inside, cover, 0.0)
        return 0, int(taps.max()) + 1, taps, cover
    # the span from the centres' pixels and the kernels' reach, not from all the taps
    first = lo[1] * w + lo[0] - (reach * w + reach)
    last = hi[1] * w + hi[0] + (reach * w + reach)
    base = pix @ (1, w)
    base -= first
    taps += base[:, None]
    return first, last - first + 1, taps, cover


_PHASE_OF_STEP = np.array([CLICK_SUBPIXEL, 1])
"""A centre's kernel is ``CLICK_SUBPIXEL·(x step % S) + (y step % S)``."""


@functools.lru_cache(maxsize=8)
def _ring_offsets(radius: float, ring: float, w: int) -> np.ndarray:
    """The kernels' pixel offsets (S², K) as flat indices in an image ``w`` pixels wide."""
    ox, oy, _, _ = _ring_kernels(radius, ring)
    offsets: np.ndarray = oy * w + ox
    offsets.flags.writeable = False  # shared by every call (cached)
    return offsets


@functools.lru_cache(maxsize=8)
def _ring_kernels(radius: float, ring: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Pixel offsets from the centre's pixel (x and y) and ring coverage, each (S², K), for
    centres at each of S×S sub-pixel positions, and the largest offset: per position the K
    taps it covers most (all it covers at all; some positions pad with coverage 0)."""
    sub = (np.arange(CLICK_SUBPIXEL) + 0.5) / CLICK_SUBPIXEL
    fx, fy = np.repeat(sub, CLICK_SUBPIXEL), np.tile(sub, CLICK_SUBPIXEL)
    flat, cover = _disc_taps(fx + 64, fy + 64, radius, (128, 128), ring)
    k = int((cover > 0).sum(axis=1).max())
    best = np.argsort(-cover, axis=1, kind="stable")[:, :k]
    ox, oy = (flat[0] % 128 - 64)[best], (flat[0] // 128 - 64)[best]
    reach = int(max(np.abs(ox).max(), np.abs(oy).max()))
    return ox, oy, np.take_along_axis(cover, best, axis=1), reach


@functools.lru_cache(maxsize=8)
def _disc_offsets(reach: int) -> tuple[np.ndarray, np.ndarray]:
    off = np.arange(-reach, reach + 1)
    grid_x, grid_y = np.meshgrid(off, off)
    return grid_x.ravel(), grid_y.ravel()


def _disc_taps(
    cx: np.ndarray,
    cy: np.ndarray,
    radius: float,
    size: tuple[int, int],
    ring: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Flat pixel indices and coverage (M, K) of anti-aliased discs (or rings of width
    ``ring``) around M centres; taps outside the image get index 0 and coverage 0."""
    h, w = size
    ox, oy = _disc_offsets(int(np.ceil(radius + 1.5)))
    cols = np.floor(cx).astype(np.intp)[:, None] + ox
    rows = np.floor(cy).astype(np.intp)[:, None] + oy
    ddx, ddy = cols + (0.5 - cx[:, None]), rows + (0.5 - cy[:, None])
    dist = np.sqrt(ddx * ddx + ddy * ddy)
    if ring is None:
        cover = np.clip(radius + 0.5 - dist, 0.0, 1.0)
    else:
        cover = np.clip(ring / 2 + 0.5 - np.abs(dist - radius), 0.0, 1.0)
    inside = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
    return np.where(inside, rows * w + cols, 0), np.where(inside, cover, 0.0)


def render_channels(
    events: object, viewport: tuple[float, float], size: tuple[int, int] = (64, 64)
) -> np.ndarray:
    """The model's input: float32 (C, H, W) with the channels named in ``MODEL_CHANNELS``."""
    return draw_channels(sanitize(events, viewport), size)


def draw_channels(clean: Cleaned, size: tuple[int, int] = (64, 64)) -> np.ndarray:
    """:func:`render_channels` of an already sanitised session.

    coverage is the line's ink (clipped at 1); speed, acceleration and turning are the
    coverage-weighted mean of each segment's value times the ink, so the background is 0;
    pauses are discs whose value grows with the log of the silence before a movement; clicks
    are discs valued ``+tanh(press/PRESS_SCALE_MS)`` (left) and ``-…`` (right).
    """
    h, w = _check_size(size)
    cmap = frame_mapping(clean, (h, w))
    moving = Cleaned(resample(clean.events), clean.viewport)
    x0, y0, x1, y1, kin, drawn = _segments(moving, cmap)
    vals = np.stack(
        [
            speed_level(kin.speed),
            np.tanh(kin.acceleration / ACC_SCALE),
            np.tanh(kin.turning / TURN_SCALE),
        ],
        axis=1,
    )[drawn]
    cov, sums = splat_segments(x0[:-1][drawn], y0[:-1][drawn], x1[drawn], y1[drawn], vals, (h, w))
    flat = np.zeros((len(MODEL_CHANNELS), h * w), dtype=np.float32)
    cov = cov.ravel()
    nz = np.flatnonzero(cov > 0)  # the mean is taken where there is ink, the rest stays 0
    ink = np.minimum(cov.take(nz), 1.0)
    flat[0, nz] = ink
    flat[1:4, nz] = sums.reshape(len(sums), -1)[:, nz] / np.maximum(cov.take(nz), 1e-12) * ink
    out = flat.reshape(len(MODEL_CHANNELS), h, w)
    radius = max(1.0, 2.0 * min(h, w) / 64)
    ev = clean.events
    gaps = np.diff(ev[:, 0])
    pause_at = np.flatnonzero(gaps >= PAUSE_MS) + 1
    if len(pause_at):
        cx, cy = cmap.apply(ev[pause_at, 1:3])
        level = np.log(np.minimum(gaps[pause_at - 1], 10 * GAP_MS) / PAUSE_MS) / np.log(
            10 * GAP_MS / PAUSE_MS
        )
        out[4] = np.clip(stamp_discs(cx, cy, 0.2 + 0.8 * level, radius, (h, w)), 0, 1)
    clicks = np.zeros((h, w))
    for down, up, sign in ((LEFT_DOWN, LEFT_UP, 1.0), (RIGHT_DOWN, RIGHT_UP, -1.0)):
        rows, dur = _press_durations(ev, down, up)
        if len(rows):
            cx, cy = cmap.apply(ev[rows, 1:3])
            value = sign * np.tanh(np.nan_to_num(dur, nan=PRESS_SCALE_MS) / PRESS_SCALE_MS)
            clicks += stamp_discs(cx, cy, value, radius, (h, w))
    out[5] = np.clip(clicks, -1, 1)
    out[6], out[7] = _phase_planes(kin, drawn, (h, w))
    return out


RESAMPLE_MS = 10.0
"""The model's kinematics are computed on positions resampled every 10 ms (100 Hz) inside
movements: raw finite differences depend on the device's sampling rate (60–250 Hz), which
says something about the device, not about the person."""


def resample(ev: np.ndarray, step_ms: float = RESAMPLE_MS) -> np.ndarray:
    """Positions linearly interpolated on a regular time grid, skipping silences ≥ PAUSE_MS.

    Returns move rows ``(t, x, y, 0)``; a silence shows up as a longer step between rows.
    """
    t = ev[:, 0]
    if len(ev) < 2 or t[-1] - t[0] < step_ms:
        return ev.copy()
    grid = np.arange(t[0], t[-1], step_ms)
    j = np.clip(np.searchsorted(t, grid, side="right") - 1, 0, len(t) - 2)
    moving = (t[j + 1] - t[j]) < PAUSE_MS
    grid = np.r_[grid[moving], t[-1]]
    x = np.interp(grid, t, ev[:, 1])
    y = np.interp(grid, t, ev[:, 2])
    return np.column_stack([grid, x, y, np.zeros(len(grid))])


def _smooth(values: np.ndarray, k: int = 5) -> np.ndarray:
    """Centred moving average (edges use the samples that exist)."""
    kernel = np.ones(min(k, len(values)))
    num = np.convolve(values, kernel, mode="same")
    den = np.convolve(np.ones_like(values), kernel, mode="same")
    return num / den


def _histograms(px: np.ndarray, pys: list[np.ndarray], size: tuple[int, int]) -> np.ndarray:
    """Ink (K, H, W) of the points (px, py) for each of the K ``pys``, bilinear and
    log-compressed; the K planes share one set of tap arrays and one count (each pixel's
    sum adds the same taps in the same order as K separate counts would)."""
    h, w = size
    k, n = len(pys), len(px)
    x = np.tile(px.astype(np.float32), k)
    y = np.concatenate([p.astype(np.float32) for p in pys])
    idx, taps, inside = _bilinear(x, y, h, w)
    idx += np.repeat(np.arange(k) * (h * w), n)  # plane offsets, after the in-image test
    counts = np.bincount(_inside(idx, inside), _inside(taps, inside), minlength=k * h * w)
    out: np.ndarray = np.minimum(np.log1p(counts) / np.log1p(PHASE_INK), 1.0)
    return out.reshape(k, h, w)


def _phase_planes(
    kin: Kinematics, drawn: np.ndarray, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Where the movement spends its samples in (speed, acceleration) and (speed, turning)
    coordinates, from lightly smoothed kinematics (raw finite differences are mostly tremor
    and sampling jitter)."""
    h, w = size
    if len(kin.speed) < 3:
        return np.zeros(size), np.zeros(size)
    speed = _smooth(kin.speed)
    dt = np.maximum(kin.dt, MIN_DT_MS)
    acc = np.gradient(speed) / dt
    turn = _smooth(kin.turning)
    keep = drawn
    sx = speed_level(speed[keep]) * w
    a_y = (0.5 - 0.5 * np.tanh(acc[keep] / ACC_SCALE)) * h
    t_y = (1 - np.tanh(turn[keep] / TURN_SCALE)) * h
    phase = _histograms(sx, [a_y, t_y], size)
    return phase[0], phase[1]


def window_bounds(n_events: int, window_events: int = 400) -> list[tuple[int, int]]:
    """Split ``n_events`` into ⌈n/window⌉·… near-equal consecutive windows of comparable density.

    The number of windows is ``max(1, round(n / window_events))`` and the sizes differ by at
    most one event, so every window of a session holds between about 0.67× and 1.5× the
    nominal count (except a session shorter than that, which is one window).
    """
    if window_events < 2:
        raise InvalidSession("window_events must be at least 2", "bad_window")
    k = max(1, round(n_events / window_events))
    edges = np.linspace(0, n_events, k + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in itertools.pairwise(edges)]


def session_windows(
    clean: Cleaned, window_events: int = 400, max_windows: int | None = None
) -> list[Cleaned]:
    """The windows of a sanitised session; with ``max_windows`` an evenly spaced subset."""
    bounds = window_bounds(len(clean.events), window_events)
    if max_windows is not None and len(bounds) > max_windows:
        pick = np.linspace(0, len(bounds) - 1, max_windows).round().astype(int)
        bounds = [bounds[i] for i in pick]
    return [Cleaned(clean.events[a:b], clean.viewport) for a, b in bounds]


def render_windows(
    events: object,
    viewport: tuple[float, float],
    size: tuple[int, int] = (64, 64),
    window_events: int = 400,
    max_windows: int | None = None,
) -> np.ndarray:
    """Model input for every window of a session: float32 (K, C, H, W), K ≥ 1."""
    clean = sanitize(events, viewport)
    wins = session_windows(clean, window_events, max_windows)
    return np.stack([draw_channels(win, size) for win in wins])
