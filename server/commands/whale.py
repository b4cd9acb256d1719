"""``trailguard whale synth|train|evaluate|detect``: the whale song detector from the shell."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

from renderer.audio import SpectrogramConfig
from renderer.errors import InvalidInput, ModelNotFound
from scoring import model_store
from scoring.database import make_engine, make_sessionmaker
from scoring.whale import dataset, detector, synth
from scoring.whale import train as trainer
from scoring.whale.dataset import ImageSet
from scoring.whale.model import ARCHS, DEFAULT_ARCH
from server.settings import Settings

TEST_SEED = 7_919
"""Seed of the default held-out test set (train and validation use other seeds)."""


def register(sub: argparse._SubParsersAction) -> None:
    whale = sub.add_parser("whale", help="whale song detection: synth, train, evaluate, detect")
    ws = whale.add_subparsers(dest="whale_command", metavar="ACTION", required=True)
    _synth_parser(ws)
    _train_parser(ws)
    ev = ws.add_parser("evaluate", help="score the active model on held-out labelled clips")
    ev.add_argument(
        "data", nargs="?", type=Path, help="folder with labels.csv (default: synthetic)"
    )
    ev.add_argument("--n", type=int, default=2000, help="synthetic test clips (default 2000)")
    ev.add_argument("--seed", type=int, default=TEST_SEED)
    ev.add_argument("--png", type=Path, default=Path("whale-pr-curve.png"), help="PR-curve image")
    ev.add_argument("--json", type=Path, help="also write the metrics here")
    ev.set_defaults(func=evaluate_cmd)
    det = ws.add_parser("detect", help="per-window scores and merged detections of a recording")
    det.add_argument("file", type=Path, help="WAV, FLAC or OGG recording, any length")
    det.add_argument("--json", type=Path, help="write {threshold, windows, detections} here")
    det.add_argument("--threshold", type=float, help="override the model's threshold")
    det.set_defaults(func=detect_cmd)


def _synth_parser(ws: argparse._SubParsersAction) -> None:
    sy = ws.add_parser("synth", help="write synthetic labelled clips (or one long recording)")
    sy.add_argument("out", type=Path, help="output folder (gets the files and labels.csv)")
    sy.add_argument("--n", type=int, default=200, help="clips to write (default 200)")
    sy.add_argument("--seed", type=int, default=0)
    sy.add_argument("--species", choices=synth.SPECIES, default="humpback")
    sy.add_argument("--format", choices=("wav", "flac", "ogg"), default="flac")
    sy.add_argument(
        "--long-minutes", type=float, help="instead write one recording this long with song bouts"
    )
    sy.set_defaults(func=synth_cmd)


def _train_parser(ws: argparse._SubParsersAction) -> None:
    tr = ws.add_parser("train", help="train a detector and make it the active model")
    tr.add_argument(
        "data", nargs="?", type=Path, help="folder with labels.csv (default: synthetic)"
    )
    tr.add_argument("--arch", choices=ARCHS, default=DEFAULT_ARCH)
    tr.add_argument("--pretrained", default="none", help="imagenet, none or a weights file")
    tr.add_argument("--n-train", type=int, default=6000, help="synthetic training clips")
    tr.add_argument("--n-val", type=int, default=800, help="synthetic validation clips")
    tr.add_argument("--n-test", type=int, default=2000, help="synthetic held-out test clips")
    tr.add_argument("--epochs", type=int, default=6)
    tr.add_argument("--batch-size", type=int, default=32)
    tr.add_argument("--lr", type=float, default=2e-3)
    tr.add_argument("--time-budget-min", type=float, default=13.0, help="stop training after")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    tr.add_argument("--no-activate", action="store_true", help="register without activating")
    tr.add_argument("--quiet", action="store_true", help="no progress bars")
    tr.set_defaults(func=train_cmd)


def _write_clip(path: Path, audio: np.ndarray, sr: int) -> None:
    subtype = "PCM_16" if path.suffix in (".wav", ".flac") else None
    sf.write(str(path), audio, sr, subtype=subtype)


def synth_cmd(settings: Settings, args: argparse.Namespace) -> int:
    args.out.mkdir(parents=True, exist_ok=True)
    if args.long_minutes:
        return _synth_long(args)
    spec = SpectrogramConfig()
    sr, length = synth.clip_length(args.species, spec.window_samples)
    lead = int(dataset.LEAD_S * sr)
    rng = np.random.default_rng(args.seed)
    with (args.out / "labels.csv").open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["file", "label", "snr_db", "snr_band"])
        for i in range(args.n):
            clip = synth.make_clip(
                rng, length + lead, sr, bool(rng.random() < 0.5), args.species, lead
            )
            name = f"{args.species}_{i:05d}.{args.format}"
            _write_clip(args.out / name, clip.audio, sr)
            snr = "" if np.isnan(clip.snr_db) else f"{clip.snr_db:.2f}"
            out.writerow([name, clip.label, snr, clip.snr_band])
    print(
        f"wrote {args.n} {args.species} clips ({sr} Hz, {(length + lead) / sr:.2f} s) to {args.out}"
    )
    return 0


def _synth_long(args: argparse.Namespace) -> int:
    path = args.out / f"long_{args.long_minutes:g}min.{args.format}"
    spans: list[tuple[float, float]] = []
    rng = np.random.default_rng(args.seed)
    subtype = "PCM_16" if args.format in ("wav", "flac") else None
    with sf.SoundFile(str(path), "w", 10_000, 1, subtype=subtype) as f:
        for chunk, chunk_spans in synth.long_recording(rng, args.long_minutes * 60):
            f.write(chunk)
            spans += chunk_spans
    truth = [{"start_s": round(a, 3), "end_s": round(b, 3)} for a, b in spans]
    path.with_suffix(".truth.json").write_text(json.dumps({"song": truth}, indent=1))
    print(f"wrote {path} ({args.long_minutes:g} min, {len(truth)} song units)")
    return 0


def _sets(args: argparse.Namespace, spec: SpectrogramConfig) -> tuple[ImageSet, ...]:
    if args.data is not None:
        return dataset.split(dataset.from_folder(args.data, spec), (0.15, 0.2), args.seed)
    print(
        f"generating {args.n_train} + {args.n_val} + {args.n_test} synthetic clips "
        f"(train, validation, held-out test)",
        flush=True,
    )
    return (
        dataset.synthetic(args.n_train, args.seed * 3 + 1, spec),
        dataset.synthetic(args.n_val, args.seed * 3 + 2, spec),
        dataset.synthetic(args.n_test, TEST_SEED + args.seed, spec),
    )


def train_cmd(settings: Settings, args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    spec = SpectrogramConfig()
    train_set, val_set, test_set = _sets(args, spec)
    cfg = trainer.TrainConfig(
        arch=args.arch,
        pretrained=args.pretrained,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        time_budget_s=args.time_budget_min * 60,
        seed=args.seed,
        device=settings.device,
        progress=not args.quiet,
    )
    result = trainer.train(train_set, val_set, cfg)
    probs = trainer.scores(result.model, test_set, cfg)
    labels = test_set.labels.numpy()
    metrics = trainer.evaluate(labels, probs, test_set.snr_band, result.threshold)
    metrics["history"] = result.history
    version = model_store.new_version()
    path = settings.model_dir / "whale" / f"{version}.pt"
    trainer.save(path, result.model, cfg, spec, metrics)
    trainer.pr_curve_png(labels, probs, result.threshold, path.with_suffix(".pr.png"))
    engine = make_engine(settings.database_url)
    try:
        with make_sessionmaker(engine)() as session:
            row = model_store.register(
                session,
                pipeline="whale",
                path=path,
                version=version,
                threshold=result.threshold,
                metrics=_jsonable(metrics),
                config={"arch": cfg.arch, "pretrained": cfg.pretrained},
                activate=not args.no_activate,
            )
            session.commit()
            print(f"model_version_id={row.id} version={version} active={row.active}")
    finally:
        engine.dispose()
    _print_metrics(metrics)
    print(f"checkpoint={path}")
    print(f"pr_curve={path.with_suffix('.pr.png')}")
    return 0


def _jsonable(metrics: dict[str, Any]) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(json.dumps(metrics))
    return loaded


def _print_metrics(m: dict[str, Any]) -> None:
    print(
        f"held-out n={m['n']} roc_auc={m['roc_auc']:.4f} average_precision="
        f"{m['average_precision']:.4f} precision={m['precision']:.4f} recall={m['recall']:.4f} "
        f"threshold={m['threshold']:.4f}"
    )
    for band, b in m["by_snr"].items():
        print(
            f"  snr {band:>12}: positives={b['n_positive']:5d} roc_auc={b['roc_auc']:.4f} "
            f"ap={b['average_precision']:.4f} precision={b['precision']:.4f} "
            f"recall={b['recall']:.4f}"
        )


def _active(settings: Settings) -> detector.Detector:
    engine = make_engine(settings.database_url)
    try:
        with make_sessionmaker(engine)() as session:
            return detector.load_active(session, settings.device)
    finally:
        engine.dispose()


def evaluate_cmd(settings: Settings, args: argparse.Namespace) -> int:
    det = _active(settings)
    data = (
        dataset.from_folder(args.data, det.spec)
        if args.data is not None
        else dataset.synthetic(args.n, args.seed, det.spec)
    )
    if len(np.unique(data.labels.numpy())) < 2:
        raise InvalidInput("evaluation needs both positive and negative clips", "one_class")
    cfg = trainer.TrainConfig(device=det.device, progress=False)
    probs = trainer.scores(det.model, data, cfg)
    labels = data.labels.numpy()
    metrics = trainer.evaluate(labels, probs, data.snr_band, det.threshold)
    _print_metrics(metrics)
    print(f"pr_curve={trainer.pr_curve_png(labels, probs, det.threshold, args.png)}")
    if args.json:
        args.json.write_text(json.dumps(metrics, indent=1))
    return 0


def detect_cmd(settings: Settings, args: argparse.Namespace) -> int:
    try:
        det = _active(settings)
    except ModelNotFound as e:
        print(f"trailguard: no trained whale model; train one with: {e.hint}")
        return 1
    if args.threshold is not None:
        det.threshold = args.threshold
    analysis = detector.analyse_file(det, args.file)
    print(
        f"{args.file}: {analysis.duration_s:.1f} s, {len(analysis.windows)} windows, "
        f"{len(analysis.detections)} detections (threshold {det.threshold:.3f}, "
        f"model {det.version})"
    )
    for d in analysis.detections:
        print(f"  {d['start_s']:9.2f}-{d['end_s']:9.2f} s  confidence {d['confidence']:.3f}")
    if args.json:
        args.json.write_text(json.dumps(analysis.to_json(), indent=1))
        print(f"json={args.json}")
    return 0
