import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import renderer.mouse as renderer_mouse
from renderer.errors import InvalidSession
from renderer.mouse import (
    BACKGROUND,
    LEFT_COLOUR,
    MODEL_CHANNELS,
    PLASMA,
    RIGHT_COLOUR,
    SPEED_RANGE,
    draw_channels,
    mapping,
    render_channels,
    render_trail,
    render_windows,
    sanitize,
    session_windows,
    speed_level,
    window_bounds,
)

VIEWPORT = (1920.0, 1080.0)


def line(n: int, speed_px_ms: float, y: float = 540.0) -> np.ndarray:
    t = np.arange(n, dtype=float) * 10.0
    x = 200 + t * speed_px_ms
    return np.column_stack([t, x, np.full(n, y), np.zeros(n)])


floats = st.floats(allow_nan=True, allow_infinity=True, width=64)
rows = arrays(np.float64, st.tuples(st.integers(0, 60), st.just(4)), elements=floats)
side = st.one_of(st.floats(-10, 5000), st.sampled_from([float("nan"), float("inf"), 0.0]))
viewports = st.tuples(side, side)


@settings(max_examples=150, deadline=None)
@given(rows, viewports, st.integers(8, 96), st.integers(8, 96))
def test_any_array_renders_or_raises_a_coded_invalid_session(ev, vp, h, w):
    try:
        image = render_trail(ev, vp, (h, w))
    except InvalidSession as e:
        assert e.code in ("empty_session", "zero_viewport")
        return
    assert image.shape == (h, w, 3) and image.dtype == np.uint8


@settings(max_examples=60, deadline=None)
@given(
    arrays(
        np.float64,
        st.tuples(st.integers(2, 80), st.just(4)),
        elements=st.floats(0, 3000, allow_nan=False),
    )
)
def test_channels_are_finite_and_bounded(ev):
    ev = ev.copy()
    ev[:, 3] = np.floor(ev[:, 3]) % 8
    ev[:, 2] %= 1080
    out = render_channels(ev, VIEWPORT, (32, 40))
    assert out.shape == (len(MODEL_CHANNELS), 32, 40) and out.dtype == np.float32
    assert np.isfinite(out).all()
    assert out[0].min() >= 0 and out[0].max() <= 1
    assert np.abs(out).max() <= 1.0 + 1e-6


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 100_000), st.integers(2, 5000))
def test_windows_cover_everything_once_with_comparable_sizes(n, window):
    bounds = window_bounds(n, window)
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
    sizes = [b - a for a, b in bounds]
    assert max(sizes) - min(sizes) <= 1
    if n >= window:
        assert 0.66 * window - 1 <= min(sizes) and max(sizes) <= 1.5 * window + 1


@settings(max_examples=40, deadline=None)
@given(st.floats(1, 5000), st.floats(1, 5000), st.integers(16, 300), st.integers(16, 300))
def test_mapping_keeps_aspect_and_stays_inside(vw, vh, h, w):
    m = mapping((vw, vh), (h, w))
    corners = np.array([[0, 0], [vw, vh], [vw, 0], [0, vh]])
    px, py = m.apply(corners)
    assert px.min() >= -1e-6 and px.max() <= w + 1e-6
    assert py.min() >= -1e-6 and py.max() <= h + 1e-6
    assert (px.max() - px.min()) / (py.max() - py.min()) == pytest.approx(vw / vh, rel=1e-6)


def test_slow_and_fast_segments_get_opposite_ends_of_the_colormap():
    slow = render_trail(line(50, 0.05, 300), VIEWPORT)
    fast = render_trail(line(50, 8.0, 700), VIEWPORT)
    dark, bright = PLASMA[0], PLASMA[-1]

    def ink(img):
        px = img.reshape(-1, 3).astype(float)
        return px[np.abs(px - BACKGROUND).sum(1) > 200]

    assert len(ink(slow)) and len(ink(fast))
    slow_d = np.abs(ink(slow) - dark).sum(1).mean()
    fast_d = np.abs(ink(fast) - bright).sum(1).mean()
    assert slow_d < 120 and fast_d < 120


def test_speed_scale_is_fixed_and_logarithmic():
    assert speed_level(np.array([0.03]))[0] == pytest.approx(0)
    assert speed_level(np.array([10.0]))[0] == pytest.approx(1)
    mid = np.sqrt(0.03 * 10.0)
    assert speed_level(np.array([mid]))[0] == pytest.approx(0.5)


def test_diagonal_lines_are_anti_aliased():
    t = np.arange(100) * 10.0
    ev = np.column_stack([t, 100 + t * 1.3, 100 + t * 0.7, np.zeros(100)])
    alpha = render_channels(ev, VIEWPORT, (224, 224))[0]
    partial = ((alpha > 0.05) & (alpha < 0.95)).sum()
    assert partial > 50


def test_left_clicks_are_green_and_right_clicks_red():
    ev = np.array([[0, 500, 500, 1], [80, 500, 500, 2], [500, 1400, 500, 3], [600, 1400, 500, 4]])
    img = render_trail(ev, VIEWPORT).reshape(-1, 3).astype(float)
    assert (np.abs(img - LEFT_COLOUR).sum(1) < 30).sum() > 5
    assert (np.abs(img - RIGHT_COLOUR).sum(1) < 30).sum() > 5


def test_size_is_configurable():
    assert render_trail(line(20, 1), VIEWPORT, (100, 300)).shape == (100, 300, 3)
    with pytest.raises(InvalidSession) as e:
        render_trail(line(20, 1), VIEWPORT, (4, 4))
    assert e.value.code == "bad_size"


def test_garbage_coordinates_are_dropped_not_drawn():
    ev = line(30, 1.0)
    dirty = ev.copy()
    dirty[10, 1:3] = 65535
    clean = sanitize(dirty, VIEWPORT)
    assert clean.dropped["garbage_coord"] == 1 and len(clean.events) == 29
    assert np.array_equal(
        render_trail(dirty, VIEWPORT), render_trail(np.delete(ev, 10, 0), VIEWPORT)
    )


def test_unsorted_and_duplicate_timestamps():
    ev = line(10, 1.0)
    shuffled = ev[[3, 1, 0, 2, 4, 5, 6, 7, 8, 9]]
    assert np.array_equal(sanitize(shuffled, VIEWPORT).events, ev)
    dup = np.vstack([ev[:5], [[ev[4, 0], 999, 540, 0]], ev[5:]])
    cleaned = sanitize(dup, VIEWPORT).events
    assert len(cleaned) == 10 and cleaned[4, 1] == 999  # the last of an equal-time run wins
    exact = np.vstack([ev, ev[-1:]])
    assert len(sanitize(exact, VIEWPORT).events) == 10


def test_off_viewport_points_are_clamped_near_and_dropped_far():
    ev = np.array([[0, -50, 10, 0], [10, 2000, 1200, 0], [20, 9000, 10, 0], [30, 5, 5, 0]])
    clean = sanitize(ev, VIEWPORT)
    assert clean.dropped["far_offscreen"] == 1
    assert clean.events[:, 1].min() == 0 and clean.events[:, 1].max() == 1920
    assert clean.events[:, 2].max() == 1080


def test_non_finite_rows_and_bad_codes_are_dropped():
    ev = line(6, 1.0)
    ev[1, 0] = np.nan
    ev[2, 1] = np.inf
    ev[3, 3] = 9
    clean = sanitize(ev, VIEWPORT)
    assert len(clean.events) == 3
    assert clean.dropped["non_finite"] == 2 and clean.dropped["bad_code"] == 1


def test_zero_viewport_is_inferred_from_the_points_or_refused():
    clean = sanitize(line(10, 1.0), (0, 0))
    assert clean.viewport == (clean.events[:, 1].max() + 1, 541.0)
    with pytest.raises(InvalidSession) as e:
        sanitize(np.array([[0, 0, 0, 0.0]]), (0, -3))
    assert e.value.code == "zero_viewport"


def test_empty_and_single_point_sessions():
    with pytest.raises(InvalidSession) as e:
        render_trail(np.empty((0, 4)), VIEWPORT)
    assert e.value.code == "empty_session"
    with pytest.raises(InvalidSession):
        render_trail([[1, 2, 3]], VIEWPORT)
    one = render_trail([[0.0, 100.0, 100.0, 0.0]], VIEWPORT)
    assert (one == 255).all()  # one point, no segment: a blank picture, not an error


def test_long_sessions_are_windowed_and_capped():
    ev = line(5000, 0.02)
    clean = sanitize(ev, VIEWPORT)
    assert len(session_windows(clean, 400)) == 12
    assert len(session_windows(clean, 400, max_windows=5)) == 5
    images = render_windows(ev, VIEWPORT, (32, 32), 400, max_windows=5)
    assert images.shape == (5, len(MODEL_CHANNELS), 32, 32)


def test_pauses_and_clicks_appear_in_their_channels():
    ev = np.vstack([line(10, 1.0), [[600, 300, 540, 0], [610, 300, 540, 1], [700, 300, 540, 2]]])
    out = draw_channels(sanitize(ev, VIEWPORT), (64, 64))
    assert out[MODEL_CHANNELS.index("pauses")].max() > 0
    assert out[MODEL_CHANNELS.index("clicks")].max() > 0


# --- the picture for people: a faithful, anti-aliased drawing (and a fast one) -------------


def ink(img: np.ndarray) -> np.ndarray:
    """Per-pixel darkness in [0, 1] (0 = white background)."""
    return 1.0 - img.astype(float).min(axis=-1) / 255.0


def test_trail_is_anti_aliased_with_even_ink_whatever_the_slope():
    t = np.arange(200) * 10.0
    flat = np.column_stack([t, 300 + t * 0.6, np.full(200, 540.3), np.zeros(200)])
    diagonal = np.column_stack([t, 300 + t * 0.6 / np.sqrt(2), 200 + t * 0.6 / np.sqrt(2), 0 * t])
    partial = ink(render_trail(diagonal, VIEWPORT))
    assert ((partial > 0.05) & (partial < 0.6)).sum() > 40  # soft edges, not a staircase
    # below saturation (gain 0.5) the ink is proportional to the coverage: one pixel of
    # line deposits the same coverage whatever its slope
    a, b = (ink(render_trail(ev, VIEWPORT, line_gain=0.5)) for ev in (flat, diagonal))
    assert a.sum() == pytest.approx(b.sum(), rel=0.03)


def test_trail_keeps_the_viewport_aspect():
    side = 400.0  # a square stroke on a 16:9 page stays square in the picture
    s = np.linspace(0, 1, 100)
    path = np.concatenate(
        [
            np.column_stack([s, 0 * s]),
            np.column_stack([1 + 0 * s, s]),
            np.column_stack([1 - s, 1 + 0 * s]),
        ]
    )
    ev = np.column_stack(
        [
            np.arange(len(path)) * 10.0,
            700 + side * path[:, 0],
            300 + side * path[:, 1],
            np.zeros(len(path)),
        ]
    )
    rows, cols = np.nonzero(ink(render_trail(ev, VIEWPORT, (160, 300))) > 0.3)
    assert (cols.max() - cols.min()) / (rows.max() - rows.min()) == pytest.approx(1.0, abs=0.08)


def test_mid_speed_is_the_middle_of_the_colormap():
    mid = np.sqrt(SPEED_RANGE[0] * SPEED_RANGE[1])
    img = render_trail(line(60, mid, 540.5), VIEWPORT).reshape(-1, 3).astype(float)
    solid = img[ink(img[None])[0] > 0.6]
    assert len(solid) and np.abs(solid - PLASMA[len(PLASMA) // 2]).sum(1).mean() < 60


def test_click_rings_are_drawn_over_the_trail_and_near_the_edge():
    ev = np.vstack(
        [line(80, 1.0), [[900, 500, 540, 3], [950, 500, 540, 4], [960, 1, 1, 1], [990, 1, 1, 2]]]
    )
    img = render_trail(ev, VIEWPORT).reshape(-1, 3).astype(float)
    assert (np.abs(img - RIGHT_COLOUR).sum(1) < 30).sum() > 5  # the ring covers the trail
    assert (np.abs(img - LEFT_COLOUR).sum(1) < 30).sum() > 3  # a corner click is clipped, drawn


def test_trail_is_deterministic_and_leaves_the_input_alone():
    rng = np.random.default_rng(0)
    ev = np.column_stack(
        [
            np.cumsum(rng.uniform(1, 20, 500)),
            rng.uniform(0, 1920, 500),
            rng.uniform(0, 1080, 500),
            rng.integers(0, 5, 500),
        ]
    )
    before = ev.copy()
    first = render_trail(ev, VIEWPORT)
    assert np.array_equal(first, render_trail(ev, VIEWPORT)) and np.array_equal(ev, before)


def test_packed_coverage_count_equals_the_two_count_fallback(monkeypatch):
    rng = np.random.default_rng(1)
    ev = np.column_stack(
        [
            np.cumsum(rng.uniform(1, 30, 3000)),
            rng.uniform(0, 1920, 3000),
            rng.uniform(0, 1080, 3000),
            np.zeros(3000),
        ]
    )
    packed = render_trail(ev, VIEWPORT)
    monkeypatch.setattr(renderer_mouse, "_PACK_MAX_SAMPLES", 0)
    assert np.abs(render_trail(ev, VIEWPORT).astype(int) - packed).max() <= 1


@settings(max_examples=60, deadline=None)
@given(
    arrays(np.float64, st.tuples(st.integers(2, 120), st.just(4)), elements=st.floats(0, 1900)),
    st.integers(8, 260),
    st.integers(8, 260),
)
def test_any_clean_session_draws_inside_a_white_frame(ev, h, w):
    ev = ev.copy()
    ev[:, 0] = np.cumsum(ev[:, 0])
    ev[:, 3] = 0  # moves only: click rings may reach past the margin
    img = render_trail(ev, VIEWPORT, (h, w))
    assert img.shape == (h, w, 3)
    assert (img[0] == 255).all() and (img[-1] == 255).all()  # the 2-px margin holds the trail
    assert (img[:, 0] == 255).all() and (img[:, -1] == 255).all()


# --- the model input: semantics frozen (trained models depend on them) --------------------


def test_model_channels_match_the_values_the_models_were_trained_on():
    t = np.arange(0, 4000, 8.0)
    x = 600 + 400 * np.cos(t / 700) + 30 * np.sin(t / 90)
    y = 500 + 300 * np.sin(t / 500)
    ev = np.column_stack([t, x, y, np.zeros_like(t)])
    ev[200:, 0] += 400  # a pause
    clicks = [[1000, x[125], y[125], 1], [1090, x[125], y[125], 2]]
    clicks += [[3000, x[375], y[375], 3], [3120, x[375], y[375], 4]]
    out = render_channels(np.vstack([ev, clicks]), VIEWPORT)
    # computed by the renderer before the speed work (commit 7436477); the channels since
    # are bit-identical on this and on synthetic sessions
    sums = [190.7602, 117.0918, 0.3723, 31.4524, 5.0304, -1.4856, 91.6618, 62.4315]
    peaks = [1.0, 1.0, 0.3232, 0.8108, 0.3906, 0.664, 1.0, 1.0]
    assert out.reshape(8, -1).sum(1) == pytest.approx(sums, abs=2e-3)
    assert np.abs(out).reshape(8, -1).max(1) == pytest.approx(peaks, abs=2e-4)


# --- the picture for people: frozen too (review images and the baseline model read it) -----


def _walk(seed: int, n: int) -> np.ndarray:
    """A random-walk session with gaps, clicks of both buttons and rings at the edges."""
    rng = np.random.default_rng(seed)
    t = np.cumsum(rng.integers(1, 25, n)).astype(float)
    t[rng.integers(0, n, 3)] += 2000.0  # pauses longer than GAP_MS are not drawn
    t = np.maximum.accumulate(t)
    xy = np.cumsum(rng.normal(0, 6, (n, 2)), axis=0) + np.array([960.0, 540.0])
    code = np.where(rng.random(n) < 0.02, rng.choice([1, 2, 3, 4], n), 0)
    ev = np.column_stack([t, xy, code])
    ev[:5, 1:3] = [[2, 2], [1910, 3], [5, 1075], [1918, 1078], [960, 0]]
    ev[:5, 3] = [1, 3, 1, 3, 1]
    return ev


@pytest.mark.parametrize(
    ("seed", "n", "size", "gain", "sums", "inked"),
    [
        (0, 3000, (224, 224), 1.6, [12644356, 12495202, 12304761], 3462),
        (1, 800, (100, 300), 1.6, [7622966, 7551724, 7399304], 1772),
        (2, 5000, (64, 64), 1.6, [1008704, 978017, 921995], 780),
        (3, 3000, (224, 224), 0.5, [12675442, 12585945, 12493864], 3143),
    ],
)
def test_trail_pictures_match_the_renderer_before_the_speed_work(seed, n, size, gain, sums, inked):
    # computed by the renderer at commit fabd2f4, before the second speed pass; the pictures
    # since are byte-identical on these and on 340 synthetic and random sessions
    img = render_trail(_walk(seed, n), VIEWPORT, size, gain)
    assert img.reshape(-1, 3).astype(np.int64).sum(0).tolist() == sums
    assert int((img.min(-1) < 255).sum()) == inked
