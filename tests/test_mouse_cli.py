"""``trailguard mouse synth|train|evaluate`` and ``trailguard render mouse`` end to end."""

import csv
import json
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import select

from scoring.database import make_engine, make_sessionmaker
from scoring.schema import ModelVersion
from server.cli import main

TINY = ["--width", "0.0625", "--size", "32", "--epochs", "1", "--threads", "1", "--quiet"]
SYNTH = [
    "--accounts", "3", "--outsiders", "2", "--enrol-sessions", "2", "--enrol-events", "1500",
    "--test-sessions", "12", "--test-min-events", "100", "--test-max-events", "800",
    "--group-train-people", "6", "--group-test-people", "4", "--group-sessions", "2",
    "--group-min-events", "300", "--group-max-events", "1500", "--seed", "4",
]  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    assert main(["mouse", "synth", "--out", str(out), *SYNTH]) == 0
    return out


@pytest.mark.slow
def test_train_owner_saves_and_registers(
    data: Path, tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRAILGUARD_DATABASE_URL", sqlite_url)
    out = tmp_path / "models"
    args = ["mouse", "train", "--train", str(data / "owner_train.jsonl"), "--task", "owner"]
    assert main([*args, "--out", str(out), "--register", *TINY]) == 0
    assert len(list(out.glob("mouse-owner-*-heads.pt"))) == 1
    engine = make_engine(sqlite_url)
    with make_sessionmaker(engine)() as s:
        (row,) = s.scalars(select(ModelVersion).where(ModelVersion.active.is_(True))).all()
        assert row.task == "owner" and Path(row.path).exists()
        assert row.metrics["accounts"] == 3
    engine.dispose()


@pytest.mark.slow
def test_evaluate_group_writes_scores_metrics_and_roc(data: Path, tmp_path: Path) -> None:
    scores, metrics = tmp_path / "scores.csv", tmp_path / "metrics.json"
    rc = main(
        [
            "mouse", "evaluate", "--task", "group",
            "--train", str(data / "group_train.jsonl"), "--test", str(data / "group_test.jsonl"),
            "--scores", str(scores), "--json", str(metrics), *TINY,
        ]
    )  # fmt: skip
    assert rc == 0
    rows = list(csv.DictReader(scores.open()))
    assert len(rows) == 8 and set(rows[0]) == {"session_id", "user_id", "score"}
    m = json.loads(metrics.read_text())
    for key in ("pooled_auc", "per_account_auc", "per_account_eer", "accuracy_at_eer_threshold"):
        assert key in m
    assert "precision" in m["at_calibrated_thresholds"]
    assert 0 <= m["pooled_auc"] <= 1
    assert Path(m["roc_png"]).exists() and Path(m["roc_png"]).parent == metrics.parent
    # the group task's own defaults: page-visit-scale windows, training windows scaled to them
    prep = m["preprocessing"]
    assert (prep["window_events"], prep["train_min_events"], prep["train_max_events"]) == (
        1600,
        400,
        2800,
    )
    # one view per window, new training windows every epoch (docs/mouse.md, *Quality*)
    assert prep["window_views"] == 1 and m["training"]["fresh_windows"] is True


def test_synth_only_group_writes_the_group_files_with_their_own_people_counts(
    tmp_path: Path,
) -> None:
    assert main(["mouse", "synth", "--out", str(tmp_path), *SYNTH, "--only", "group"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["group_test.jsonl", "group_train.jsonl"]
    train = (tmp_path / "group_train.jsonl").read_text().splitlines()
    test = (tmp_path / "group_test.jsonl").read_text().splitlines()
    assert (len(train), len(test)) == (6 * 2, 4 * 2)


def test_bad_session_file_is_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"session_id": "x", "viewport": [1, 1], "events": [[1, 2]]}\n')
    rc = main(
        ["mouse", "train", "--train", str(bad), "--task", "owner", "--out", str(tmp_path), *TINY]
    )
    assert rc == 2
    assert "bad_events" in capsys.readouterr().err


def test_render_mouse_writes_one_png_per_usable_session(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "few.jsonl"
    lines = (data / "owner_test.jsonl").read_text().splitlines()[:3]
    broken = '{"session_id": "../empty", "viewport": [800, 600], "events": []}'
    src.write_text("\n".join([*lines, broken, "not json"]) + "\n")
    out = tmp_path / "png"
    assert main(["render", "mouse", str(src), "--out", str(out), "--size", "128"]) == 0
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 3
    assert Image.open(pngs[0]).size == (128, 128)
    text = capsys.readouterr().out
    assert "empty_session" in text and "1 bad lines" in text
