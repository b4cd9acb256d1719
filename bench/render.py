"""Render the same 10,000-point session with our renderer and with matplotlib (Agg).

    .venv/bin/python bench/render.py [--points 10000] [--repeats 30] [--size 224]

Both draw a speed-coloured (fixed scale), anti-aliased trail and the click circles at the
same size on one thread. matplotlib is given its two straightforward fast ways, both on a
reused figure: clearing the axes and adding the artists again, and updating artists made
once (``set_segments``/``set_offsets``, the animation idiom); the faster one is the baseline.

The renderers are timed in interleaved rounds (ten of ours, one of each matplotlib way) so
that both see the same machine load; the first of our images in a round starts with caches
that matplotlib's large working set has emptied (about 1.5× slower) and counts like the
rest. The figures are medians of process CPU time per image (``time.process_time``: time
spent on a core, not time spent waiting for one on a shared machine); wall-clock medians
are printed too. Ends with the line
``ms_per_image=… speedup_vs_matplotlib=…`` (CPU-time medians, measured in the same run).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import matplotlib

matplotlib.use("Agg")
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

from renderer.mouse import LEFT_DOWN, RIGHT_DOWN, kinematics, render_trail, sanitize, speed_level
from scoring.mouse.synth import draw_habits, generate_events

CLICKS = ((LEFT_DOWN, "green"), (RIGHT_DOWN, "red"))


def session(points: int) -> tuple[np.ndarray, tuple[int, int]]:
    rng = np.random.default_rng(3)
    events, viewport = generate_events(draw_habits(rng), points, rng)
    return events, viewport


class _Figure:
    """A reused 1-inch figure at ``size`` dpi with one axes showing the whole viewport."""

    def __init__(self, size: int, viewport: tuple[int, int]) -> None:
        self.fig = Figure(figsize=(1, 1), dpi=size)
        self.canvas = FigureCanvasAgg(self.fig)
        self.ax = self.fig.add_axes((0, 0, 1, 1))
        self.viewport = viewport

    def frame(self) -> None:
        ax = self.ax
        ax.set_xlim(0, self.viewport[0])
        ax.set_ylim(self.viewport[1], 0)
        ax.set_aspect("equal")
        ax.axis("off")

    def draw(self) -> np.ndarray:
        self.canvas.draw()
        return np.asarray(self.canvas.buffer_rgba())[..., :3].copy()


def _segments(events: np.ndarray, viewport: tuple[int, int]) -> tuple[np.ndarray, Any, np.ndarray]:
    ev = sanitize(events, viewport).events
    level = speed_level(kinematics(ev).speed)
    return ev, np.stack([ev[:-1, 1:3], ev[1:, 1:3]], axis=1), level


class MatplotlibRedraw(_Figure):
    """Clear the axes, add a LineCollection coloured by speed and two scatters, draw."""

    def __call__(self, events: np.ndarray) -> np.ndarray:
        ev, segs, level = _segments(events, self.viewport)
        self.ax.clear()
        self.frame()
        lines = LineCollection(segs, cmap="plasma", array=level, linewidths=0.8)
        lines.set_clim(0.0, 1.0)  # the fixed speed scale, as ours
        self.ax.add_collection(lines)
        for code, colour in CLICKS:
            pts = ev[ev[:, 3] == code]
            self.ax.scatter(pts[:, 1], pts[:, 2], s=20, facecolors="none", edgecolors=colour)
        return self.draw()


class MatplotlibUpdate(_Figure):
    """The same artists made once; each image sets their data and draws."""

    def __init__(self, size: int, viewport: tuple[int, int]) -> None:
        super().__init__(size, viewport)
        self.frame()
        self.lines = LineCollection([], cmap="plasma", linewidths=0.8)
        self.lines.set_clim(0.0, 1.0)
        self.ax.add_collection(self.lines)
        self.dots = [
            self.ax.scatter([], [], s=20, facecolors="none", edgecolors=colour)
            for _, colour in CLICKS
        ]

    def __call__(self, events: np.ndarray) -> np.ndarray:
        ev, segs, level = _segments(events, self.viewport)
        self.lines.set_segments(segs)
        self.lines.set_array(level)
        for (code, _), dots in zip(CLICKS, self.dots, strict=True):
            dots.set_offsets(ev[ev[:, 3] == code][:, 1:3])
        return self.draw()


def timed(fn: Callable[[], object], cpu: list[float], wall: list[float]) -> None:
    c0, w0 = time.process_time(), time.perf_counter()
    fn()
    cpu.append(time.process_time() - c0)
    wall.append(time.perf_counter() - w0)


def interleaved(
    fns: dict[str, Callable[[], object]], counts: dict[str, int], rounds: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """CPU and wall seconds of each function, run ``counts[name]`` times per round."""
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    wall: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()  # warm caches and lazily built tables
    for _ in range(rounds):
        for name, fn in fns.items():
            for _ in range(counts[name]):
                timed(fn, cpu[name], wall[name])
    return cpu, wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=30, help="images of ours (matplotlib: 1/10)")
    ap.add_argument("--size", type=int, default=224)
    args = ap.parse_args()
    events, viewport = session(args.points)
    clicks = int(np.isin(events[:, 3], (LEFT_DOWN, RIGHT_DOWN)).sum())
    size = (args.size, args.size)
    redraw = MatplotlibRedraw(args.size, viewport)
    update = MatplotlibUpdate(args.size, viewport)
    fns: dict[str, Callable[[], object]] = {
        "ours": lambda: render_trail(events, viewport, size),
        "matplotlib, clear + redraw": lambda: redraw(events),
        "matplotlib, artists updated": lambda: update(events),
    }
    rounds = max(5, args.repeats // 10)
    cpu, wall = interleaved(fns, {k: 10 if k == "ours" else 1 for k in fns}, rounds)
    ms = {k: 1000 * float(np.median(v)) for k, v in cpu.items()}
    print(f"session: {len(events)} points, {clicks} clicks, viewport {viewport}, {args.size}²")
    print(f"{'':30s} {'CPU ms/image':>13s} {'wall ms/image':>14s}")
    for k in fns:
        print(f"{k:30s} {ms[k]:13.2f} {1000 * float(np.median(wall[k])):14.2f}")
    base = min(v for k, v in ms.items() if k != "ours")
    print(f"ms_per_image={ms['ours']:.2f} speedup_vs_matplotlib={base / ms['ours']:.1f}")


if __name__ == "__main__":
    main()
