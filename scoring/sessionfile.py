"""The JSON Lines session file format: one page session per line.

::

    {"session_id": "…", "user_id": "…", "viewport": [width, height],
     "events": [[t_ms, x, y, code], …], "label": "genuine"}

``label`` is optional (``genuine``, ``impostor``, ``customer`` or ``noncustomer``).
``t_ms`` is milliseconds from any origin (float). Codes: 0 move, 1 left down, 2 left up,
3 right down, 4 right up, 5 middle down, 6 middle up, 7 wheel.

What the *file* layer checks (a violation raises :class:`~renderer.errors.InvalidSession`
naming the line, or with ``on_error="skip"`` is counted and skipped): the line is a JSON
object with a non-empty string ``session_id``, a string ``user_id`` (may be empty), a
``viewport`` of two numbers, ``events`` a list of 4-number rows (``null``/``"NaN"`` and
``Infinity`` are accepted as non-finite numbers) of at most ``MAX_EVENTS`` rows, and a known
``label`` or none. The *content* of events (garbage coordinates, duplicate or unsorted
timestamps, off-viewport points, zero viewports) is left to
:func:`renderer.mouse.sanitize`, so a file round-trips exactly what was collected.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np

from renderer.errors import InvalidSession
from renderer.mouse import MAX_EVENTS

LABELS = ("genuine", "impostor", "customer", "noncustomer")
POSITIVE = {"impostor": 1, "genuine": 0, "noncustomer": 1, "customer": 0}
"""Score direction: higher = more likely the positive class (impostor / non-customer)."""


@dataclass
class SessionRecord:
    session_id: str
    user_id: str
    viewport: tuple[float, float]
    events: np.ndarray
    label: str | None = None

    def to_json(self) -> str:
        events = [[_num(v) for v in row] for row in self.events.tolist()]
        obj: dict[str, Any] = {
            "session_id": self.session_id,
            "user_id": self.user_id,
            "viewport": [_num(self.viewport[0]), _num(self.viewport[1])],
            "events": events,
        }
        if self.label is not None:
            obj["label"] = self.label
        return json.dumps(obj, separators=(",", ":"), allow_nan=False)


def _num(v: float) -> float | int | None:
    """JSON has no NaN: non-finite numbers are written as null (read back as NaN)."""
    if not math.isfinite(v):
        return None
    return int(v) if float(v).is_integer() and abs(v) < 2**53 else round(float(v), 3)


def _events(raw: Any, where: str) -> np.ndarray:
    if not isinstance(raw, list):
        raise InvalidSession(f"{where}: events must be a list", "bad_events")
    if len(raw) > MAX_EVENTS:
        raise InvalidSession(
            f"{where}: {len(raw)} events; at most {MAX_EVENTS} per session", "session_too_large"
        )
    if not raw:
        return np.empty((0, 4))
    if not all(isinstance(row, list) and len(row) == 4 for row in raw):
        raise InvalidSession(f"{where}: every event must be [t_ms, x, y, code]", "bad_events")
    try:
        arr = np.array(raw, dtype=np.float64)  # None → NaN, "NaN"/"inf" strings parse too
    except (TypeError, ValueError) as e:
        raise InvalidSession(f"{where}: events must be numbers: {e}", "bad_events") from e
    return arr


def _viewport(raw: Any, where: str) -> tuple[float, float]:
    ok = isinstance(raw, list) and len(raw) == 2
    ok = ok and all(isinstance(v, int | float) and not isinstance(v, bool) for v in raw)
    if not ok:
        raise InvalidSession(f"{where}: viewport must be [width, height]", "bad_viewport")
    return float(raw[0]), float(raw[1])


def parse_line(line: str, where: str = "line") -> SessionRecord:
    """One JSON Lines record; raises InvalidSession with a code and ``where`` in the message."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise InvalidSession(f"{where}: not JSON: {e}", "bad_json") from e
    if not isinstance(obj, dict):
        raise InvalidSession(f"{where}: a session must be a JSON object", "bad_json")
    sid, user = obj.get("session_id"), obj.get("user_id", "")
    if not isinstance(sid, str) or not sid:
        raise InvalidSession(f"{where}: session_id must be a non-empty string", "bad_session_id")
    if not isinstance(user, str):
        raise InvalidSession(f"{where}: user_id must be a string", "bad_user_id")
    label = obj.get("label")
    if label is not None and label not in LABELS:
        raise InvalidSession(f"{where}: label must be one of {', '.join(LABELS)}", "bad_label")
    viewport = _viewport(obj.get("viewport"), where)
    return SessionRecord(sid, user, viewport, _events(obj.get("events"), where), label)


@dataclass
class ReadReport:
    read: int = 0
    skipped: int = 0
    errors: list[str] | None = None


def iter_sessions(
    path: Path, on_error: Literal["raise", "skip"] = "raise", report: ReadReport | None = None
) -> Iterator[SessionRecord]:
    """Stream the sessions of a file; blank lines are ignored."""
    report = report if report is not None else ReadReport()
    report.errors = report.errors or []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = parse_line(line, f"{path}:{number}")
            except InvalidSession as e:
                if on_error == "raise":
                    raise
                report.skipped += 1
                report.errors.append(f"{e.code}: {e}")
                continue
            report.read += 1
            yield record


def read_sessions(path: Path, on_error: Literal["raise", "skip"] = "raise") -> list[SessionRecord]:
    return list(iter_sessions(path, on_error))


def write_sessions(out: IO[str] | Path, records: Iterable[SessionRecord]) -> int:
    """Write records as JSON Lines (atomically when given a path); returns how many."""
    if isinstance(out, Path):
        tmp = out.with_suffix(out.suffix + ".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            n = write_sessions(fh, records)
        tmp.replace(out)
        return n
    n = 0
    for record in records:
        out.write(record.to_json() + "\n")
        n += 1
    return n
