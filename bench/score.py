"""Production mouse scorer vs plain eager torchvision VGG16 (224², fp32), same synthetic set.

    .venv/bin/python bench/score.py [--accounts 4] [--enrol-events 6000] [--tests 80]
                                    [--budget-s 60] [--threads 2]

Both models get the same owner task and the same training wall-clock budget:

- *production*: our renderer's model channels at ``--size`` (64²), VGG16-BN layout at
  ``--width`` (0.125), backbone + per-account heads, channels-last inference, large batches;
- *baseline*: the seed's design, torchvision ``vgg16`` on 224² speed-coloured RGB trail
  pictures with a softmax over accounts, eager fp32, batch 16.

Throughput is measured on random inputs of each model's shape after a warm-up. Ends with
``images_per_s=… baseline_images_per_s=… speedup=… auc=… baseline_auc=…``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torchvision.models import vgg16

from renderer.mouse import MODEL_CHANNELS, draw_trail, sanitize, session_windows
from scoring.mouse.data import Preprocessing, scoring_images
from scoring.mouse.model import ModelConfig
from scoring.mouse.synth import SynthConfig, owner_sets
from scoring.mouse.train import TrainConfig, train_owner
from scoring.sessionfile import POSITIVE, SessionRecord


def throughput(
    model: torch.nn.Module, shape: tuple[int, ...], channels_last: bool, seconds: float
) -> float:
    model.eval()
    x = torch.rand(shape)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        model(x)
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds or done == 0:
            model(x)
            done += shape[0]
    return done / (time.perf_counter() - start)


def rgb_windows(
    record: SessionRecord, window_events: int, max_windows: int | None = None
) -> np.ndarray:
    clean = sanitize(record.events, record.viewport)
    wins = session_windows(clean, window_events, max_windows)
    return (
        np.stack([draw_trail(w, (224, 224)).transpose(2, 0, 1) for w in wins]).astype(np.float32)
        / 255
    )


def train_baseline(
    train: list[SessionRecord], users: list[str], budget_s: float, window_events: int
) -> torch.nn.Module:
    xs = [rgb_windows(r, window_events) for r in train]
    ys = [np.full(len(x), users.index(r.user_id)) for x, r in zip(xs, train, strict=True)]
    x, y = torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))
    model = vgg16(weights=None, num_classes=len(users))
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    model.train()
    start, steps = time.perf_counter(), 0
    rng = np.random.default_rng(0)
    while time.perf_counter() - start < budget_s:
        idx = torch.from_numpy(rng.choice(len(x), size=min(8, len(x)), replace=False))
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
        steps += 1
    print(f"baseline: {steps} steps of 8 images in {budget_s:.0f} s ({len(x)} training windows)")
    return model.eval()


def baseline_scores(
    model: torch.nn.Module, tests: list[SessionRecord], users: list[str], window_events: int
) -> list[float]:
    out = []
    with torch.inference_mode():
        for r in tests:
            logp = torch.log_softmax(model(torch.from_numpy(rgb_windows(r, window_events, 4))), 1)
            out.append(float(-logp[:, users.index(r.user_id)].mean()))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--accounts", type=int, default=4)
    ap.add_argument("--enrol-events", type=int, default=6000)
    ap.add_argument("--tests", type=int, default=80)
    ap.add_argument("--budget-s", type=float, default=60.0)
    ap.add_argument("--width", type=float, default=0.125)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=21)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = SynthConfig(
        accounts=args.accounts, outsiders=args.accounts, enrol_sessions=2,
        enrol_events=args.enrol_events, test_sessions=args.tests, test_max_events=3000,
        seed=args.seed,
    )  # fmt: skip
    train, test_iter = owner_sets(cfg)
    tests = list(test_iter)
    users = sorted({r.user_id for r in train})
    labels = [POSITIVE[r.label or "genuine"] for r in tests]
    prep = Preprocessing(size=args.size)
    model_cfg = ModelConfig(width=args.width, size=args.size)

    # same wall-clock training budget: production trains epochs until the budget is spent
    start = time.perf_counter()
    owner = train_owner(train, model_cfg, prep, TrainConfig(epochs=1, progress=False))
    one_epoch = time.perf_counter() - start
    epochs = max(1, int(args.budget_s / max(one_epoch, 1e-3)))
    if epochs > 1:
        owner = train_owner(train, model_cfg, prep, TrainConfig(epochs=epochs, progress=False))
    print(f"production: {epochs} epochs in about {epochs * one_epoch:.0f} s")
    ours = [
        owner.session_score(r.user_id, scoring_images(sanitize(r.events, r.viewport), prep))
        for r in tests
    ]
    auc = roc_auc_score(labels, ours)

    base = train_baseline(train, users, args.budget_s, prep.window_events)
    baseline_auc = roc_auc_score(labels, baseline_scores(base, tests, users, prep.window_events))

    ips = throughput(owner.model, (64, len(MODEL_CHANNELS), args.size, args.size), True, 5.0)
    base_ips = throughput(vgg16(weights=None), (16, 3, 224, 224), False, 10.0)
    print(
        f"production {args.width}×VGG16-BN at {args.size}², {len(MODEL_CHANNELS)} channels: "
        f"{ips:.1f} images/s"
    )
    print(f"baseline torchvision VGG16 224² fp32 eager: {base_ips:.2f} images/s")
    print(
        f"images_per_s={ips:.1f} baseline_images_per_s={base_ips:.2f} "
        f"speedup={ips / base_ips:.1f} auc={auc:.3f} baseline_auc={baseline_auc:.3f}"
    )


if __name__ == "__main__":
    main()
