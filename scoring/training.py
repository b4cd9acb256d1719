"""Plain training and evaluation loops shared by every model, with tqdm progress bars."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn
from tqdm import tqdm

Batch = tuple[torch.Tensor, torch.Tensor]


def train_one_epoch(
    model: nn.Module,
    batches: Iterable[Batch],
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    device: str = "cpu",
    desc: str = "train",
    progress: bool = True,
) -> float:
    """One pass over ``batches``; returns the mean loss per example."""
    model.train()
    total, count = 0.0, 0
    for images, targets in tqdm(batches, desc=desc, leave=False, disable=not progress):
        images, targets = images.to(device), targets.to(device)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(images), targets)
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * len(images)
        count += len(images)
    return total / max(count, 1)


@torch.inference_mode()
def predict(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    *,
    device: str = "cpu",
    desc: str = "predict",
    progress: bool = True,
) -> torch.Tensor:
    """Model outputs for every batch, concatenated on the CPU."""
    model.eval()
    outputs = [
        model(images.to(device)).float().cpu()
        for images in tqdm(batches, desc=desc, leave=False, disable=not progress)
    ]
    return torch.cat(outputs) if outputs else torch.empty(0)


def evaluate(
    model: nn.Module,
    batches: Iterable[Batch],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    device: str = "cpu",
    progress: bool = True,
) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Mean loss, outputs and targets over ``batches`` (no gradients)."""
    model.eval()
    outs, targets_all = [], []
    with torch.inference_mode():
        for images, targets in tqdm(batches, desc="evaluate", leave=False, disable=not progress):
            outs.append(model(images.to(device)).float().cpu())
            targets_all.append(targets)
    if not outs:
        return 0.0, torch.empty(0), torch.empty(0)
    outputs, targets = torch.cat(outs), torch.cat(targets_all)
    return float(loss_fn(outputs, targets)), outputs, targets
