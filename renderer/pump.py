"""A dynamometer card drawn as an image: normalised position (x) against load (y).

Pure and deterministic: the same points give the same pixels. Each axis is scaled to its own
range, so units and offsets do not matter; the path is closed (last point joined to the
first), resampled by arc length so that 100 and 2,000 points draw the same line, and drawn
with a fixed width. Optional fill shades the inside of the loop at ``fill_value``.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.draw import polygon as fill_polygon

from renderer.errors import InvalidCard

MARGIN = 0.06
"""Blank border, as a fraction of the image side, so that the line is never clipped."""
STEP_PX = 0.35
"""Arc-length spacing of the resampled path in pixels: dense enough to leave no gaps."""


def normalise(position: np.ndarray, load: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both axes scaled to [0, 1] over their own range."""
    x = np.asarray(position, dtype=np.float64)
    y = np.asarray(load, dtype=np.float64)
    if x.size < 2 or x.size != y.size:
        raise InvalidCard("a card needs at least two (position, load) points", "too_few_points")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise InvalidCard("NaN or infinite values in the card", "not_finite")
    dx, dy = np.ptp(x), np.ptp(y)
    if dx <= 0 or dy <= 0:
        raise InvalidCard("the card has zero position or load range", "zero_range")
    return (x - x.min()) / dx, (y - y.min()) / dy


def _to_pixels(x: np.ndarray, y: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    span = (size - 1) * (1 - 2 * MARGIN)
    col = (size - 1) * MARGIN + x * span
    row = (size - 1) * MARGIN + (1 - y) * span  # high load at the top
    return row, col


def _resample_closed(row: np.ndarray, col: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r = np.append(row, row[0])
    c = np.append(col, col[0])
    seg = np.hypot(np.diff(r), np.diff(c))
    s = np.concatenate([[0.0], np.cumsum(seg)])
    n = max(int(np.ceil(s[-1] / STEP_PX)), 2)
    t = np.linspace(0.0, s[-1], n)
    return np.interp(t, s, r), np.interp(t, s, c)


def render_card(
    position: np.ndarray,
    load: np.ndarray,
    *,
    size: int = 64,
    line_width: float = 1.5,
    fill: bool = False,
    fill_value: float = 0.35,
) -> np.ndarray:
    """The card as a float32 image (size, size) in [0, 1]: line 1, fill ``fill_value``."""
    if size < 8:
        raise InvalidCard(f"image size {size} is too small", "bad_size")
    x, y = normalise(position, load)
    row, col = _to_pixels(x, y, size)
    rr, cc = _resample_closed(row, col)
    hit = np.zeros((size, size), dtype=bool)
    hit[np.rint(rr).astype(int), np.rint(cc).astype(int)] = True
    # distance to the nearest path pixel, turned into an anti-aliased line of fixed width
    dist = ndimage.distance_transform_edt(~hit)
    image = np.clip(line_width / 2 + 0.5 - dist, 0.0, 1.0).astype(np.float32)
    if fill:
        inside = np.zeros((size, size), dtype=np.float32)
        pr, pc = fill_polygon(row, col, shape=(size, size))
        inside[pr, pc] = fill_value
        image = np.maximum(image, inside)
    return image


def render_batch(
    cards: list[tuple[np.ndarray, np.ndarray]],
    *,
    size: int = 64,
    line_width: float = 1.5,
    fill: bool = False,
) -> np.ndarray:
    """Many cards as a float32 array (N, size, size)."""
    out = np.zeros((len(cards), size, size), dtype=np.float32)
    for i, (pos, load) in enumerate(cards):
        out[i] = render_card(pos, load, size=size, line_width=line_width, fill=fill)
    return out


def to_png_array(image: np.ndarray, scale: int = 1) -> np.ndarray:
    """A uint8 picture for people: dark line on white, each pixel repeated ``scale`` times."""
    pixels = np.asarray(image, dtype=np.float32)
    if scale > 1:
        pixels = np.kron(pixels, np.ones((scale, scale), dtype=np.float32))
    return np.rint(255 * (1 - np.clip(pixels, 0, 1))).astype(np.uint8)
