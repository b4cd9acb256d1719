import json
from pathlib import Path

import numpy as np
import pytest

from renderer.errors import InvalidSession
from scoring.sessionfile import (
    ReadReport,
    SessionRecord,
    iter_sessions,
    parse_line,
    read_sessions,
    write_sessions,
)


def record(sid: str = "s1", n: int = 5, label: str | None = "genuine") -> SessionRecord:
    t = np.arange(n) * 7.5
    ev = np.column_stack([t, t * 2, t + 0.25, np.zeros(n)])
    return SessionRecord(sid, "u1", (1920.0, 1080.0), ev, label)


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    records = [record("a"), record("b", 3, None)]
    assert write_sessions(path, records) == 2
    back = read_sessions(path)
    assert [r.session_id for r in back] == ["a", "b"]
    assert back[1].label is None
    np.testing.assert_allclose(back[0].events, records[0].events)
    assert back[0].viewport == (1920.0, 1080.0)


def test_non_finite_values_are_written_as_null_and_read_as_nan(tmp_path: Path) -> None:
    r = record()
    r.events[1, 1] = np.nan
    r.events[2, 2] = np.inf
    line = r.to_json()
    assert "NaN" not in line and "Infinity" not in line
    back = parse_line(line)
    assert np.isnan(back.events[1, 1]) and np.isnan(back.events[2, 2])


@pytest.mark.parametrize(
    ("line", "code"),
    [
        ("not json", "bad_json"),
        ("[1, 2]", "bad_json"),
        ('{"user_id": "u", "viewport": [1, 1], "events": []}', "bad_session_id"),
        ('{"session_id": "s", "user_id": 3, "viewport": [1, 1], "events": []}', "bad_user_id"),
        ('{"session_id": "s", "viewport": [1], "events": []}', "bad_viewport"),
        ('{"session_id": "s", "viewport": [true, 1], "events": []}', "bad_viewport"),
        ('{"session_id": "s", "viewport": [1, 1], "events": [[1, 2, 3]]}', "bad_events"),
        ('{"session_id": "s", "viewport": [1, 1], "events": [[1, 2, 3, "x"]]}', "bad_events"),
        ('{"session_id": "s", "viewport": [1, 1], "events": {}}', "bad_events"),
        ('{"session_id": "s", "viewport": [1, 1], "events": [], "label": "owner"}', "bad_label"),
    ],
)
def test_malformed_lines_get_a_code(line: str, code: str) -> None:
    with pytest.raises(InvalidSession) as e:
        parse_line(line, "f.jsonl:7")
    assert e.value.code == code
    assert "f.jsonl:7" in str(e.value)


def test_a_bad_line_names_its_number_or_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_text(record("a").to_json() + "\n\n{oops\n" + record("c").to_json() + "\n")
    with pytest.raises(InvalidSession, match=r"s\.jsonl:3"):
        read_sessions(path)
    report = ReadReport()
    got = list(iter_sessions(path, "skip", report))
    assert [r.session_id for r in got] == ["a", "c"]
    assert report.read == 2 and report.skipped == 1 and report.errors


def test_dirty_content_is_kept_for_the_renderer_to_judge(tmp_path: Path) -> None:
    raw = {
        "session_id": "d",
        "user_id": "",
        "viewport": [0, 0],
        "events": [[5, 65535, 65535, 0], [1, 10, 10, 0], [1, 10, 10, 0]],
    }
    back = parse_line(json.dumps(raw))
    assert back.events.shape == (3, 4) and back.viewport == (0.0, 0.0)


def test_huge_sessions_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import scoring.sessionfile as sf

    monkeypatch.setattr(sf, "MAX_EVENTS", 3)
    line = json.dumps({"session_id": "h", "viewport": [1, 1], "events": [[0, 0, 0, 0]] * 4})
    with pytest.raises(InvalidSession) as e:
        parse_line(line)
    assert e.value.code == "session_too_large"
