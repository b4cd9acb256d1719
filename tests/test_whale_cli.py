"""``trailguard whale``: synth, train (tiny), evaluate and detect through the real CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from sqlalchemy import func, select

from renderer.audio import SpectrogramConfig
from scoring import model_store
from scoring.database import make_engine, make_sessionmaker
from scoring.model_store import active
from scoring.schema import AudioClip
from scoring.whale import train as trainer
from scoring.whale.model import build_detector
from server import cli
from server.settings import Settings


@pytest.fixture
def env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("TRAILGUARD_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("TRAILGUARD_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("TRAILGUARD_MODEL_DIR", str(settings.model_dir))
    return settings


def test_detect_without_a_model_says_so_in_one_line(
    env: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "a.wav"
    sf.write(str(path), np.zeros(20_000, dtype=np.float32), 10_000)
    assert cli.main(["whale", "detect", str(path)]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert out == ["trailguard: no trained whale model; train one with: trailguard whale train"]


def test_detect_stores_nothing_so_needs_no_site(
    env: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Clips belong to a site, but ``whale detect`` only reads a local file: no row, no --site."""
    path = env.model_dir / "whale" / "tiny.pt"
    cfg = trainer.TrainConfig(arch="resnet18")
    trainer.save(path, build_detector("resnet18"), cfg, SpectrogramConfig(), {"threshold": 0.5})
    sessions = make_sessionmaker(make_engine(env.database_url))
    with sessions() as session, session.begin():
        model_store.register(session, pipeline="whale", path=path, version="tiny", threshold=0.5)
    rec = tmp_path / "rec.wav"
    sf.write(str(rec), np.zeros(40_000, dtype=np.float32), 10_000)
    assert cli.main(["whale", "detect", str(rec)]) == 0
    assert "windows" in capsys.readouterr().out
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(AudioClip)) == 0
    with pytest.raises(SystemExit):  # and there is no site option to give it
        cli.main(["whale", "detect", str(rec), "--site", "tg_x"])


def test_synth_writes_labelled_clips_and_a_long_recording(
    env: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "clips"
    assert cli.main(["whale", "synth", str(out), "--n", "12", "--seed", "3"]) == 0
    with (out / "labels.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12 and {r["label"] for r in rows} <= {"0", "1"}
    info = sf.info(str(out / rows[0]["file"]))
    assert info.samplerate == 10_000 and info.duration == pytest.approx(6.9124)
    assert cli.main(["whale", "synth", str(out), "--long-minutes", "1.5", "--format", "wav"]) == 0
    assert sf.info(str(out / "long_1.5min.wav")).duration == pytest.approx(90.0)
    truth = json.loads((out / "long_1.5min.truth.json").read_text())
    assert isinstance(truth["song"], list)
    right = tmp_path / "right"
    assert cli.main(["whale", "synth", str(right), "--n", "2", "--species", "right"]) == 0
    assert sf.info(str(right / "right_00000.flac")).samplerate == 2_000


def test_bad_file_gets_a_precise_error(
    env: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.ogg"
    bad.write_bytes(b"OggS but broken")
    assert cli.main(["whale", "synth", str(tmp_path / "x"), "--n", "1"]) == 0
    assert cli.main(["whale", "train", str(tmp_path / "nowhere"), "--quiet"]) == 2
    assert "no labels.csv" in capsys.readouterr().err


@pytest.mark.slow
def test_tiny_train_evaluate_detect_round_trip(
    env: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A ResNet-18 on 400 fresh clips for 3 epochs: far from the full model, but it learns."""
    sizes = ["--n-train", "400", "--n-val", "100", "--n-test", "150", "--epochs", "3"]
    args = ["whale", "train", "--arch", "resnet18", *sizes, "--quiet", "--threads", "2"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    [summary] = [line for line in out.splitlines() if line.startswith("held-out")]
    metrics = dict(kv.split("=") for kv in summary.split()[1:])
    assert float(metrics["roc_auc"]) > 0.6, out  # chance is 0.5; the full setting reaches more
    engine = make_engine(env.database_url)
    with make_sessionmaker(engine)() as session:
        row = active(session, "whale")
        assert row is not None and row.threshold is not None
        assert Path(row.path).exists() and Path(row.path).with_suffix(".pr.png").exists()
    engine.dispose()

    png = tmp_path / "pr.png"
    assert cli.main(["whale", "evaluate", "--n", "60", "--png", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert "roc_auc=" in capsys.readouterr().out

    rec = tmp_path / "rec"
    assert cli.main(["whale", "synth", str(rec), "--long-minutes", "1", "--format", "wav"]) == 0
    report = tmp_path / "det.json"
    assert cli.main(["whale", "detect", str(rec / "long_1min.wav"), "--json", str(report)]) == 0
    doc = json.loads(report.read_text())
    assert set(doc) == {"threshold", "windows", "detections"}
    assert len(doc["windows"]) == 31
    for w in doc["windows"]:
        assert set(w) == {"start_s", "end_s", "score", "detected"}
        assert w["detected"] == (w["score"] >= doc["threshold"])
    for d in doc["detections"]:
        assert set(d) == {"start_s", "end_s", "confidence"} and d["start_s"] < d["end_s"]
