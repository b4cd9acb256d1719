"""Decoding recordings: formats, resampling, DC removal, chunking and precise errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from renderer.errors import InvalidAudio
from scoring.whale import audio_io


def tone(sr: int, seconds: float, freq: float = 440.0, dc: float = 0.0) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (0.3 * np.sin(2 * np.pi * freq * t) + dc).astype(np.float32)


@pytest.mark.parametrize(
    ("fmt", "subtype"), [("wav", "PCM_16"), ("flac", "PCM_24"), ("ogg", "VORBIS"), ("wav", "FLOAT")]
)
def test_formats_decode_and_resample_to_the_pipeline_rate(
    tmp_path: Path, fmt: str, subtype: str
) -> None:
    path = tmp_path / f"clip.{fmt}"
    sf.write(str(path), tone(44_100, 3.0, 440.0), 44_100, subtype=subtype)
    info = audio_io.probe(path)
    assert (info.sample_rate, info.channels) == (44_100, 1)
    audio = audio_io.read_all(path, 10_000)
    assert abs(len(audio) - 30_000) <= 2
    spectrum = np.abs(np.fft.rfft(audio[5_000:25_000]))
    peak_hz = np.argmax(spectrum) * 10_000 / 20_000
    assert abs(peak_hz - 440.0) <= 1.0


def test_stereo_is_mixed_to_mono_and_dc_offset_removed(tmp_path: Path) -> None:
    path = tmp_path / "stereo.wav"
    left, right = tone(10_000, 4.0, 300.0, dc=0.2), tone(10_000, 4.0, 300.0, dc=0.2)
    sf.write(str(path), np.stack([left, right], axis=1), 10_000, subtype="FLOAT")
    audio = audio_io.read_all(path, 10_000)
    assert len(audio) == 40_000
    assert abs(float(audio[10_000:].mean())) < 1e-3  # the 0.2 offset is gone after 1 s
    assert abs(float(audio[:200].mean())) < 0.05  # and does not ring at the start
    assert 0.2 < float(audio[10_000:].std()) < 0.22  # the tone (0.3/√2) passes untouched


def test_chunked_stream_equals_one_read(tmp_path: Path) -> None:
    path = tmp_path / "long.flac"
    rng = np.random.default_rng(0)
    sf.write(str(path), (0.1 * rng.standard_normal(250_000)).astype(np.float32), 22_050)
    chunks = list(audio_io.stream(path, 10_000, chunk_s=1.3))
    assert len(chunks) > 5
    whole = np.concatenate(list(audio_io.stream(path, 10_000, chunk_s=100)))
    joined = np.concatenate(chunks)
    assert len(joined) == len(whole)
    assert np.allclose(joined, whole, atol=1e-5)


def write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_empty_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidAudio, match="empty") as e:
        audio_io.probe(write_bytes(tmp_path / "empty.wav", b""))
    assert e.value.code == "empty_audio"


def test_header_without_samples(tmp_path: Path) -> None:
    path = tmp_path / "nothing.wav"
    sf.write(str(path), np.zeros(0, dtype=np.float32), 10_000)
    with pytest.raises(InvalidAudio, match="no samples") as e:
        audio_io.probe(path)
    assert e.value.code == "empty_audio"


@pytest.mark.parametrize(
    "data",
    [
        b"this is not audio at all, just text" * 10,
        b"RIFF\x24\x00\x00\x00WAVEfmt ",
        bytes(range(256)),
    ],
    ids=["text", "truncated-header", "noise"],
)
def test_corrupt_files(tmp_path: Path, data: bytes) -> None:
    with pytest.raises(InvalidAudio, match="not a readable WAV, FLAC or OGG") as e:
        list(audio_io.stream(write_bytes(tmp_path / "bad.wav", data), 10_000))
    assert e.value.code == "corrupt_audio"


def test_truncated_flac_fails_cleanly_or_yields_what_it_has(tmp_path: Path) -> None:
    path = tmp_path / "cut.flac"
    sf.write(str(path), tone(10_000, 20.0), 10_000)
    data = path.read_bytes()
    cut = write_bytes(tmp_path / "cut2.flac", data[: len(data) // 2])
    try:
        audio = np.concatenate(list(audio_io.stream(cut, 10_000, chunk_s=2)))
    except InvalidAudio as e:
        assert e.code == "corrupt_audio"
    else:
        assert 0 < len(audio) <= 200_000 and np.all(np.isfinite(audio))


def test_unsupported_container(tmp_path: Path) -> None:
    path = tmp_path / "clip.aiff"
    sf.write(str(path), tone(10_000, 1.0), 10_000, format="AIFF")
    with pytest.raises(InvalidAudio, match="format AIFF is not supported") as e:
        audio_io.probe(path)
    assert e.value.code == "unsupported_format"


def test_too_low_sample_rate(tmp_path: Path) -> None:
    path = tmp_path / "slow.wav"
    sf.write(str(path), tone(500, 2.0, 100.0), 500)
    with pytest.raises(InvalidAudio, match="below 1000 Hz") as e:
        audio_io.probe(path)
    assert e.value.code == "bad_sample_rate"


def test_non_finite_samples(tmp_path: Path) -> None:
    path = tmp_path / "nan.wav"
    audio = tone(10_000, 1.0)
    audio[500] = np.nan
    sf.write(str(path), audio, 10_000, subtype="FLOAT")
    with pytest.raises(InvalidAudio, match="NaN") as e:
        audio_io.read_all(path, 10_000)
    assert e.value.code == "non_finite"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidAudio, match="no such file"):
        audio_io.probe(tmp_path / "nope.wav")
