"""The torch PCEN mel front end against librosa, streaming against whole-clip, windows."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from renderer.audio import (
    FrontEnd,
    SpectrogramConfig,
    StreamingFrontEnd,
    mel_filterbank,
    overview_image,
    pool_columns,
    window_starts,
    windows,
)
from renderer.errors import InvalidAudio

MEL_RTOL = 1e-4
"""Largest mel error relative to the spectrogram's peak (float32 FFT against numpy's)."""
PCEN_ATOL = 1e-4
"""Largest absolute PCEN difference (PCEN values here reach about 5)."""


def song_like(seconds: float, sr: int = 10_000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    sweep = 0.2 * np.sin(2 * np.pi * (300 * t + 80 * np.sin(0.7 * t)))
    gate = (np.sin(2 * np.pi * 0.3 * t) > 0).astype(np.float64)
    return (sweep * gate + 0.02 * rng.standard_normal(len(t))).astype(np.float32)


def librosa_energy(x: np.ndarray, cfg: SpectrogramConfig) -> np.ndarray:
    magnitude = np.abs(
        librosa.stft(x, n_fft=cfg.n_fft, hop_length=cfg.hop_length, center=False, window="hann")
    )
    mel = librosa.filters.mel(
        sr=cfg.sample_rate,
        n_fft=cfg.n_fft,
        n_mels=cfg.n_mels,
        fmin=cfg.fmin,
        fmax=cfg.fmax,
        htk=cfg.mel_htk,
        norm="slaney" if cfg.mel_slaney_norm else None,
    )
    return (mel @ magnitude) ** cfg.mel_power  # (n_mels, frames)


@pytest.mark.parametrize(
    "cfg",
    [
        SpectrogramConfig(),
        SpectrogramConfig(mel_htk=False, mel_slaney_norm=True, fmin=50, fmax=3000, n_mels=40),
        SpectrogramConfig(
            sample_rate=2000, n_fft=256, hop_length=32, fmax=1000, window_s=2.0, window_hop_s=1.0
        ),
    ],
    ids=["humpback", "slaney-band", "right-whale-rate"],
)
def test_mel_and_pcen_match_librosa(cfg: SpectrogramConfig) -> None:
    x = song_like(20, cfg.sample_rate)
    front = FrontEnd(cfg)
    ours = front.mel_frames(torch.from_numpy(x)).numpy().T
    ref = librosa_energy(x, cfg)
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() <= MEL_RTOL * ref.max()
    assert np.allclose(
        mel_filterbank(cfg),
        librosa.filters.mel(
            sr=cfg.sample_rate,
            n_fft=cfg.n_fft,
            n_mels=cfg.n_mels,
            fmin=cfg.fmin,
            fmax=cfg.fmax,
            htk=cfg.mel_htk,
            norm="slaney" if cfg.mel_slaney_norm else None,
        ),
        atol=1e-6,
    )

    pcen = front.pcen(torch.from_numpy(ref.T.astype(np.float32)))[0].numpy().T
    # Our smoother starts at the first frame (M[0] = E[0]); librosa's zi says the same thing.
    ref_pcen = librosa.pcen(
        ref,
        b=cfg.pcen_smooth,
        gain=cfg.pcen_alpha,
        bias=cfg.pcen_delta,
        power=1 / cfg.pcen_root,
        eps=cfg.pcen_floor,
        zi=(1 - cfg.pcen_smooth) * ref[:, :1],
    )
    assert np.abs(pcen - ref_pcen).max() <= PCEN_ATOL
    assert ref_pcen.max() > 1.0  # the comparison is not between two near-zero arrays


def test_default_window_is_the_published_128_by_64_image() -> None:
    cfg = SpectrogramConfig()
    assert (cfg.window_frames, cfg.n_mels, cfg.window_samples) == (128, 64, 39_124)
    frames = FrontEnd(cfg).pcen_frames(torch.from_numpy(song_like(10)))
    images, starts = windows(frames, cfg)
    assert images.shape[1:] == (1, 128, 64)
    assert starts[0] == 0 and starts[-1] + 128 == frames.shape[0]


def test_pcen_removes_gain() -> None:
    """PCEN is an automatic gain control: 40 dB of level moves it by g^(1-α), about 17 %."""
    front = FrontEnd(SpectrogramConfig())
    x = song_like(10)
    quiet = front.pcen_frames(torch.from_numpy(x * 0.01))
    loud = front.pcen_frames(torch.from_numpy(x))
    assert (quiet - loud).abs().mean() < 0.25 * loud.abs().mean()
    log_quiet = torch.log(front.mel_frames(torch.from_numpy(x * 0.01)))
    log_loud = torch.log(front.mel_frames(torch.from_numpy(x)))
    assert (log_quiet - log_loud).abs().mean() > (quiet - loud).abs().mean() * 10


@pytest.mark.parametrize("chunk", [3_001, 7_777, 300_000])
def test_streaming_gives_the_same_windows_as_the_whole_clip(chunk: int) -> None:
    cfg = SpectrogramConfig()
    x = song_like(31)
    whole, starts = windows(FrontEnd(cfg).pcen_frames(torch.from_numpy(x)), cfg)
    stream = StreamingFrontEnd(cfg)
    parts, got = [], []
    for i in range(0, len(x), chunk):
        images, s = stream.push(x[i : i + chunk])
        parts.append(images)
        got += s
        # bounded: the buffer never holds more than one window plus one chunk of frames
        assert stream.frames.shape[0] <= cfg.window_frames + chunk // cfg.hop_length + 2
    images, s = stream.finish()
    parts.append(images)
    got += s
    assert got == starts
    assert torch.allclose(torch.cat(parts), whole, atol=1e-5)


def test_a_clip_shorter_than_one_window_is_padded_to_one() -> None:
    cfg = SpectrogramConfig()
    stream = StreamingFrontEnd(cfg)
    first, _ = stream.push(song_like(1.5))
    images, starts = stream.finish()
    assert first.shape[0] == 0 and images.shape == (1, 1, 128, 64) and starts == [0]


@settings(max_examples=60, deadline=None)
@given(n_frames=st.integers(0, 5_000), hop=st.floats(0.05, 3.8))
def test_windows_cover_every_frame(n_frames: int, hop: float) -> None:
    cfg = SpectrogramConfig(window_hop_s=hop)
    starts = window_starts(n_frames, cfg)
    if n_frames < cfg.window_frames:
        assert starts == []
        return
    covered = np.zeros(n_frames, dtype=bool)
    for s in starts:
        assert 0 <= s <= n_frames - cfg.window_frames
        covered[s : s + cfg.window_frames] = True
    assert covered.all()
    assert starts == sorted(set(starts))


def test_bad_configs_are_refused() -> None:
    with pytest.raises(InvalidAudio, match="Nyquist"):
        SpectrogramConfig(fmax=6_000)
    with pytest.raises(InvalidAudio, match="shorter than one FFT frame"):
        SpectrogramConfig(window_s=0.05)
    with pytest.raises(InvalidAudio, match="gaps"):
        SpectrogramConfig(window_hop_s=5.0)
    with pytest.raises(InvalidAudio, match="pcen_smooth"):
        SpectrogramConfig(pcen_smooth=0)
    cfg = SpectrogramConfig(fmin=100, fmax=2000)
    assert SpectrogramConfig.from_dict({**cfg.to_dict(), "unknown": 1}) == cfg


def test_overview_image_puts_low_frequencies_at_the_bottom() -> None:
    images = torch.zeros((3, 1, 128, 64))
    images[..., 0] = 5.0  # energy in the lowest mel bin
    columns = pool_columns(images, hop_frames=64, pool=8)
    assert columns.shape == (64, 24)
    picture = overview_image(columns)
    assert picture.dtype == np.uint8 and picture.shape == (64, 24)
    assert picture[-1].min() == 255 and picture[0].max() == 0
