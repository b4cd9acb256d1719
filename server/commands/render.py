"""``trailguard render``: pictures for people. ``render mouse`` draws session trails."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from renderer.errors import InvalidSession
from renderer.mouse import render_trail
from scoring.sessionfile import ReadReport, iter_sessions
from server.settings import Settings


def register(sub: argparse._SubParsersAction) -> None:
    render = sub.add_parser("render", help="draw data as PNG images for people")
    rsub = render.add_subparsers(dest="render_command", metavar="KIND", required=True)
    mouse = rsub.add_parser("mouse", help="one speed-coloured trail PNG per session")
    mouse.add_argument("sessions", type=Path, help="JSON Lines session file")
    mouse.add_argument("--out", type=Path, required=True, help="directory for the PNGs")
    mouse.add_argument("--size", type=int, default=224, help="image side in pixels")
    mouse.add_argument("--limit", type=int, default=0, help="stop after this many (0: all)")
    mouse.set_defaults(func=render_mouse)
    from server.commands.pump import register_render  # the pump area owns its drawing

    register_render(rsub)


def safe_name(session_id: str) -> str:
    """A file name from a session id: anything but letters, digits, - and _ becomes _."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", session_id)[:120] or "session"


def render_mouse(settings: Settings, args: argparse.Namespace) -> int:
    args.out.mkdir(parents=True, exist_ok=True)
    report = ReadReport()
    written, unusable = 0, 0
    for record in tqdm(iter_sessions(args.sessions, "skip", report), desc="render"):
        try:
            image = render_trail(record.events, record.viewport, (args.size, args.size))
        except InvalidSession as e:
            unusable += 1
            print(f"{record.session_id}: not rendered ({e.code}): {e}")
            continue
        Image.fromarray(image).save(args.out / f"{safe_name(record.session_id)}.png")
        written += 1
        if args.limit and written >= args.limit:
            break
    for err in report.errors or []:
        print(f"skipped line: {err}")
    print(f"wrote {written} PNGs to {args.out} ({unusable} unusable, {report.skipped} bad lines)")
    return 0
