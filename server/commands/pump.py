"""``trailguard pump``: synthetic cards, training, evaluation, classification, import, images."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

from PIL import Image
from sqlalchemy.orm import Session

from renderer.errors import InvalidInput, ModelNotFound, NotFound
from renderer.pump import render_card, to_png_array
from scoring import jobs
from scoring.database import make_engine, make_sessionmaker, ping
from scoring.pipelines.base import Context, Job
from scoring.pipelines.pump import PumpPipeline
from scoring.pump import classifier, synth
from scoring.pump import evaluate as metrics_mod
from scoring.pump import train as trainer
from scoring.pump.cards import Card, parse_csv, to_long_csv
from scoring.pump.model import render_images
from server.pump_api import store_cards
from server.settings import Settings
from server.sites import site_by_key


def register(sub: argparse._SubParsersAction) -> None:
    pump = sub.add_parser("pump", help="pump dynamometer cards: synth, train, evaluate, classify")
    psub = pump.add_subparsers(dest="pump_command", metavar="ACTION", required=True)
    _register_synth(psub)
    _register_train(psub)
    _register_evaluate(psub)
    cl = psub.add_parser("classify", help="print each card's failure mode and confidence")
    cl.add_argument("cards", type=Path, help="CSV in the two-column or long layout")
    cl.add_argument("--json", type=Path, dest="json_out", help="also write the results here")
    cl.add_argument("--kind", default="surface", choices=["surface", "downhole"])
    cl.set_defaults(func=classify)
    imp = psub.add_parser("import", help="store cards per well and diagnose them")
    imp.add_argument("cards", type=Path)
    imp.add_argument(
        "--site",
        required=True,
        metavar="KEY",
        help="key of the site that owns the wells (trailguard site add prints it); only that"
        " site's API sees the cards",
    )
    imp.add_argument("--well", default="", help="well id (the long layout may carry its own)")
    imp.add_argument("--card-id", default="", help="card id of a two-column CSV")
    imp.add_argument("--kind", default="surface", choices=["surface", "downhole"])
    imp.add_argument(
        "--now", action="store_true", help="diagnose here instead of queueing for the worker"
    )
    imp.set_defaults(func=import_cards)
    img = psub.add_parser("image", help="write each card of a CSV as a PNG")
    img.add_argument("cards", type=Path)
    img.add_argument("out_dir", type=Path)
    img.add_argument("--size", type=int, default=256)
    img.add_argument("--prefix", default="pump-")
    img.set_defaults(func=images)


def register_render(rsub: argparse._SubParsersAction) -> None:
    """``trailguard render pump CARDS --out DIR``: the same drawing as ``pump image``."""
    rp = rsub.add_parser("pump", help="one PNG per dynamometer card of a CSV")
    rp.add_argument("cards", type=Path, help="CSV in the two-column or long layout")
    rp.add_argument("--out", type=Path, dest="out_dir", required=True)
    rp.add_argument("--size", type=int, default=256)
    rp.add_argument("--prefix", default="pump-")
    rp.set_defaults(func=images)


def _register_synth(psub: argparse._SubParsersAction) -> None:
    sy = psub.add_parser("synth", help="write labelled synthetic cards (long CSV layout)")
    sy.add_argument("out", type=Path)
    sy.add_argument("--n", type=int, default=1100, help="number of cards")
    sy.add_argument("--kind", default="surface", choices=["surface", "downhole", "mixed"])
    sy.add_argument("--imbalance", action="store_true", help="the field's class frequencies")
    sy.add_argument("--all-modes", action="store_true", help="also the absolute-load modes")
    sy.add_argument("--seed", type=int, default=0)
    sy.set_defaults(func=synth_cmd)


def _register_train(psub: argparse._SubParsersAction) -> None:
    tr = psub.add_parser("train", help="train the card classifier and make it active")
    tr.add_argument("data", nargs="?", type=Path, help="labelled long CSV (default: synthetic)")
    tr.add_argument("--tiny", action="store_true", help="the CI setting (seconds)")
    tr.add_argument("--epochs", type=int)
    tr.add_argument("--n", type=int, help="synthetic training cards")
    tr.add_argument("--arch", choices=["resnet18", "resnet34", "vgg16_bn", "vgg16"])
    tr.add_argument("--pretrained", help="imagenet, none or a weights file (default none)")
    tr.add_argument("--seed", type=int)
    tr.add_argument("--lr", type=float, help="peak learning rate of the one-cycle schedule")
    tr.add_argument("--no-activate", action="store_true")
    tr.add_argument("--no-progress", action="store_true")
    tr.set_defaults(func=train_cmd)


def _register_evaluate(psub: argparse._SubParsersAction) -> None:
    ev = psub.add_parser("evaluate", help="accuracy, macro-F1, per-class table, confusion PNG")
    ev.add_argument("data", nargs="?", type=Path, help="labelled long CSV (default: synthetic)")
    ev.add_argument("--n", type=int, default=1100, help="held-out synthetic cards")
    ev.add_argument("--kind", default="surface", choices=["surface", "downhole", "mixed"])
    ev.add_argument("--imbalance", action="store_true")
    ev.add_argument("--seed", type=int, default=1_000_003, help="never a training seed")
    ev.add_argument("--out", type=Path, default=Path("pump-evaluation"))
    ev.set_defaults(func=evaluate_cmd)


def _read_cards(path: Path, **kw: Any) -> list[Card]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise InvalidInput(f"cannot read {path}: {e}", "no_file") from e
    except UnicodeDecodeError as e:
        raise InvalidInput(f"{path} is not UTF-8 text", "bad_encoding") from e
    return parse_csv(text, card_id=kw.pop("card_id", "") or path.stem, **kw)


def _sessions(settings: Settings) -> Any:
    engine = make_engine(settings.database_url)
    ping(engine)
    return engine, make_sessionmaker(engine)


def synth_cmd(settings: Settings, args: argparse.Namespace) -> int:
    modes = synth.ALL_MODES if args.all_modes else synth.MODES
    cards = synth.synth_set(
        args.n, seed=args.seed, kind=args.kind, modes=modes, imbalance=args.imbalance
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(to_long_csv(cards, with_labels=True), encoding="utf-8")
    counts = synth.class_counts(args.n, modes, args.imbalance)
    print(f"wrote {len(cards)} {args.kind} cards to {args.out}: {counts}")
    return 0


def train_cmd(settings: Settings, args: argparse.Namespace) -> int:
    config = trainer.TINY if args.tiny else trainer.FULL
    overrides = {
        k: v
        for k, v in {
            "epochs": args.epochs,
            "n_train": args.n,
            "arch": args.arch,
            "pretrained": args.pretrained,
            "seed": args.seed,
            "lr": args.lr,
        }.items()
        if v is not None
    }
    config = replace(config, **overrides)
    cards = _read_cards(args.data) if args.data else None
    result = trainer.train(
        config, cards, progress=not args.no_progress, log=lambda m: print(m, flush=True)
    )
    engine, sessions = _sessions(settings)
    try:
        with sessions() as session, session.begin():
            row = trainer.save(session, settings.model_dir, result, activate=not args.no_activate)
            state = "active" if row.active else "inactive"
            n = config.n_train if cards is None else len(cards)
            print(
                f"trained {config.arch} on {n} cards in {result.seconds:.0f} s:"
                f" model {row.version} ({state}) at {row.path}"
            )
    finally:
        engine.dispose()
    return 0


def _labelled_cards(args: argparse.Namespace) -> list[Card]:
    if args.data:
        return _read_cards(args.data)
    return synth.synth_set(args.n, seed=args.seed, kind=args.kind, imbalance=args.imbalance)


def _active(settings: Settings) -> classifier.Classifier:
    engine, sessions = _sessions(settings)
    try:
        with sessions() as session:
            return classifier.load_active(session, settings.device)
    finally:
        engine.dispose()


def evaluate_cmd(settings: Settings, args: argparse.Namespace) -> int:
    clf = _active(settings)
    cards = _labelled_cards(args)
    known = [c for c in cards if c.label in clf.classes]
    if not known:
        raise InvalidInput("no card carries a mode the model knows", "bad_labels")
    images = trainer.to_uint8(render_images(known, clf.preprocessing))
    probs = trainer.predict_proba(clf.model, images, clf.preprocessing)
    y_true = trainer.labelled(known, clf.classes)
    result = metrics_mod.metrics(y_true, probs.argmax(axis=1), clf.classes)
    args.out.mkdir(parents=True, exist_ok=True)
    png = metrics_mod.confusion_png(result, args.out / "confusion.png")
    (args.out / "metrics.json").write_text(json.dumps(result, indent=2))
    print(metrics_mod.table(result))
    skipped = len(cards) - len(known)
    print(
        f"accuracy {result['accuracy']:.4f}  macro-F1 {result['macro_f1']:.4f}  n {len(known)}"
        + (f"  ({skipped} cards of modes the model does not know skipped)" if skipped else "")
    )
    print(f"confusion matrix: {png}")
    return 0


def classify(settings: Settings, args: argparse.Namespace) -> int:
    cards = _read_cards(args.cards, kind=args.kind)
    try:
        clf = _active(settings)
    except ModelNotFound:
        print(
            f"trailguard: no trained pump model; train one with: {classifier.TRAIN_HINT}",
            file=sys.stderr,
        )
        return 1
    results = clf.classify(cards)
    for r in results:
        print(f"{r['card_id']}\t{r['mode']}\t{r['confidence']:.3f}")
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(results, indent=2))
    return 0


def _store(session: Session, cards: list[Card], site_key: str) -> list[tuple[int, str]]:
    try:
        site = site_by_key(session, site_key)
    except NotFound as e:
        raise InvalidInput(str(e), "unknown_site") from e
    rows = store_cards(session, cards, "cli", site.id)
    return [(r.id, r.card_id) for r in rows]


def import_cards(settings: Settings, args: argparse.Namespace) -> int:
    cards = _read_cards(args.cards, card_id=args.card_id, well_id=args.well, kind=args.kind)
    if not args.now and not settings.redis_url:
        print(
            "trailguard pump import: set TRAILGUARD_REDIS_URL to queue for the worker,"
            " or pass --now",
            file=sys.stderr,
        )
        return 2
    engine, sessions = _sessions(settings)
    try:
        with sessions() as session, session.begin():
            stored = _store(session, cards, args.site)
        if args.now:
            _diagnose_here(settings, sessions, stored)
        else:
            asyncio.run(_enqueue(settings.redis_url or "", stored))
    finally:
        engine.dispose()
    return 0


async def _enqueue(redis_url: str, stored: list[tuple[int, str]]) -> None:
    import redis.asyncio as aioredis

    redis = aioredis.Redis.from_url(redis_url)
    try:
        for pk, card_id in stored:
            job_id = await jobs.enqueue(redis, "pump", {"card_pk": str(pk)})
            print(f"{card_id}\tcard {pk}\tqueued as {job_id}")
    finally:
        await redis.aclose()


def _diagnose_here(settings: Settings, sessions: Any, stored: list[tuple[int, str]]) -> None:
    ctx = Context(
        sessions=sessions,
        redis=None,  # type: ignore[arg-type]  # in-process: nothing is queued
        model_dir=settings.model_dir,
        data_dir=settings.data_dir,
    )
    pipeline = PumpPipeline(ctx)
    pipeline.load()
    for pk, card_id in stored:
        job = Job(id=f"pump:cli-{uuid.uuid4().hex}", pipeline="pump", fields={"card_pk": str(pk)})
        item = asyncio.run(pipeline.decode(job))
        result = pipeline.process(item)
        with sessions() as session, session.begin():
            pipeline.persist(session, job, item, result)
        tag = " (untrained model)" if result["untrained"] else ""
        print(f"{card_id}\tcard {pk}\t{result['mode']}\t{result['confidence']:.3f}{tag}")


def images(settings: Settings, args: argparse.Namespace) -> int:
    cards = _read_cards(args.cards)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for card in cards:
        image = render_card(card.position, card.load, size=args.size, line_width=2.5, fill=True)
        safe = re.sub(r"[^A-Za-z0-9_-]", "_", card.card_id)[:120]
        path = args.out_dir / f"{args.prefix}{safe}.png"
        Image.fromarray(to_png_array(image)).save(path)
        print(f"{card.card_id}\t{card.n_points} points\t{path}")
    return 0
