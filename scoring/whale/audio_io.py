"""Decoding recordings (WAV, FLAC, OGG) in bounded-memory chunks at the pipeline's rate.

Each chunk is mixed to mono, resampled with soxr's streaming resampler (its state crosses chunk
boundaries, so chunking leaves no seams) and passed through a streaming DC blocker (2nd-order
Butterworth high-pass at ``DC_CUTOFF_HZ``, started at the first sample's level so an offset does
not ring). Unusable files raise :class:`~renderer.errors.InvalidAudio` with a precise code.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
from scipy import signal

from renderer.errors import InvalidAudio

FORMATS = ("WAV", "WAVEX", "RF64", "FLAC", "OGG")
"""Containers we accept (RF64/WAVEX are WAV variants for long or multichannel files)."""
MIN_SAMPLE_RATE = 1_000
DC_CUTOFF_HZ = 2.0
CHUNK_S = 60.0


@dataclass(frozen=True)
class AudioInfo:
    sample_rate: int
    frames: int
    channels: int
    format: str
    subtype: str

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate


def _open(path: Path) -> sf.SoundFile:
    if not path.exists():
        raise InvalidAudio(f"{path}: no such file", "no_file")
    if path.stat().st_size == 0:
        raise InvalidAudio(f"{path}: the file is empty (0 bytes)", "empty_audio")
    try:
        return sf.SoundFile(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        raise InvalidAudio(
            f"{path.name}: not a readable WAV, FLAC or OGG file ({e})", "corrupt_audio"
        ) from e


def _check(path: Path, f: sf.SoundFile) -> AudioInfo:
    info = AudioInfo(int(f.samplerate), int(f.frames), int(f.channels), f.format, f.subtype)
    if info.format not in FORMATS:
        raise InvalidAudio(
            f"{path.name}: format {info.format} is not supported; use WAV, FLAC or OGG",
            "unsupported_format",
        )
    if info.frames <= 0:
        raise InvalidAudio(f"{path.name}: the recording holds no samples", "empty_audio")
    if info.sample_rate < MIN_SAMPLE_RATE:
        raise InvalidAudio(
            f"{path.name}: sample rate {info.sample_rate} Hz is below {MIN_SAMPLE_RATE} Hz",
            "bad_sample_rate",
        )
    return info


def probe(path: Path) -> AudioInfo:
    """Format, rate and length of a recording, validated without reading its samples."""
    with _open(path) as f:
        return _check(path, f)


class DcBlocker:
    """A streaming high-pass that removes a DC offset without a second pass over the file."""

    def __init__(self, sample_rate: int, cutoff_hz: float = DC_CUTOFF_HZ) -> None:
        self.sos = signal.butter(2, cutoff_hz, "highpass", fs=sample_rate, output="sos")
        self.zi: np.ndarray | None = None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if len(x) == 0:
            return x
        if self.zi is None:
            self.zi = signal.sosfilt_zi(self.sos) * x[0]
        y, self.zi = signal.sosfilt(self.sos, x, zi=self.zi)
        return y.astype(np.float32)


def _mono(block: np.ndarray, name: str) -> np.ndarray:
    mono = block.mean(axis=1) if block.ndim == 2 else block
    if not np.all(np.isfinite(mono)):
        raise InvalidAudio(f"{name}: the samples contain NaN or infinity", "non_finite")
    return mono.astype(np.float32, copy=False)


def stream(path: Path, sample_rate: int, chunk_s: float = CHUNK_S) -> Iterator[np.ndarray]:
    """Mono float32 chunks of about ``chunk_s`` seconds at ``sample_rate``, DC removed."""
    with _open(path) as f:
        info = _check(path, f)
        resampler = (
            None
            if info.sample_rate == sample_rate
            else soxr.ResampleStream(info.sample_rate, sample_rate, 1, dtype="float32")
        )
        dc = DcBlocker(sample_rate)
        block_frames = max(1, int(chunk_s * info.sample_rate))
        read = 0
        while True:
            try:
                block = f.read(block_frames, dtype="float32", always_2d=True)
            except (sf.LibsndfileError, RuntimeError) as e:
                raise InvalidAudio(
                    f"{path.name}: decoding failed after {read} samples ({e})", "corrupt_audio"
                ) from e
            last = len(block) < block_frames
            read += len(block)
            mono = _mono(block, path.name)
            out = mono if resampler is None else resampler.resample_chunk(mono, last=last)
            if len(out):
                yield dc(out)
            if last:
                break
        if read == 0:
            raise InvalidAudio(f"{path.name}: the recording holds no samples", "empty_audio")


def read_all(path: Path, sample_rate: int) -> np.ndarray:
    """A whole (short) recording at ``sample_rate``; long files should use :func:`stream`."""
    chunks = list(stream(path, sample_rate))
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
