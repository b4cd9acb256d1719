"""Render the same 10,000-point session with our renderer and with matplotlib (Agg).

    .venv/bin/python bench/render.py [--points 10000] [--repeats 30] [--size 224]

Both draw a speed-coloured, anti-aliased trail and the click circles at the same size on one
thread; matplotlib reuses its figure (its fastest way). Ends with the line
``ms_per_image=… speedup_vs_matplotlib=…`` (median times, measured in the same run).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import matplotlib

matplotlib.use("Agg")
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

from renderer.mouse import kinematics, render_trail, sanitize, speed_level
from scoring.mouse.synth import draw_habits, generate_events


def session(points: int) -> tuple[np.ndarray, tuple[int, int]]:
    rng = np.random.default_rng(3)
    events, viewport = generate_events(draw_habits(rng), points, rng)
    return events, viewport


class MatplotlibRenderer:
    """The straightforward way: a LineCollection coloured by speed and two scatters."""

    def __init__(self, size: int, viewport: tuple[int, int]) -> None:
        self.fig = Figure(figsize=(1, 1), dpi=size)
        self.canvas = FigureCanvasAgg(self.fig)
        self.ax = self.fig.add_axes((0, 0, 1, 1))
        self.viewport = viewport

    def __call__(self, events: np.ndarray) -> np.ndarray:
        clean = sanitize(events, self.viewport)
        ev = clean.events
        level = speed_level(kinematics(ev).speed)
        ax = self.ax
        ax.clear()
        ax.set_xlim(0, self.viewport[0])
        ax.set_ylim(self.viewport[1], 0)
        ax.set_aspect("equal")
        ax.axis("off")
        segs = np.stack([ev[:-1, 1:3], ev[1:, 1:3]], axis=1)
        ax.add_collection(LineCollection(segs, cmap="plasma", array=level, linewidths=0.8))
        for code, colour in ((1, "green"), (3, "red")):
            pts = ev[ev[:, 3] == code]
            ax.scatter(pts[:, 1], pts[:, 2], s=20, facecolors="none", edgecolors=colour)
        self.canvas.draw()
        return np.asarray(self.canvas.buffer_rgba())[..., :3].copy()


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--size", type=int, default=224)
    args = ap.parse_args()
    events, viewport = session(args.points)
    clicks = int(np.isin(events[:, 3], (1, 3)).sum())
    mpl = MatplotlibRenderer(args.size, viewport)
    ours_ms = median_ms(
        lambda: render_trail(events, viewport, (args.size, args.size)), args.repeats
    )
    mpl_ms = median_ms(lambda: mpl(events), max(3, args.repeats // 5))
    print(f"session: {len(events)} points, {clicks} clicks, viewport {viewport}, {args.size}²")
    print(f"ours:       {ours_ms:8.2f} ms/image")
    print(f"matplotlib: {mpl_ms:8.2f} ms/image")
    print(f"ms_per_image={ours_ms:.2f} speedup_vs_matplotlib={mpl_ms / ours_ms:.1f}")


if __name__ == "__main__":
    main()
