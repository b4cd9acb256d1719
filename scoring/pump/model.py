"""The card classifier: a torchvision CNN over rendered card images.

A card image is one grey channel; it is repeated to three channels and normalised with the
ImageNet statistics so that ImageNet weights (``pretrained="imagenet"``) see familiar input.
Everything needed to render and normalise again is the ``preprocessing`` dict stored in the
checkpoint next to the weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torchvision import models

from renderer.errors import InvalidInput
from renderer.pump import render_card
from scoring.backbones import load_matching, pretrained_state_dict
from scoring.pump.cards import Card

ARCHS = ("resnet18", "resnet34", "vgg16_bn", "vgg16")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def default_preprocessing(size: int = 48) -> dict[str, Any]:
    return {
        "size": size,
        "line_width": 1.5 * size / 64,
        "fill": True,
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
    }


def build(arch: str, n_classes: int, pretrained: str = "none") -> nn.Module:
    """``arch`` with a fresh ``n_classes`` head; ``pretrained`` per :mod:`scoring.backbones`."""
    if arch not in ARCHS:
        raise InvalidInput(f"unknown architecture {arch!r}; one of {', '.join(ARCHS)}", "bad_arch")
    model: nn.Module = getattr(models, arch)(weights=None, num_classes=n_classes)
    if arch.startswith("vgg"):
        # 64-px inputs leave a 2×2 map: pool it to 1×1 instead of blowing it up to 7×7
        model.avgpool = nn.AdaptiveAvgPool2d(1)
        model.classifier = nn.Sequential(nn.Dropout(0.3), nn.Linear(512, n_classes))
    state = pretrained_state_dict(arch, pretrained)
    if state is not None:
        load_matching(model, state)
    return model


def render_images(cards: Sequence[Card], preprocessing: dict[str, Any]) -> np.ndarray:
    """Rendered cards as float32 (N, size, size)."""
    size = int(preprocessing["size"])
    out = np.zeros((len(cards), size, size), dtype=np.float32)
    for i, card in enumerate(cards):
        out[i] = render_card(
            card.position,
            card.load,
            size=size,
            line_width=float(preprocessing["line_width"]),
            fill=bool(preprocessing["fill"]),
        )
    return out


def to_tensor(images: np.ndarray, preprocessing: dict[str, Any]) -> torch.Tensor:
    """(N, H, W) images in [0, 1] → normalised (N, 3, H, W) float tensor."""
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).unsqueeze(1)
    x = x.expand(-1, 3, -1, -1)
    mean = torch.tensor(preprocessing["mean"], dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(preprocessing["std"], dtype=torch.float32).view(1, 3, 1, 1)
    return (x - mean) / std
