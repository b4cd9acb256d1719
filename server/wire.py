"""Decoder (and reference encoder) of the collector's binary wire format, version 1.

The format is specified in ``docs/wire-format.md``; ``collector_js/test-vectors.json`` holds
byte-exact examples that both this module and the JavaScript encoder must pass. Every way a
message can be malformed raises :class:`~renderer.errors.InvalidFrame` with its own ``code``
and WebSocket close code, so a client (and a log reader) knows exactly what was wrong.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import accumulate, chain
from typing import Any

from renderer.errors import InvalidFrame

VERSION = 1

KIND_HELLO = 1
KIND_FRAME = 2
KIND_BEACON = 3
KIND_ACK = 0x81

R_MOVES = 1
R_DOWN = 2
R_UP = 3
R_WHEEL = 4
R_SCROLL = 5
R_RESIZE = 6
R_VISIBILITY = 7
R_POINTER = 8
R_ACCOUNT = 9
R_END = 10

POINTER_TYPES = ("mouse", "pen", "touch", "other")
END_REASONS = ("pagehide", "explicit")

# Session file event codes (see docs/architecture.md).
MOVE = 0
WHEEL = 7
_DOWN_CODE = {0: 1, 2: 3, 1: 5}  # DOM button (0 left, 1 middle, 2 right) → code
_UP_CODE = {0: 2, 2: 4, 1: 6}

MAX_FRAME_BYTES = 64 * 1024
MAX_BEACON_BYTES = 512 * 1024
MAX_BEACON_MESSAGES = 1024
MAX_FRAME_SAMPLES = 4096
MAX_COORD = 32767
MAX_TIME = 864_000_000  # 24 h in 0.1 ms units: no page session is longer
MAX_VARINT_BYTES = 8
MAX_SITE_KEY = 64
MAX_PATH = 2000
MAX_ACCOUNT = 200
MAX_VIEWPORT = 32767

# One-byte zigzag varint → the same value as a signed byte (read through a memoryview "b").
_UNZIGZAG = bytes(((z >> 1) ^ -(z & 1)) & 0xFF for z in range(256))

# WebSocket close codes (4000–4999 are ours); each error code has its own.
CLOSE_CODES = {
    "unknown_version": 4001,
    "unknown_kind": 4002,
    "truncated_varint": 4003,
    "varint_too_long": 4003,
    "truncated": 4004,
    "unknown_record": 4005,
    "bad_string": 4006,
    "non_monotonic_time": 4007,
    "insane_coordinates": 4008,
    "too_many_samples": 4009,
    "session_too_long": 4010,
    "bad_field": 4011,
    "expected_hello": 4012,
    "unknown_site": 4013,
    "origin_not_allowed": 4014,
    "rate_limited": 4015,
    "session_conflict": 4016,
    "session_ended": 4017,
    "not_binary": 1003,
    "oversize": 1009,
}


def fail(code: str, message: str) -> InvalidFrame:
    """The :class:`InvalidFrame` for ``code``, with its close code."""
    return InvalidFrame(message, code, CLOSE_CODES[code])


@dataclass
class Hello:
    session_id: str
    site_key: str
    page_path: str
    viewport: tuple[int, int]
    dpr: float
    pointer_type: str
    account: str
    started_ms: int


EVENT = struct.Struct("<IhhB")
"""One decoded pointer event, packed as Redis stores it (``session_store.SAMPLE_DTYPE``): ``t``
in 0.1 ms units since the page session started, x, y, event code."""


@functools.lru_cache(maxsize=128)
def _events(n: int) -> struct.Struct:
    return struct.Struct("<" + "IhhB" * n)


@dataclass
class Frame:
    """One decoded frame. Its pointer events are ``packed`` as :data:`EVENT` records (the
    collector stores them as they are); ``events`` unpacks them as ``(t, x, y, code)`` rows.
    ``other`` holds the non-pointer records as tuples ``(name, t, *values)``."""

    seq: int
    t0: int
    x0: int
    y0: int
    packed: bytearray = field(default_factory=bytearray)
    n_samples: int = 0
    other: list[tuple[object, ...]] = field(default_factory=list)
    t_last: int = 0
    ended: bool = False

    @property
    def events(self) -> list[tuple[int, int, int, int]]:
        return list(EVENT.iter_unpack(self.packed))

    def add(self, t: int, x: int, y: int, code: int) -> None:
        self.packed += EVENT.pack(t, x, y, code)
        self.n_samples += 1


class Reader:
    """A cursor over one message's bytes."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = data
        self.pos = pos

    def at_end(self) -> bool:
        return self.pos >= len(self.data)

    def u8(self) -> int:
        if self.pos >= len(self.data):
            raise fail("truncated", f"message ends at byte {self.pos}, expected one more byte")
        b = self.data[self.pos]
        self.pos += 1
        return b

    def uv(self) -> int:
        data, pos = self.data, self.pos
        if pos < len(data) and data[pos] < 0x80:  # one byte: most varints of a frame
            self.pos = pos + 1
            return data[pos]
        value = shift = 0
        for i in range(MAX_VARINT_BYTES):
            if pos + i >= len(data):
                raise fail("truncated_varint", f"varint at byte {pos} runs past the end")
            b = data[pos + i]
            value |= (b & 0x7F) << shift
            if b < 0x80:
                self.pos = pos + i + 1
                return value
            shift += 7
        raise fail("varint_too_long", f"varint at byte {pos} is longer than {MAX_VARINT_BYTES}")

    def zz(self) -> int:
        v = self.uv()
        return (v >> 1) ^ -(v & 1)

    def bytes_(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise fail("truncated", f"{n} bytes at byte {self.pos} run past the end")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def string(self, limit: int, what: str) -> str:
        n = self.uv()
        if n > limit:
            raise fail("bad_string", f"{what} is {n} bytes, limit {limit}")
        try:
            return self.bytes_(n).decode("utf-8")
        except UnicodeDecodeError as e:
            raise fail("bad_string", f"{what} is not UTF-8") from e


def _header(r: Reader) -> int:
    version = r.u8()
    if version != VERSION:
        raise fail("unknown_version", f"wire version {version} is not supported (want {VERSION})")
    return r.u8()


def message_kind(data: bytes) -> int:
    """The kind byte of a message, after checking its version."""
    return _header(Reader(data))


def decode_hello(data: bytes) -> Hello:
    if len(data) > MAX_FRAME_BYTES:
        raise fail("oversize", f"hello of {len(data)} bytes exceeds {MAX_FRAME_BYTES}")
    r = Reader(data)
    kind = _header(r)
    if kind != KIND_HELLO:
        raise fail("expected_hello", f"expected a hello message, got kind {kind}")
    sid = r.bytes_(16).hex()
    site_key = r.string(MAX_SITE_KEY, "site key")
    path = r.string(MAX_PATH, "page path")
    vw, vh, dpr_centi, ptype = r.uv(), r.uv(), r.uv(), r.u8()
    account = r.string(MAX_ACCOUNT, "account")
    started = r.uv()
    if not r.at_end():
        raise fail("truncated", f"{len(data) - r.pos} unexpected bytes after the hello")
    if not (0 < vw <= MAX_VIEWPORT and 0 < vh <= MAX_VIEWPORT):
        raise fail("bad_field", f"viewport {vw}x{vh} is not sane")
    if not 10 <= dpr_centi <= 2000:
        raise fail("bad_field", f"device pixel ratio {dpr_centi / 100} is not sane")
    if ptype >= len(POINTER_TYPES):
        raise fail("bad_field", f"pointer type {ptype} is unknown")
    return Hello(
        session_id=sid,
        site_key=site_key,
        page_path=path.split("?", 1)[0].split("#", 1)[0],
        viewport=(vw, vh),
        dpr=dpr_centi / 100,
        pointer_type=POINTER_TYPES[ptype],
        account=account,
        started_ms=started,
    )


class _FrameDecoder:
    """State of one frame being decoded: current time and position."""

    def __init__(self, r: Reader, frame: Frame, exact: bool = False) -> None:
        self.r = r
        self.f = frame
        self.exact = exact
        self.t = frame.t0
        self.x = frame.x0
        self.y = frame.y0

    def step(self, dt: int, dx: int, dy: int) -> None:
        self.t += dt
        self.x += dx
        self.y += dy
        if self.t > MAX_TIME:
            raise fail("bad_field", f"time {self.t} exceeds {MAX_TIME} (24 h)")
        if abs(self.x) > MAX_COORD or abs(self.y) > MAX_COORD:
            raise fail("insane_coordinates", f"position ({self.x}, {self.y}) is out of range")

    def moves(self) -> None:
        r = self.r
        n = r.uv()
        if n == 0:
            raise fail("bad_field", "a moves record needs at least one sample")
        if self.f.n_samples + n > MAX_FRAME_SAMPLES:
            raise fail("too_many_samples", f"a frame of over {MAX_FRAME_SAMPLES} samples")
        if self.exact or not self._moves_fast(n):
            rows = self._moves_exact(n)
            if self.t > MAX_TIME:
                raise fail("bad_field", f"time {self.t} exceeds {MAX_TIME} (24 h)")
            self.f.packed += _events(len(rows)).pack(*chain.from_iterable(rows))
            self.f.n_samples += len(rows)

    def _moves_fast(self, n: int) -> bool:
        """The common record, in C-level loops: every varint one byte, every position and the
        time in range. Returns False, having read nothing, for anything else: the exact loop
        then decodes it and names any fault as it always did."""
        r = self.r
        end = r.pos + 3 * n
        body = r.data[r.pos : end]
        if len(body) != 3 * n or not body.isascii():  # cut short, or a longer varint in it
            return False
        ts = list(accumulate(body[0::3], initial=self.t))
        xs = list(accumulate(memoryview(body[1::3].translate(_UNZIGZAG)).cast("b"), initial=self.x))
        ys = list(accumulate(memoryview(body[2::3].translate(_UNZIGZAG)).cast("b"), initial=self.y))
        if max(xs) > MAX_COORD or min(xs) < -MAX_COORD or ts[-1] > MAX_TIME:
            return False
        if max(ys) > MAX_COORD or min(ys) < -MAX_COORD:
            return False
        flat = [MOVE] * (4 * n)  # t, x, y, code per event, packed without a tuple each
        flat[0::4], flat[1::4], flat[2::4] = ts[1:], xs[1:], ys[1:]
        self.f.packed += _events(n).pack(*flat)
        self.f.n_samples += n
        r.pos = end
        self.t, self.x, self.y = ts[-1], xs[-1], ys[-1]
        return True

    def _moves_exact(self, n: int) -> list[tuple[int, int, int, int]]:
        """``n`` samples one by one; their events, packed by the caller once the time is
        known to be in range (checked at the record's end, as it always was)."""
        r = self.r
        # One-byte varints are still read inline; longer ones, and every error, go through
        # the Reader.
        data, pos, end = r.data, r.pos, len(r.data)
        t, x, y = self.t, self.x, self.y
        rows = []
        for _ in range(n):
            if pos + 3 <= end and (data[pos] | data[pos + 1] | data[pos + 2]) < 0x80:
                dt, zx, zy = data[pos], data[pos + 1], data[pos + 2]
                pos += 3
                t += dt
                x += (zx >> 1) ^ -(zx & 1)
                y += (zy >> 1) ^ -(zy & 1)
            else:
                r.pos = pos
                t += r.uv()
                x += r.zz()
                y += r.zz()
                pos = r.pos
            if x > MAX_COORD or x < -MAX_COORD or y > MAX_COORD or y < -MAX_COORD:
                raise fail("insane_coordinates", f"position ({x}, {y}) is out of range")
            rows.append((t, x, y, MOVE))
        r.pos = pos
        self.t, self.x, self.y = t, x, y
        return rows

    def button(self, codes: dict[int, int]) -> None:
        r = self.r
        self.step(r.uv(), r.zz(), r.zz())
        button = r.u8()
        if button not in codes:
            raise fail("bad_field", f"button {button} is not left, middle or right")
        self.f.add(self.t, self.x, self.y, codes[button])

    def wheel(self) -> None:
        r = self.r
        self.step(r.uv(), r.zz(), r.zz())
        self.f.add(self.t, self.x, self.y, WHEEL)
        self.f.other.append(("wheel", self.t, r.zz(), r.zz()))

    def timed(self) -> int:
        self.step(self.r.uv(), 0, 0)
        return self.t

    def record(self, tag: int) -> None:
        r, other = self.r, self.f.other
        if tag == R_MOVES:
            self.moves()
        elif tag == R_DOWN:
            self.button(_DOWN_CODE)
        elif tag == R_UP:
            self.button(_UP_CODE)
        elif tag == R_WHEEL:
            self.wheel()
        elif tag == R_SCROLL:
            other.append(("scroll", self.timed(), r.zz(), r.zz()))
        elif tag == R_RESIZE:
            t, w, h = self.timed(), r.uv(), r.uv()
            if not (0 < w <= MAX_VIEWPORT and 0 < h <= MAX_VIEWPORT):
                raise fail("bad_field", f"viewport {w}x{h} is not sane")
            other.append(("resize", t, w, h))
        else:
            self.small_record(tag)

    def small_record(self, tag: int) -> None:
        r, other = self.r, self.f.other
        if tag == R_VISIBILITY:
            other.append(("visibility", self.timed(), "visible" if r.u8() else "hidden"))
        elif tag == R_POINTER:
            t, p = self.timed(), r.u8()
            if p >= len(POINTER_TYPES):
                raise fail("bad_field", f"pointer type {p} is unknown")
            other.append(("pointer", t, POINTER_TYPES[p]))
        elif tag == R_ACCOUNT:
            other.append(("account", self.timed(), r.string(MAX_ACCOUNT, "account")))
        elif tag == R_END:
            t, reason = self.timed(), r.u8()
            if reason >= len(END_REASONS):
                raise fail("bad_field", f"end reason {reason} is unknown")
            other.append(("end", t, END_REASONS[reason]))
            self.f.ended = True
        else:
            raise fail("unknown_record", f"record tag {tag} at byte {r.pos - 1} is unknown")


def decode_frame(data: bytes, *, exact: bool = False) -> Frame:
    """Decode and validate one frame message; raises :class:`InvalidFrame`.

    ``exact=True`` reads every sample in the plain Python loop: the reference that the
    faster path for common moves records is tested against."""
    if len(data) > MAX_FRAME_BYTES:
        raise fail("oversize", f"frame of {len(data)} bytes exceeds {MAX_FRAME_BYTES}")
    r = Reader(data)
    kind = _header(r)
    if kind != KIND_FRAME:
        raise fail("unknown_kind", f"expected a frame message, got kind {kind}")
    seq, t0, x0, y0 = r.uv(), r.uv(), r.zz(), r.zz()
    frame = Frame(seq=seq, t0=t0, x0=x0, y0=y0)
    d = _FrameDecoder(r, frame, exact)
    d.step(0, 0, 0)
    while not r.at_end():
        if frame.ended:
            raise fail("bad_field", "records after the end-of-page record")
        d.record(r.u8())
    frame.t_last = d.t
    return frame


def split_beacon(data: bytes) -> list[bytes]:
    """The messages inside a beacon body: a hello first, then frames."""
    if len(data) > MAX_BEACON_BYTES:
        raise fail("oversize", f"beacon of {len(data)} bytes exceeds {MAX_BEACON_BYTES}")
    r = Reader(data)
    kind = _header(r)
    if kind != KIND_BEACON:
        raise fail("unknown_kind", f"expected a beacon message, got kind {kind}")
    count = r.uv()
    if not 1 <= count <= MAX_BEACON_MESSAGES:
        raise fail("bad_field", f"a beacon of {count} messages is not allowed")
    parts = [r.bytes_(r.uv()) for _ in range(count)]
    if not r.at_end():
        raise fail("truncated", f"{len(data) - r.pos} unexpected bytes after the beacon")
    return parts


def decode_ack(data: bytes) -> int:
    r = Reader(data)
    if _header(r) != KIND_ACK:
        raise fail("unknown_kind", "expected an ack")
    return r.uv()


# --- encoder (reference for tests and the benchmark; the browser has its own in c.js) -------


class Writer:
    __slots__ = ("buf",)

    def __init__(self) -> None:
        self.buf = bytearray()

    def u8(self, v: int) -> None:
        self.buf.append(v & 0xFF)

    def uv(self, v: int) -> None:
        while v >= 0x80:
            self.buf.append((v & 0x7F) | 0x80)
            v >>= 7
        self.buf.append(v)

    def zz(self, v: int) -> None:
        self.uv(-2 * v - 1 if v < 0 else 2 * v)

    def string(self, s: str) -> None:
        raw = s.encode("utf-8")
        self.uv(len(raw))
        self.buf += raw


def encode_ack(seq: int) -> bytes:
    w = Writer()
    w.u8(VERSION)
    w.u8(KIND_ACK)
    w.uv(seq)
    return bytes(w.buf)


def encode_hello(h: Hello) -> bytes:
    w = Writer()
    w.u8(VERSION)
    w.u8(KIND_HELLO)
    w.buf += bytes.fromhex(h.session_id)
    w.string(h.site_key)
    w.string(h.page_path)
    w.uv(h.viewport[0])
    w.uv(h.viewport[1])
    w.uv(round(h.dpr * 100))
    w.u8(POINTER_TYPES.index(h.pointer_type))
    w.string(h.account)
    w.uv(h.started_ms)
    return bytes(w.buf)


_TAGS = {
    "moves": R_MOVES,
    "down": R_DOWN,
    "up": R_UP,
    "wheel": R_WHEEL,
    "scroll": R_SCROLL,
    "resize": R_RESIZE,
    "visibility": R_VISIBILITY,
    "pointer": R_POINTER,
    "account": R_ACCOUNT,
    "end": R_END,
}
# Field layout after the tag: u = unsigned varint, z = zigzag varint, b = byte, s = string.
_LAYOUT = {
    "down": "uzzb",
    "up": "uzzb",
    "wheel": "uzzzz",
    "scroll": "uzz",
    "resize": "uuu",
    "visibility": "ub",
    "pointer": "ub",
    "account": "us",
    "end": "ub",
}


def _write_fields(w: Writer, layout: str, values: list[Any]) -> None:
    writers: dict[str, Callable[[Any], None]] = {
        "u": w.uv,
        "z": w.zz,
        "b": w.u8,
        "s": w.string,
    }
    for kind, v in zip(layout, values, strict=True):
        writers[kind](v)


def encode_frame(seq: int, t0: int, x0: int, y0: int, records: list[list[Any]]) -> bytes:
    """A frame from records in the test-vector notation, e.g. ``["moves", [[dt, dx, dy]]]``."""
    w = Writer()
    w.u8(VERSION)
    w.u8(KIND_FRAME)
    w.uv(seq)
    w.uv(t0)
    w.zz(x0)
    w.zz(y0)
    for name, *values in records:
        w.u8(_TAGS[name])
        if name == "moves":
            w.uv(len(values[0]))
            for dt, dx, dy in values[0]:
                w.uv(dt)
                w.zz(dx)
                w.zz(dy)
        else:
            _write_fields(w, _LAYOUT[name], values)
    return bytes(w.buf)


def encode_moves(seq: int, samples: list[tuple[int, int, int]], end: str | None = None) -> bytes:
    """A frame of absolute ``(t, x, y)`` moves (t in 0.1 ms), optionally ending the page."""
    t0, x0, y0 = samples[0] if samples else (0, 0, 0)
    deltas, (t, x, y) = [], (t0, x0, y0)
    for st, sx, sy in samples:
        deltas.append([st - t, sx - x, sy - y])
        t, x, y = st, sx, sy
    records: list[list[Any]] = [["moves", deltas]] if deltas else []
    if end is not None:
        records.append(["end", 0, END_REASONS.index(end)])
    return encode_frame(seq, t0, x0, y0, records)


def encode_beacon(messages: list[bytes]) -> bytes:
    w = Writer()
    w.u8(VERSION)
    w.u8(KIND_BEACON)
    w.uv(len(messages))
    for m in messages:
        w.uv(len(m))
        w.buf += m
    return bytes(w.buf)
