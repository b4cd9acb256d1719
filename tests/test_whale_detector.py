"""The detector network, merging windows into detections, and bounded memory on long files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from renderer.errors import InvalidInput, ModelNotFound
from scoring.whale import detector, synth
from scoring.whale.model import build_detector


def test_resnet50_takes_one_channel_128_by_64_and_gives_one_logit() -> None:
    model = build_detector("resnet50", "none").eval()
    assert model.conv1.in_channels == 1
    assert sum(1 for m in model.modules() if m.__class__.__name__ == "Bottleneck") == 16
    with torch.inference_mode():
        assert model(torch.randn(2, 1, 128, 64)).shape == (2, 1)


def test_pretrained_from_a_local_file_and_imagenet_never_downloads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = build_detector("resnet18", "none")
    weights = tmp_path / "w.pt"
    torch.save(source.state_dict(), weights)
    copy = build_detector("resnet18", str(weights))
    assert torch.equal(copy.layer1[0].conv1.weight, source.layer1[0].conv1.weight)
    # an RGB ImageNet-style stem is folded into one channel
    rgb = {k: v for k, v in source.state_dict().items() if k != "conv1.weight"}
    rgb["conv1.weight"] = torch.randn(64, 3, 7, 7)
    torch.save(rgb, weights)
    folded = build_detector("resnet18", str(weights))
    assert torch.allclose(folded.conv1.weight, rgb["conv1.weight"].sum(1, keepdim=True))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty-hub"))
    with pytest.raises(ModelNotFound, match="not on this machine"):
        build_detector("resnet50", "imagenet")
    with pytest.raises(InvalidInput, match="does not exist"):
        build_detector("resnet18", str(tmp_path / "missing.pt"))
    with pytest.raises(InvalidInput, match="unknown detector architecture"):
        build_detector("vgg11", "none")


def window(start: float, score: float, threshold: float = 0.5) -> dict[str, float | bool]:
    return {
        "start_s": start,
        "end_s": start + 3.912,
        "score": score,
        "detected": score >= threshold,
    }


def test_overlapping_detected_windows_merge_with_their_best_score() -> None:
    windows = [
        window(0, 0.1),
        window(1.92, 0.7),
        window(3.84, 0.9),
        window(5.76, 0.2),
        window(7.68, 0.2),
        window(9.6, 0.2),
        window(11.52, 0.6),
    ]
    spans = detector.merge(windows, duration_s=14.0)
    assert spans == [
        {"start_s": 1.92, "end_s": 7.752, "confidence": 0.9},
        {"start_s": 11.52, "end_s": 14.0, "confidence": 0.6},
    ]
    assert detector.merge([window(0, 0.2)], 4.0) == []


def test_analyse_scores_every_window_of_a_stream() -> None:
    det = detector.untrained("resnet18")
    rng = np.random.default_rng(0)
    chunks = [chunk for chunk, _ in synth.long_recording(rng, 65, chunk_s=20)]
    result = detector.analyse(det, iter(chunks), keep_overview=True)
    assert result.duration_s == pytest.approx(65, abs=0.01)
    starts = [w["start_s"] for w in result.windows]
    assert starts[0] == 0 and np.allclose(np.diff(starts[:-1]), 1.92)
    assert result.windows[-1]["end_s"] == pytest.approx(65, abs=0.05)
    assert all(0 <= w["score"] <= 1 for w in result.windows)
    assert sum(c.shape[1] for c in result.overview) > 200
    doc = json.loads(json.dumps(result.to_json()))
    assert set(doc) == {"threshold", "windows", "detections"}
    assert set(doc["windows"][0]) == {"start_s", "end_s", "score", "detected"}


PEAK_SCRIPT = """
import resource, sys, torch
from pathlib import Path
torch.set_num_threads(1)
from scoring.whale import detector
det = detector.untrained("resnet18")
result = detector.analyse_file(det, Path(sys.argv[1]))
print(len(result.windows), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""


def write_noise(path: Path, minutes: float) -> Path:
    rng = np.random.default_rng(1)
    t = np.arange(600_000) / 10_000
    with sf.SoundFile(str(path), "w", 10_000, 1, subtype="PCM_16") as f:
        for _ in range(int(minutes)):
            chunk = 0.05 * rng.standard_normal(600_000) + 0.1 * np.sin(2 * np.pi * 400 * t)
            f.write(chunk.astype(np.float32))
    return path


def peak_mib(path: Path) -> tuple[int, int]:
    out = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT, str(path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    windows, peak = out.stdout.split()
    return int(windows), int(peak)


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_file_length(tmp_path: Path) -> None:
    short = peak_mib(write_noise(tmp_path / "short.flac", 2))
    long = peak_mib(write_noise(tmp_path / "long.flac", 12))
    assert long[0] > 5 * short[0]  # six times the audio was scored
    assert long[1] - short[1] < 40, (short, long)  # … in about the same memory (MiB)
