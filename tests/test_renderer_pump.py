"""The card renderer: normalised axes, closed path, fixed width, fill, determinism, invariances."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from renderer.errors import InvalidCard
from renderer.pump import normalise, render_card, to_png_array


def rectangle(n: int) -> tuple[np.ndarray, np.ndarray]:
    """A card-like rectangle walked anticlockwise in n points: up the left, along the top …"""
    corners = np.array([[0, 0], [0, 1], [1, 1], [1, 0], [0, 0]], dtype=float)
    s = np.linspace(0, 4, n, endpoint=False)
    i = s.astype(int)
    f = (s - i)[:, None]
    pts = corners[i] * (1 - f) + corners[i + 1] * f
    return pts[:, 0], pts[:, 1]


def test_shape_range_and_determinism() -> None:
    x, y = rectangle(400)
    a = render_card(x, y, size=64)
    b = render_card(x.copy(), y.copy(), size=64)
    assert a.shape == (64, 64) and a.dtype == np.float32
    assert a.min() >= 0.0 and a.max() == 1.0
    assert np.array_equal(a, b)


def test_units_offsets_and_point_count_do_not_matter() -> None:
    x, y = rectangle(1200)
    base = render_card(x, y, size=64)
    scaled = render_card(x * 39.37 + 500, y * 224.8 - 3000, size=64)
    assert np.allclose(base, scaled, atol=1e-6)
    sparse = render_card(*rectangle(40), size=64)
    assert np.abs(sparse - base).mean() < 0.01


def test_path_is_closed_and_line_width_is_fixed() -> None:
    # the last point is far from the first: the join must still be drawn
    x, y = rectangle(400)
    image = render_card(x[:-60], y[:-60], size=64, line_width=1.5)
    # the dropped points ran along the bottom from x = 0.4 back to 0: the closing segment
    # (last point → first point) must draw that stretch of the bottom edge anyway
    bottom = image[59]
    assert (bottom[6:24] > 0.5).all()
    # a straight vertical line of width 1.5 is one full pixel plus two quarter pixels wide
    row = image[32]
    assert row[4] == 1.0 and row[3] == pytest.approx(0.25) and row[2] == 0.0
    wide = render_card(x, y, size=64, line_width=4.0)
    assert (wide[32] > 0.5).sum() > (image[32] > 0.5).sum()


def test_high_load_is_at_the_top_and_fill_is_inside() -> None:
    t = np.linspace(0, 2 * np.pi, 300, endpoint=False)
    # a triangle-ish loop with its peak load at the right
    x = (1 - np.cos(t)) / 2
    y = x * (1 + np.sin(t)) / 2
    image = render_card(x, y, size=64, fill=True, fill_value=0.35)
    top_row = np.nonzero(image.max(axis=1) > 0.5)[0][0]
    assert np.argmax(image[top_row]) > 40
    filled = render_card(*rectangle(400), size=64, fill=True, fill_value=0.35)
    assert filled[32, 32] == pytest.approx(0.35)
    assert render_card(*rectangle(400), size=64)[32, 32] == 0.0


def test_png_array_is_dark_line_on_white() -> None:
    image = render_card(*rectangle(100), size=32)
    png = to_png_array(image, scale=2)
    assert png.shape == (64, 64) and png.dtype == np.uint8
    assert png.max() == 255 and png.min() == 0


@pytest.mark.parametrize(
    ("x", "y", "code"),
    [
        (np.ones(50), np.arange(50.0), "zero_range"),
        (np.arange(50.0), np.r_[np.arange(49.0), np.inf], "not_finite"),
        (np.arange(1.0), np.arange(1.0), "too_few_points"),
    ],
)
def test_bad_cards(x: np.ndarray, y: np.ndarray, code: str) -> None:
    with pytest.raises(InvalidCard) as info:
        render_card(x, y)
    assert info.value.code == code


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(30, 2000),
    sx=st.floats(1e-2, 1e5),
    sy=st.floats(1e-2, 1e5),
    seed=st.integers(0, 2**32 - 1),
)
def test_any_card_renders_within_the_frame(n: int, sx: float, sy: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=n) * sx, rng.normal(size=n) * sy
    image = render_card(x, y, size=48, fill=True)
    assert image.shape == (48, 48) and np.isfinite(image).all()
    nx, ny = normalise(x, y)
    assert nx.min() == 0 and nx.max() == 1 and ny.min() == 0 and ny.max() == 1
    # the margin keeps the outermost pixels blank whatever the card
    assert image[0].max() == 0 and image[-1].max() == 0
