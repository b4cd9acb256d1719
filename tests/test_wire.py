import json
import shutil
import subprocess
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from renderer.errors import InvalidFrame
from server import wire

ROOT = Path(__file__).resolve().parent.parent
VECTORS = json.loads((ROOT / "collector_js" / "test-vectors.json").read_text())


def _vectors(message: str) -> list[dict[str, Any]]:
    return [v for v in VECTORS["valid"] if v["message"] == message]


@pytest.mark.parametrize("vector", _vectors("hello"), ids=lambda v: v["input"]["sid"][:6])
def test_hello_vectors_decode(vector: dict[str, Any]) -> None:
    hello = wire.decode_hello(bytes.fromhex(vector["hex"]))
    inp = vector["input"]
    assert hello.session_id == inp["sid"]
    assert hello.site_key == inp["site"]
    assert hello.page_path == inp["path"]
    assert hello.viewport == (inp["vw"], inp["vh"])
    assert hello.dpr == inp["dpr"]
    assert hello.pointer_type == wire.POINTER_TYPES[inp["pointer"]]
    assert hello.account == inp["account"]
    assert hello.started_ms == inp["started"]


@pytest.mark.parametrize("vector", _vectors("frame"), ids=lambda v: str(v["input"]["seq"]))
def test_frame_vectors_decode_and_encode(vector: dict[str, Any]) -> None:
    raw = bytes.fromhex(vector["hex"])
    frame = wire.decode_frame(raw)
    want = vector["decoded"]
    assert frame.seq == want["seq"]
    assert [list(e) for e in frame.events] == want["events"]
    assert [list(o) for o in frame.other] == want["other"]
    assert (frame.t_last, frame.ended) == (want["t_last"], want["ended"])
    inp = vector["input"]
    assert wire.encode_frame(inp["seq"], inp["t0"], inp["x0"], inp["y0"], inp["records"]) == raw


def test_frame_vector_semantics_checked_by_hand() -> None:
    # seq 1 at t0=1234 from (640, 360): deltas (0,0,0) (80,3,-2) (81,-64,64) (200,1000,-1000)
    frame = wire.decode_frame(bytes.fromhex(_vectors("frame")[1]["hex"]))
    assert frame.events == [
        (1234, 640, 360, 0),
        (1314, 643, 358, 0),
        (1395, 579, 422, 0),
        (1595, 1579, -578, 0),
    ]
    codes = [e[3] for e in wire.decode_frame(bytes.fromhex(_vectors("frame")[2]["hex"])).events]
    assert codes == [0, 0, 1, 2, 3, 4, 5, 6, 7, 0]


def test_beacon_and_ack_vectors() -> None:
    (beacon,) = _vectors("beacon")
    parts = wire.split_beacon(bytes.fromhex(beacon["hex"]))
    assert [p.hex() for p in parts] == beacon["input"]["messages"]
    (ack,) = _vectors("ack")
    assert wire.decode_ack(bytes.fromhex(ack["hex"])) == ack["input"]["seq"]
    assert wire.encode_ack(ack["input"]["seq"]).hex() == ack["hex"]


@pytest.mark.parametrize("vector", VECTORS["invalid"], ids=lambda v: v["name"])
def test_invalid_vectors_fail_with_their_code(vector: dict[str, Any]) -> None:
    decode = {"frame": wire.decode_frame, "hello": wire.decode_hello, "beacon": wire.split_beacon}
    with pytest.raises(InvalidFrame) as err:
        decode[vector["message"]](bytes.fromhex(vector["hex"]))
    assert err.value.code == vector["code"]
    assert err.value.close_code == wire.CLOSE_CODES[vector["code"]]


def test_every_error_code_has_its_own_close_code_in_the_private_range() -> None:
    for code, close in wire.CLOSE_CODES.items():
        assert 4000 <= close < 5000 or close in (1003, 1009), code


def test_oversize_frame_is_rejected_before_decoding() -> None:
    with pytest.raises(InvalidFrame) as err:
        wire.decode_frame(b"\x01\x02" + b"\x00" * wire.MAX_FRAME_BYTES)
    assert (err.value.code, err.value.close_code) == ("oversize", 1009)


def test_page_path_loses_any_query_string() -> None:
    hello = wire.Hello("ab" * 16, "k", "/p?token=secret#x", (10, 10), 1.0, "mouse", "", 0)
    assert wire.decode_hello(wire.encode_hello(hello)).page_path == "/p"


def test_round_trip_of_many_moves_is_exact_and_compact() -> None:
    samples = [(i * 80, 500 + (i * 7) % 13 - 6, 300 + (i * 5) % 11 - 5) for i in range(1000)]
    raw = wire.encode_moves(7, samples)
    frame = wire.decode_frame(raw)
    assert [(t, x, y) for t, x, y, _ in frame.events] == samples
    assert len(raw) / len(samples) < 3.1


steps = st.tuples(
    st.integers(0, 2**21), st.integers(-2000, 2000), st.integers(-2000, 2000)
) | st.tuples(st.integers(0, 127), st.integers(-63, 63), st.integers(-63, 63))


@settings(max_examples=300, deadline=None)
@given(st.lists(steps, min_size=1, max_size=300))
def test_moves_of_any_varint_widths_round_trip(deltas: list[tuple[int, int, int]]) -> None:
    # the decoder reads one-byte varints inline and longer ones through the Reader: mixed in
    # any order they must come out exactly as sent
    t, x, y, samples = 0, 0, 0, []
    for dt, dx, dy in deltas:
        t, x, y = t + dt, max(-30000, min(30000, x + dx)), max(-30000, min(30000, y + dy))
        samples.append((t, x, y))
    frame = wire.decode_frame(wire.encode_moves(3, samples))
    assert [(t, x, y) for t, x, y, _ in frame.events] == samples
    assert frame.t_last == samples[-1][0]


def test_a_fault_late_in_a_record_is_named_as_before() -> None:
    ok = [(i * 80, 100 + i, 100) for i in range(20)]
    bad = wire.encode_moves(1, [*ok, (20 * 80, wire.MAX_COORD + 1, 100)])
    with pytest.raises(InvalidFrame) as err:
        wire.decode_frame(bad)
    assert err.value.code == "insane_coordinates"
    assert f"({wire.MAX_COORD + 1}, 100)" in str(err.value)
    with pytest.raises(InvalidFrame) as err:
        wire.decode_frame(wire.encode_moves(1, ok)[:-2])
    assert err.value.code == "truncated_varint"


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_crash_the_decoders(data: bytes) -> None:
    for decode in (wire.decode_frame, wire.decode_hello, wire.split_beacon):
        try:
            decode(data)
        except InvalidFrame as e:
            assert e.code in wire.CLOSE_CODES


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=1, max_size=200))
def test_random_frame_bodies_never_crash(body: bytes) -> None:
    try:
        frame = wire.decode_frame(b"\x01\x02" + body)
    except InvalidFrame as e:
        assert e.code in wire.CLOSE_CODES
    else:
        assert all(
            abs(x) <= wire.MAX_COORD and abs(y) <= wire.MAX_COORD for _, x, y, _ in frame.events
        )
        assert [e[0] for e in frame.events] == sorted(e[0] for e in frame.events)


def test_node_encoder_passes_the_same_vectors() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    result = subprocess.run(
        [node, "--test", "collector_js/"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "# fail 0" in result.stdout


def _outcome(decode: Any, data: bytes) -> tuple[Any, ...]:
    try:
        f = decode(data)
    except InvalidFrame as e:
        return ("error", e.code, str(e))
    return ("ok", f.events, f.other, f.t_last, f.ended)


small_steps = st.tuples(st.integers(0, 127), st.integers(-64, 63), st.integers(-64, 63))
near_edge = st.integers(wire.MAX_COORD - 64, wire.MAX_COORD) | st.integers(
    -wire.MAX_COORD, -wire.MAX_COORD + 64
)
anywhere = st.integers(-wire.MAX_COORD - 200, wire.MAX_COORD + 200)
# runs of one-byte samples (long ones take the C-level path) between wider varints
wide_xy = st.tuples(st.integers(0, 127), st.integers(-2000, 2000), st.integers(-2000, 2000))
run_then_wide = st.tuples(st.lists(small_steps, max_size=60), st.lists(steps | wide_xy, max_size=1))
moves_record = (
    st.lists(run_then_wide, min_size=1, max_size=3)
    .map(lambda parts: [step for run, wide in parts for step in run + wide])
    .filter(bool)
)


@settings(max_examples=500, deadline=None)
@given(
    st.integers(0, 2**20) | st.integers(wire.MAX_TIME - 3000, wire.MAX_TIME),
    near_edge | anywhere,
    near_edge | anywhere,
    st.lists(moves_record, min_size=1, max_size=3),
    st.integers(0, 3),
)
@example(0, wire.MAX_COORD - 1, 0, [[(1, 1, 0)], [(1, 1, 0)]], 0)  # to the edge, then past it
@example(0, 0, -wire.MAX_COORD + 1, [[(1, 0, -1), (1, 0, -1)]], 0)
@example(0, wire.MAX_COORD - 29, 0, [[(1, 1, 0)] * 30], 0)  # the same in one long run
@example(0, 0, wire.MAX_COORD - 29, [[(1, 0, 1)] * 30], 0)
@example(0, -wire.MAX_COORD + 29, 0, [[(1, -1, 0)] * 30], 0)
@example(0, 0, -wire.MAX_COORD + 29, [[(1, 0, -1)] * 30], 0)
@example(wire.MAX_TIME - 1, 0, 0, [[(1, 0, 0), (2**33, 1, 1), (1, wire.MAX_COORD, 0)]], 0)
@example(0, 0, 0, [[(1, 1, 1)] * 30 + [(5, 500, 3)] + [(1, 1, 1)] * 5], 0)  # run, wide dx
@example(0, 0, 0, [[(2**33, 1, 1)] + [(1, 1, 1)] * 60], 0)  # past 24 h, then a long run
def test_fast_moves_path_decodes_and_fails_exactly_like_the_exact_loop(
    t0: int, x0: int, y0: int, records: list[list[tuple[int, int, int]]], cut: int
) -> None:
    # positions near the ±32767 limit, times near 24 h, varints of every width, records cut
    # short at the end
    frame = wire.encode_frame(5, t0, x0, y0, [["moves", [list(d) for d in r]] for r in records])
    data = frame[: len(frame) - cut]
    assert _outcome(wire.decode_frame, data) == _outcome(
        partial(wire.decode_frame, exact=True), data
    )
