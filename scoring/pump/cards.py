"""Dynamometer cards in: validation and the two CSV layouts and the JSON shape.

A card is a closed loop of (position, load) points in whatever units the instrument used.
Nothing here converts units: the renderer normalises each axis to its own range, so kN and lbf,
mm and inches give the same image.

CSV layouts (a UTF-8 byte-order mark and a header row are accepted):

- **two columns** ``position,load`` (also ``x,y``): one card per file, in stroke order;
- **long** ``graph_id,x,y,point_no`` (extra columns ``well_id``, ``kind``, ``mode`` are
  optional): one card per ``graph_id``, points ordered by ``point_no``. Rows repeating a
  ``point_no`` with identical values are dropped (real exports duplicate rows); a repeated
  ``point_no`` with different values is an error.

JSON: ``{"card_id", "well_id"?, "kind"?, "position": [...], "load": [...]}`` or
``{"card_id", "points": [[position, load], ...]}``.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from renderer.errors import InvalidCard

MIN_POINTS = 30
MAX_POINTS = 2000
KINDS = ("surface", "downhole")
CLOSURE_TOLERANCE = 0.2
"""Largest gap between the last and first point, as a fraction of the normalised diagonal.

Real cards restart a little off their first point (card 3787 of the field set: 0.05);
an upstroke without its downstroke has a gap near 1.
"""
MIN_RELATIVE_RANGE = 1e-6


@dataclass(frozen=True)
class Card:
    """One validated card; ``position`` and ``load`` are float64 arrays in stroke order."""

    card_id: str
    position: np.ndarray
    load: np.ndarray
    well_id: str = ""
    kind: str = "surface"
    label: str | None = None

    @property
    def n_points(self) -> int:
        return int(self.position.size)

    def points(self) -> list[list[float]]:
        """JSON-able ``[[position, load], ...]`` as stored in ``PumpCard.points``."""
        return np.column_stack([self.position, self.load]).tolist()


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise InvalidCard(f"kind must be surface or downhole, got {kind!r}", "bad_kind")
    return kind


def _check_range(name: str, values: np.ndarray, card_id: str) -> None:
    span = float(values.max() - values.min())
    scale = max(float(np.abs(values).max()), 1e-300)
    if span <= 0 or span / scale < MIN_RELATIVE_RANGE:
        raise InvalidCard(
            f"card {card_id}: {name} has zero range (all {values[0]:g})", "zero_range"
        )


def _check_closed(position: np.ndarray, load: np.ndarray, card_id: str) -> None:
    x = (position - position.min()) / np.ptp(position)
    y = (load - load.min()) / np.ptp(load)
    gap = math.hypot(x[-1] - x[0], y[-1] - y[0]) / math.sqrt(2)
    if gap > CLOSURE_TOLERANCE:
        raise InvalidCard(
            f"card {card_id}: the stroke is not closed (last point is {gap:.0%} of the card's"
            f" diagonal from the first; at most {CLOSURE_TOLERANCE:.0%} allowed)",
            "not_closed",
        )


def validate(
    card_id: str,
    position: Iterable[float] | np.ndarray,
    load: Iterable[float] | np.ndarray,
    *,
    well_id: str = "",
    kind: str = "surface",
    label: str | None = None,
) -> Card:
    """A :class:`Card`, or :class:`InvalidCard` saying precisely what is wrong."""
    card_id = str(card_id).strip()
    if not card_id or len(card_id) > 200:
        raise InvalidCard("card_id must be 1-200 characters", "bad_card_id")
    if len(str(well_id)) > 200:
        raise InvalidCard("well_id must be at most 200 characters", "bad_well_id")
    try:
        x = np.asarray(position, dtype=np.float64).reshape(-1)
        y = np.asarray(load, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise InvalidCard(f"card {card_id}: points must be numbers ({e})", "not_numeric") from e
    if x.size != y.size:
        raise InvalidCard(
            f"card {card_id}: {x.size} positions but {y.size} loads", "length_mismatch"
        )
    if x.size < MIN_POINTS:
        raise InvalidCard(
            f"card {card_id}: {x.size} points, at least {MIN_POINTS} needed", "too_few_points"
        )
    if x.size > MAX_POINTS:
        raise InvalidCard(
            f"card {card_id}: {x.size} points, at most {MAX_POINTS} allowed", "too_many_points"
        )
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise InvalidCard(f"card {card_id}: NaN or infinite values", "not_finite")
    _check_range("position", x, card_id)
    _check_range("load", y, card_id)
    _check_closed(x, y, card_id)
    return Card(card_id, x, y, str(well_id), _check_kind(kind), label)


def from_json(obj: Any, *, well_id: str = "", kind: str = "surface") -> Card:
    """A card from the JSON API shape (see the module docstring)."""
    if not isinstance(obj, Mapping):
        raise InvalidCard("a card must be a JSON object", "bad_json")
    card_id = obj.get("card_id")
    if not isinstance(card_id, str | int) or isinstance(card_id, bool):
        raise InvalidCard("card_id (string) is required", "bad_card_id")
    if "points" in obj:
        pts = obj["points"]
        if not isinstance(pts, list) or not all(
            isinstance(p, list | tuple) and len(p) == 2 for p in pts
        ):
            raise InvalidCard(f"card {card_id}: points must be [[position, load], ...]", "bad_json")
        position, load = [p[0] for p in pts], [p[1] for p in pts]
    elif isinstance(obj.get("position"), list) and isinstance(obj.get("load"), list):
        position, load = obj["position"], obj["load"]
    else:
        raise InvalidCard(f"card {card_id}: give points, or position and load lists", "bad_json")
    if any(isinstance(v, bool) or not isinstance(v, int | float) for v in [*position, *load]):
        raise InvalidCard(f"card {card_id}: points must be numbers", "not_numeric")
    return validate(
        str(card_id),
        position,
        load,
        well_id=str(obj.get("well_id", well_id) or ""),
        kind=str(obj.get("kind", kind)),
    )


def _float(raw: str, line: int) -> float:
    try:
        return float(raw)
    except ValueError as e:
        raise InvalidCard(f"line {line}: {raw!r} is not a number", "not_numeric") from e


def _rows(text: str) -> tuple[list[str], list[list[str]]]:
    text = text.lstrip("\ufeff")
    rows = [r for r in csv.reader(io.StringIO(text)) if r and any(c.strip() for c in r)]
    if not rows:
        raise InvalidCard("the CSV is empty", "empty_csv")
    header = [c.strip().lower() for c in rows[0]]
    return header, rows[1:]


def parse_csv(
    text: str, *, card_id: str = "card", well_id: str = "", kind: str = "surface"
) -> list[Card]:
    """Cards from a CSV in either layout, told apart by the header."""
    header, body = _rows(text)
    if {"graph_id", "x", "y", "point_no"} <= set(header):
        return _parse_long(header, body, well_id=well_id, kind=kind)
    cols = _two_column_indices(header)
    if cols is None:
        # no header: two bare numeric columns
        if len(header) == 2 and _numeric(header):
            body, cols = [[*header], *body], (0, 1)
        else:
            raise InvalidCard(
                "unknown CSV layout: expected a header position,load (or x,y) or"
                " graph_id,x,y,point_no",
                "bad_layout",
            )
    px, ly = cols
    xs, ys = [], []
    for i, row in enumerate(body, start=2):
        if len(row) <= max(px, ly):
            raise InvalidCard(f"line {i}: expected position and load", "bad_row")
        xs.append(_float(row[px].strip(), i))
        ys.append(_float(row[ly].strip(), i))
    return [validate(card_id, xs, ys, well_id=well_id, kind=kind)]


def _numeric(cells: list[str]) -> bool:
    try:
        [float(c) for c in cells]
    except ValueError:
        return False
    return True


def _two_column_indices(header: list[str]) -> tuple[int, int] | None:
    for a, b in (("position", "load"), ("x", "y")):
        if a in header and b in header:
            return header.index(a), header.index(b)
    return None


def _parse_long(header: list[str], body: list[list[str]], *, well_id: str, kind: str) -> list[Card]:
    col = {name: header.index(name) for name in header}
    groups: dict[str, dict[str, Any]] = {}
    for i, row in enumerate(body, start=2):
        if len(row) < len(header):
            raise InvalidCard(f"line {i}: {len(row)} fields, expected {len(header)}", "bad_row")
        gid = row[col["graph_id"]].strip()
        g = groups.setdefault(gid, {"pts": {}, "row": row})
        no = _float(row[col["point_no"]], i)
        xy = (_float(row[col["x"]], i), _float(row[col["y"]], i))
        if no in g["pts"] and g["pts"][no] != xy:
            raise InvalidCard(
                f"card {gid}: point_no {no:g} appears twice with different values",
                "duplicate_point",
            )
        g["pts"][no] = xy
    return [_long_card(gid, g, col, well_id=well_id, kind=kind) for gid, g in groups.items()]


def _long_card(
    gid: str, g: dict[str, Any], col: dict[str, int], *, well_id: str, kind: str
) -> Card:
    order = sorted(g["pts"])
    pts = np.array([g["pts"][k] for k in order], dtype=np.float64).reshape(-1, 2)
    row = g["row"]

    def extra(name: str, default: str) -> str:
        return row[col[name]].strip() if name in col and row[col[name]].strip() else default

    label = extra("mode", "") or None
    return validate(
        gid,
        pts[:, 0],
        pts[:, 1],
        well_id=extra("well_id", well_id),
        kind=extra("kind", kind),
        label=label,
    )


def to_long_csv(cards: Iterable[Card], *, with_labels: bool = False) -> str:
    """Cards in the long layout (``graph_id,x,y,point_no`` [+ ``kind,mode``])."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    header = ["graph_id", "x", "y", "point_no"]
    if with_labels:
        header += ["kind", "mode"]
    writer.writerow(header)
    for card in cards:
        tail = [card.kind, card.label or ""] if with_labels else []
        for i, (x, y) in enumerate(zip(card.position, card.load, strict=True)):
            writer.writerow([card.card_id, f"{x:.6g}", f"{y:.6g}", i, *tail])
    return out.getvalue()
