"""Card ingestion: both CSV layouts, JSON, the real field cards, and garbage with precise codes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from renderer.errors import InvalidCard
from scoring.pump.cards import (
    MAX_POINTS,
    MIN_POINTS,
    from_json,
    parse_csv,
    to_long_csv,
    validate,
)

# the seven real cards live beside the repository (../shared), not in it
FIELD = Path(__file__).resolve().parents[2] / "shared/data/pump_field_cards/demo-dataset.csv"


def loop(n: int, scale_x: float = 1.0, scale_y: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    t = np.arange(n) / n * 2 * np.pi
    return scale_x * (1 - np.cos(t)) / 2, scale_y * (0.5 + 0.4 * np.sin(t))


def two_column(x: np.ndarray, y: np.ndarray, header: str = "position,load") -> str:
    rows = "\n".join(f"{a},{b}" for a, b in zip(x, y, strict=True))
    return f"{header}\n{rows}\n" if header else rows + "\n"


@pytest.mark.parametrize("header", ["position,load", "x,y", "Position,Load", ""])
def test_two_column_layout(header: str) -> None:
    x, y = loop(120, 3000.0, 25.0)
    [card] = parse_csv(two_column(x, y, header), card_id="c1", well_id="w7")
    assert (card.card_id, card.well_id, card.kind, card.n_points) == ("c1", "w7", "surface", 120)
    np.testing.assert_allclose(card.position, x)
    np.testing.assert_allclose(card.load, y)


def test_long_layout_real_field_cards_with_bom() -> None:
    if not FIELD.exists():
        pytest.skip(f"field cards not at {FIELD}")
    raw = FIELD.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")
    cards = parse_csv(raw.decode("utf-8"), well_id="demo")
    ids = [c.card_id for c in cards]
    assert ids == ["3787", "59", "3462", "11470", "3088", "-58806", "131210"]
    # 3462 and -58806 list every row twice: the duplicates are dropped, not drawn twice
    counts = {c.card_id: c.n_points for c in cards}
    assert counts == {
        "3787": 646,
        "59": 631,
        "3462": 536,
        "11470": 722,
        "3088": 547,
        "-58806": 485,
        "131210": 639,
    }
    card = cards[0]
    # ordered by point_no although the file starts at point 524
    assert card.position[0] == 20.0 and card.well_id == "demo"


def test_long_layout_orders_by_point_no_and_reads_labels() -> None:
    x, y = loop(40, 2.0, 9.0)
    lines = ["graph_id,x,y,point_no,kind,mode"]
    order = np.random.default_rng(0).permutation(40)
    lines += [f"g1,{x[i]},{y[i]},{i},downhole,gas_lock" for i in order]
    [card] = parse_csv("\n".join(lines))
    np.testing.assert_allclose(card.position, x)
    assert (card.kind, card.label) == ("downhole", "gas_lock")


def test_long_round_trip() -> None:
    x, y = loop(50, 1.5, 40.0)
    card = validate("a", x, y, kind="downhole", label="rod_part")
    [back] = parse_csv(to_long_csv([card], with_labels=True))
    np.testing.assert_allclose(back.load, y, rtol=1e-5)
    assert (back.label, back.kind) == ("rod_part", "downhole")


@pytest.mark.parametrize(
    ("x", "y", "code"),
    [
        (np.arange(10.0), np.arange(10.0), "too_few_points"),
        (*loop(MAX_POINTS + 1), "too_many_points"),
        (loop(50)[0], np.r_[loop(50)[1][:-1], np.nan], "not_finite"),
        (loop(50)[0], np.full(50, 7.0), "zero_range"),
        (np.zeros(50), loop(50)[1], "zero_range"),
        (np.linspace(0, 1, 50), np.linspace(0, 1, 50) ** 2, "not_closed"),
        (loop(50)[0], loop(49)[1], "length_mismatch"),
    ],
)
def test_garbage_is_refused_with_a_code(x: np.ndarray, y: np.ndarray, code: str) -> None:
    with pytest.raises(InvalidCard) as info:
        validate("bad", x, y)
    assert info.value.code == code
    assert "bad" in str(info.value) or code == "too_few_points"


def test_half_a_stroke_is_not_closed() -> None:
    x, y = loop(200)
    with pytest.raises(InvalidCard, match="not closed") as info:
        validate("half", x[:100], y[:100])
    assert info.value.code == "not_closed"


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("", "empty_csv"),
        ("a,b,c\n1,2,3\n", "bad_layout"),
        ("position,load\n1,abc\n", "not_numeric"),
        ("position,load\n1\n", "bad_row"),
        ("graph_id,x,y,point_no\ng,1,2,0\ng,1,3,0\n", "duplicate_point"),
    ],
)
def test_bad_csv(text: str, code: str) -> None:
    with pytest.raises(InvalidCard) as info:
        parse_csv(text)
    assert info.value.code == code


def test_json_shapes() -> None:
    x, y = loop(60, 100.0, 5.0)
    a = from_json({"card_id": "a", "position": x.tolist(), "load": y.tolist()}, well_id="w")
    b = from_json({"card_id": "b", "points": np.column_stack([x, y]).tolist(), "kind": "downhole"})
    assert a.well_id == "w" and b.kind == "downhole"
    np.testing.assert_allclose(a.load, b.load)
    assert a.points()[3] == [x[3], y[3]]


@pytest.mark.parametrize(
    ("obj", "code"),
    [
        ([1, 2], "bad_json"),
        ({"position": [1], "load": [1]}, "bad_card_id"),
        ({"card_id": "x"}, "bad_json"),
        ({"card_id": "x", "position": [True] * 40, "load": [1.0] * 40}, "not_numeric"),
        ({"card_id": "x", "position": ["1"] * 40, "load": [1.0] * 40}, "not_numeric"),
        ({"card_id": "x", "points": [[1, 2, 3]]}, "bad_json"),
        ({"card_id": "x", "points": [[0, 0]] * 40, "kind": "sideways"}, "zero_range"),
    ],
)
def test_bad_json(obj: object, code: str) -> None:
    with pytest.raises(InvalidCard) as info:
        from_json(obj)
    assert info.value.code == code


def test_bad_kind() -> None:
    x, y = loop(40)
    with pytest.raises(InvalidCard) as info:
        validate("k", x, y, kind="sideways")
    assert info.value.code == "bad_kind"


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(MIN_POINTS, MAX_POINTS),
    sx=st.floats(1e-3, 1e6),
    sy=st.floats(1e-3, 1e6),
    offset=st.floats(-1e3, 1e3),
    start=st.integers(0, 10_000),
)
def test_any_closed_loop_in_any_units_is_accepted(
    n: int, sx: float, sy: float, offset: float, start: int
) -> None:
    x, y = loop(n, sx, sy)
    shift = start % n
    card = validate("h", np.roll(x, shift), np.roll(y, shift) + offset * sy)
    assert card.n_points == n
