"""Writes collector_js/test-vectors.json from the reference encoder in server/wire.py.

Run ``.venv/bin/python collector_js/make_vectors.py`` after changing the format; the JS encoder
(node test) and the Python decoder (tests/test_wire.py) must both agree with the file.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from renderer.errors import InvalidFrame
from server import wire

HELLOS: list[dict[str, Any]] = [
    {
        "sid": "00112233445566778899aabbccddeeff",
        "site": "tgk_demo",
        "path": "/checkout",
        "vw": 1280,
        "vh": 720,
        "dpr": 1,
        "pointer": 0,
        "account": "",
        "started": 1764400000000,
    },
    {
        "sid": "ffeeddccbbaa99887766554433221100",
        "site": "tgk_ünïcode",
        "path": "/a/b/c",
        "vw": 390,
        "vh": 844,
        "dpr": 3,
        "pointer": 2,
        "account": "acct-42 ✓",
        "started": 0,
    },
]

FRAMES: list[dict[str, Any]] = [
    {"seq": 0, "t0": 0, "x0": 0, "y0": 0, "records": []},
    {
        "seq": 1,
        "t0": 1234,
        "x0": 640,
        "y0": 360,
        "records": [["moves", [[0, 0, 0], [80, 3, -2], [81, -64, 64], [200, 1000, -1000]]]],
    },
    {
        "seq": 300,
        "t0": 987654,
        "x0": -5,
        "y0": 20000,
        "records": [
            ["pointer", 0, 0],
            ["moves", [[0, 0, 0], [79, 1, 1]]],
            ["down", 5, 0, 0, 0],
            ["up", 900, 2, 0, 0],
            ["down", 100, 0, 0, 2],
            ["up", 100, 0, 0, 2],
            ["down", 100, 0, 0, 1],
            ["up", 100, 0, 0, 1],
            ["wheel", 40, -1, 1, 0, -120],
            ["scroll", 10, 0, 480],
            ["resize", 10, 1024, 768],
            ["visibility", 10, 0],
            ["visibility", 10, 1],
            ["account", 0, "user@example.com"],
            ["moves", [[16384, -8192, 8191]]],
            ["end", 3, 0],
        ],
    },
]

INVALID: list[tuple[str, str, str]] = [
    ("unknown version", "frame", "0202000000"),
    ("unknown kind where a frame is expected", "frame", "0107000000"),
    ("truncated varint in the header", "frame", "010280"),
    ("varint longer than 8 bytes", "frame", "0102ffffffffffffffff7f000000"),
    ("unknown record tag", "frame", "010200000000" + "63"),
    ("moves record cut short", "frame", "010200000000" + "010250"),
    ("moves record with zero samples", "frame", "010200000000" + "0100"),
    ("moves record with too many samples", "frame", "010200000000" + "01814000"),
    ("coordinates out of range", "frame", "010200000000" + "010100feff0700"),
    ("time beyond 24 hours", "frame", "010200000000" + "0101ffffffff0f0000"),
    ("unknown button", "frame", "010200000000" + "0200000007"),
    ("unknown pointer type", "frame", "010200000000" + "080009"),
    ("record after the end record", "frame", "010200000000" + "0a0000" + "070001"),
    (
        "hello with zero viewport",
        "hello",
        "0101" + "00" * 16 + "0161" + "012f" + "0000" + "64" + "00" + "00" + "00",
    ),
    ("hello with invalid utf-8", "hello", "0101" + "00" * 16 + "01ff" + "012f" + "0a0a64000000"),
    ("hello where a frame is expected", "frame", "0101" + "00" * 16),
    ("beacon with trailing bytes", "beacon", "0103010101" + "ff"),
    ("beacon message longer than the body", "beacon", "01030105" + "0102"),
]


def _hello(h: dict[str, Any]) -> bytes:
    return wire.encode_hello(
        wire.Hello(
            session_id=h["sid"],
            site_key=h["site"],
            page_path=h["path"],
            viewport=(h["vw"], h["vh"]),
            dpr=h["dpr"],
            pointer_type=wire.POINTER_TYPES[h["pointer"]],
            account=h["account"],
            started_ms=h["started"],
        )
    )


def _frame(f: dict[str, Any]) -> bytes:
    return wire.encode_frame(f["seq"], f["t0"], f["x0"], f["y0"], f["records"])


def _decoded_frame(raw: bytes) -> dict[str, Any]:
    fr = wire.decode_frame(raw)
    return {
        "seq": fr.seq,
        "events": [list(e) for e in fr.events],
        "other": [list(o) for o in fr.other],
        "t_last": fr.t_last,
        "ended": fr.ended,
    }


def _invalid(name: str, message: str, hexstr: str) -> dict[str, Any]:
    decode = {"frame": wire.decode_frame, "hello": wire.decode_hello, "beacon": wire.split_beacon}
    try:
        decode[message](bytes.fromhex(hexstr))
    except InvalidFrame as e:
        return {"name": name, "message": message, "hex": hexstr, "code": e.code}
    raise AssertionError(f"invalid vector {name!r} decodes")


def build() -> dict[str, Any]:
    valid: list[dict[str, Any]] = []
    for h in HELLOS:
        raw = _hello(h)
        decoded = asdict(wire.decode_hello(raw))
        valid.append({"message": "hello", "input": h, "hex": raw.hex(), "decoded": decoded})
    frames = [_frame(f) for f in FRAMES]
    for f, raw in zip(FRAMES, frames, strict=True):
        decoded = _decoded_frame(raw)
        valid.append({"message": "frame", "input": f, "hex": raw.hex(), "decoded": decoded})
    messages = [_hello(HELLOS[0]).hex(), frames[1].hex(), frames[2].hex()]
    beacon = wire.encode_beacon([bytes.fromhex(m) for m in messages])
    valid.append({"message": "beacon", "input": {"messages": messages}, "hex": beacon.hex()})
    valid.append({"message": "ack", "input": {"seq": 300}, "hex": wire.encode_ack(300).hex()})
    return {
        "version": wire.VERSION,
        "valid": valid,
        "invalid": [_invalid(*v) for v in INVALID],
    }


if __name__ == "__main__":
    out = Path(__file__).with_name("test-vectors.json")
    out.write_text(json.dumps(build(), indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {out}")
