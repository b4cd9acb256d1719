"""``trailguard mouse``: synthetic sessions, training and evaluation of the mouse models."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import torch

from renderer.errors import InvalidInput
from scoring import model_store
from scoring.database import make_engine, make_sessionmaker
from scoring.mouse import store, synth
from scoring.mouse.data import Preprocessing
from scoring.mouse.evaluate import evaluate as run_evaluation
from scoring.mouse.evaluate import train_task
from scoring.mouse.metrics import roc_png
from scoring.mouse.model import ModelConfig
from scoring.mouse.train import TrainConfig
from scoring.sessionfile import iter_sessions, read_sessions, write_sessions
from server.settings import Settings


def register(sub: argparse._SubParsersAction) -> None:
    mouse = sub.add_parser("mouse", help="mouse sessions: synth, train, evaluate")
    msub = mouse.add_subparsers(dest="mouse_command", metavar="ACTION", required=True)
    tr = msub.add_parser("train", help="train an owner or group model from a session file")
    tr.add_argument("--train", type=Path, required=True, help="JSON Lines sessions")
    tr.add_argument("--out", type=Path, required=True, help="model directory")
    tr.add_argument(
        "--register", action="store_true", help="record it as the active model in the database"
    )
    tr.add_argument(
        "--site",
        metavar="SITE_KEY",
        help="with --register: the site whose external account ids the file's user_ids are "
        "(user_ids written as SITE_KEY:EXTERNAL_ID need no --site)",
    )
    _model_options(tr)
    tr.set_defaults(func=train)
    ev = msub.add_parser("evaluate", help="train on TRAIN, score TEST, write scores and metrics")
    ev.add_argument("--train", type=Path, required=True)
    ev.add_argument("--test", type=Path, required=True)
    ev.add_argument("--scores", type=Path, required=True, help="CSV session_id,user_id,score")
    ev.add_argument("--json", type=Path, required=True, dest="json_out", help="metrics JSON")
    _model_options(ev)
    ev.set_defaults(func=evaluate)
    sy = msub.add_parser("synth", help="write synthetic owner and group session files")
    sy.add_argument("--out", type=Path, required=True, help="directory for the four files")
    sy.add_argument("--only", choices=["owner", "group"], help="write only that task's two files")
    defaults = synth.SynthConfig()
    for name in (
        "accounts", "outsiders", "enrol_sessions", "enrol_events", "test_sessions",
        "test_min_events", "test_max_events", "group_train_people", "group_test_people",
        "group_sessions", "group_min_events", "group_max_events", "seed",
    ):  # fmt: skip
        sy.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(defaults, name))
    sy.set_defaults(func=synthesise)


TASK_DEFAULTS = {
    "owner": {
        "window_events": Preprocessing().window_events,
        "oversample": TrainConfig().oversample,
        "window_views": Preprocessing().window_views,
    },
    "group": {"window_events": 1600, "oversample": 2.0, "window_views": 1, "fresh_windows": True},
}
"""Per-task defaults of ``--window-events``, ``--oversample``, ``--window-views`` and
``--fresh-windows``. *group* scores page-visit-scale
windows (1,600 events; training windows 400–2,800): in a grid of training people × window
length (docs/mouse.md, *Customers and non-customers*) longer windows and more training people
were what raised the group AUC, where a wider network did not. Its oversample of 2 draws as many
training images as 400-event windows did at the group's earlier ``--oversample 0.5``; it draws
them anew every epoch (``--fresh-windows``), which on development data of another seed raised
the session AUC from 0.939 to 0.958 (docs/mouse.md, *Quality*). Window views
(``--window-views``) gave nothing measurable there, so both tasks score consecutive windows
only."""


def _model_options(p: argparse.ArgumentParser) -> None:
    m, pr, t = ModelConfig(), Preprocessing(), TrainConfig()
    p.add_argument("--task", choices=["owner", "group"], required=True)
    p.add_argument("--width", type=float, default=m.width, help="VGG16 channel multiplier")
    p.add_argument("--size", type=int, default=pr.size, help="model input side in pixels")
    p.add_argument(
        "--window-events",
        type=int,
        help="events per scoring window (default: owner 400, group 1600); training windows "
        "are a quarter to 1.75 times as long",
    )
    p.add_argument(
        "--window-views",
        type=int,
        help="scoring windows per window length: 2 adds the windows half-way between "
        "consecutive ones (stride W/2), 4 stride W/4 (default: owner 1, group 1)",
    )
    p.add_argument(
        "--fresh-windows",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="group: draw new random training windows every epoch (default: group yes)",
    )
    p.add_argument("--epochs", type=int, default=t.epochs)
    p.add_argument("--batch-size", type=int, default=t.batch_size)
    p.add_argument("--lr", type=float, default=t.lr)
    p.add_argument("--target-far", type=float, default=t.target_far)
    p.add_argument(
        "--oversample",
        type=float,
        help="random training windows per session, as a multiple of its scoring windows "
        f"(default: owner {t.oversample}, group 2.0)",
    )
    p.add_argument("--pretrained", default="none", help="imagenet, none or a weights file")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _configs(args: argparse.Namespace) -> tuple[ModelConfig, Preprocessing, TrainConfig]:
    if args.threads:
        torch.set_num_threads(args.threads)
    defaults = TASK_DEFAULTS[args.task]
    window_events = args.window_events or defaults["window_events"]
    oversample = defaults["oversample"] if args.oversample is None else args.oversample
    views = defaults["window_views"] if args.window_views is None else args.window_views
    fresh = (
        defaults.get("fresh_windows", False) if args.fresh_windows is None else args.fresh_windows
    )
    if window_events < 2:
        raise InvalidInput("--window-events must be at least 2", "bad_option")
    if views < 1:
        raise InvalidInput("--window-views must be at least 1", "bad_option")
    if oversample <= 0:
        raise InvalidInput("--oversample must be positive", "bad_option")
    if not 0 < args.target_far < 1:
        raise InvalidInput("--target-far must be between 0 and 1", "bad_option")
    model_cfg = ModelConfig(width=args.width, size=args.size)
    prep = Preprocessing(size=args.size, window_events=int(window_events), window_views=int(views))
    cfg = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        target_far=args.target_far,
        oversample=float(oversample),
        fresh_windows=bool(fresh),
        pretrained=args.pretrained,
        seed=args.seed,
        progress=not args.quiet,
    )
    return model_cfg, prep, cfg


def train(settings: Settings, args: argparse.Namespace) -> int:
    model_cfg, prep, cfg = _configs(args)
    model = train_task(args.task, read_sessions(args.train), model_cfg, prep, cfg)
    version = model_store.new_version()
    path = store.save(args.out, model, version)
    print(f"saved {args.task} model {version} to {path}")
    if args.register:
        engine = make_engine(settings.database_url)
        try:
            with make_sessionmaker(engine)() as s:
                row = store.register(s, path.resolve(), model, version, args.site)
                s.commit()
                print(f"registered model version {row.id} as active")
        finally:
            engine.dispose()
    return 0


def evaluate(settings: Settings, args: argparse.Namespace) -> int:
    model_cfg, prep, cfg = _configs(args)
    result = run_evaluation(
        args.task, read_sessions(args.train), iter_sessions(args.test), model_cfg, prep, cfg
    )
    args.scores.parent.mkdir(parents=True, exist_ok=True)
    with open(args.scores, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["session_id", "user_id", "score"])
        writer.writerows((sid, user, f"{score:.6f}") for sid, user, score in result.rows)
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    if len(set(result.labels)) == 2:
        roc = roc_png(
            args.json_out.with_suffix(".roc.png"),
            result.labels,
            result.scores,
            f"mouse {args.task}",
        )
        result.metrics["roc_png"] = str(roc)
    args.json_out.write_text(json.dumps(result.metrics, indent=2))
    m = result.metrics
    print(
        f"task={args.task} sessions={len(result.rows)} pooled_auc={m.get('pooled_auc')} "
        f"per_account_auc={m.get('per_account_auc')} "
        f"accuracy_at_eer={m.get('accuracy_at_eer_threshold')}",
        file=sys.stdout,
    )
    return 0


def synthesise(settings: Settings, args: argparse.Namespace) -> int:
    cfg = synth.SynthConfig(
        **{k: getattr(args, k) for k in synth.SynthConfig.__dataclass_fields__ if hasattr(args, k)}
    )
    args.out.mkdir(parents=True, exist_ok=True)
    counts = {}
    if args.only in (None, "owner"):
        train_set, tests = synth.owner_sets(cfg)
        counts["owner_train.jsonl"] = write_sessions(args.out / "owner_train.jsonl", train_set)
        counts["owner_test.jsonl"] = write_sessions(args.out / "owner_test.jsonl", tests)
    if args.only in (None, "group"):
        group_train, group_test = synth.group_sets(cfg)
        counts["group_train.jsonl"] = write_sessions(args.out / "group_train.jsonl", group_train)
        counts["group_test.jsonl"] = write_sessions(args.out / "group_test.jsonl", group_test)
    for name, n in counts.items():
        print(f"{args.out / name}: {n} sessions")
    return 0
