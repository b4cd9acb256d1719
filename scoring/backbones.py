"""Torchvision backbones with offline-safe pretrained weights.

``pretrained`` is one of:

- ``"none"``: random initialisation;
- ``"imagenet"``: torchvision's ImageNet weights, *only* if they are already in the local
  torch hub cache (``torch.hub.get_dir()/checkpoints``); nothing is ever downloaded, a missing
  file raises :class:`~renderer.errors.ModelNotFound` naming the file to place there;
- a path to a local weights file (a ``state_dict``, or a TrailGuard checkpoint's weights).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision import models

from renderer.errors import InvalidInput, ModelNotFound

WEIGHTS = {
    "vgg16": models.VGG16_Weights.IMAGENET1K_V1,
    "vgg16_bn": models.VGG16_BN_Weights.IMAGENET1K_V1,
    "resnet18": models.ResNet18_Weights.IMAGENET1K_V1,
    "resnet34": models.ResNet34_Weights.IMAGENET1K_V1,
    "resnet50": models.ResNet50_Weights.IMAGENET1K_V2,
}


def imagenet_state_dict(arch: str) -> dict[str, torch.Tensor]:
    """ImageNet weights of ``arch`` from the local cache; never downloads."""
    weights = WEIGHTS[arch]
    filename = Path(weights.url).name
    path = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if not path.exists():
        raise ModelNotFound(
            f"ImageNet weights for {arch} are not on this machine; put {filename} in {path.parent}"
            " or pass pretrained=none or a local weights file"
        )
    state: dict[str, torch.Tensor] = torch.load(path, map_location="cpu", weights_only=True)
    return state


def weights_from_file(path: Path) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise InvalidInput(f"pretrained weights file {path} does not exist", "no_weights_file")
    raw: Any = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(raw, dict) and "state_dict" in raw:
        raw = raw["state_dict"]
    if not isinstance(raw, dict):
        raise InvalidInput(f"{path} holds no state_dict", "bad_weights_file")
    return raw


def pretrained_state_dict(arch: str, pretrained: str) -> dict[str, torch.Tensor] | None:
    """The state dict that ``pretrained`` names, or None for ``"none"``."""
    if pretrained == "none":
        return None
    if pretrained == "imagenet":
        return imagenet_state_dict(arch)
    return weights_from_file(Path(pretrained))


def load_matching(model: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Copy every tensor whose name and shape match; returns the names that were skipped.

    Heads sized for another task (1000 ImageNet classes) and first convolutions of another
    channel count are skipped rather than failing, so one weights file serves every variant.
    """
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(usable, strict=False)
    return sorted(set(own) - set(usable))
