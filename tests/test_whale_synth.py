"""The synthetic generator: stated SNR mix, measured SNR, and no shortcut through level."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from scoring.whale import synth

SR = 10_000
N = 39_124


def test_snr_is_what_was_asked_in_the_call_band() -> None:
    rng = np.random.default_rng(1)
    for target in (-10.0, -3.0, 0.0, 7.5):
        noise = synth.background(rng, N, SR)
        call = synth.humpback_song(rng, N, SR)
        mixed = synth.mix(call, noise, SR, target)
        lo, hi = call.band
        p_call = synth.band_power(mixed - noise, SR, lo, hi, call.active)
        p_noise = synth.band_power(noise, SR, lo, hi)
        assert 10 * np.log10(p_call / p_noise) == pytest.approx(target, abs=0.01)


def test_snr_bands_follow_the_2_3_3_2_mix_and_half_are_positive() -> None:
    rng = np.random.default_rng(3)
    bands = np.array([synth.draw_snr(rng)[1] for _ in range(5_000)])
    share = np.bincount(bands, minlength=4) / len(bands)
    assert np.allclose(share, [0.2, 0.3, 0.3, 0.2], atol=0.025)
    clips = synth.clips(200, seed=3, window_samples=N)
    labels = np.array([c.label for c in clips])
    assert 0.4 < labels.mean() < 0.6
    for c in clips:
        if c.label:
            lo, hi = synth.SNR_BANDS[c.snr_band]
            assert lo <= c.snr_db <= hi
        else:
            assert np.isnan(c.snr_db) and c.snr_band == -1
        assert np.abs(c.audio).max() <= 0.99


def test_level_and_broadband_energy_do_not_separate_the_classes() -> None:
    clips = synth.clips(300, seed=5, window_samples=N)
    labels = np.array([c.label for c in clips])
    rms = np.array([np.std(c.audio) for c in clips])
    song_band = np.array(
        [synth.band_power(c.audio, SR, 150, 1600) / np.var(c.audio) for c in clips]
    )
    peak = np.array([np.abs(c.audio - c.audio.mean()).max() for c in clips])
    for feature in (rms, song_band, peak):
        assert 0.35 < roc_auc_score(labels, feature) < 0.65


def test_positive_windows_hold_enough_call_after_the_lead_in() -> None:
    rng = np.random.default_rng(7)
    lead = 30_000
    for _ in range(20):
        call = synth.humpback_song(rng, N + lead, SR, check_from=lead)
        assert call.active[lead:].sum() >= synth.MIN_CALL_S * SR
        lo, hi = call.band
        assert 40 <= lo < hi <= SR / 2


def test_right_whale_upcalls_rise_at_2_khz() -> None:
    rng = np.random.default_rng(2)
    call = synth.right_upcall(rng, 4_000, 2_000)
    sounding = np.flatnonzero(call.active)
    first, last = call.wave[sounding[:400]], call.wave[sounding[-400:]]
    # zero crossings count frequency: the end of a J-shaped up-call is faster than its start
    crossings = [np.sum(np.diff(np.sign(part)) != 0) for part in (first, last)]
    assert crossings[1] > crossings[0] * 1.5
    clip = synth.make_clip(rng, 4_000, 2_000, True, "right")
    assert clip.label == 1 and len(clip.audio) == 4_000


def test_long_recording_streams_chunks_with_song_spans() -> None:
    rng = np.random.default_rng(0)
    chunks = list(synth.long_recording(rng, 300, chunk_s=60))
    assert [len(c) for c, _ in chunks] == [600_000] * 5
    spans = [s for _, spans in chunks for s in spans]
    assert spans and all(0 <= a < b <= 300 for a, b in spans)


def test_same_seed_same_clips() -> None:
    a = synth.clips(5, seed=11, window_samples=N)
    b = synth.clips(5, seed=11, window_samples=N)
    assert all(np.array_equal(x.audio, y.audio) for x, y in zip(a, b, strict=True))
