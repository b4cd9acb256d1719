"""The detector network: a torchvision ResNet on single-channel [time × mel] PCEN images."""

from __future__ import annotations

import torch
from torch import nn
from torchvision import models

from renderer.errors import InvalidInput
from scoring.backbones import load_matching, pretrained_state_dict

ARCHS = ("resnet50", "resnet34", "resnet18")
DEFAULT_ARCH = "resnet50"


def build_detector(arch: str = DEFAULT_ARCH, pretrained: str = "none") -> nn.Module:
    """A ResNet with a 1-channel stem and one logit; ``pretrained`` is imagenet, none or a path.

    ImageNet's RGB stem is folded into one channel by summing its three input planes, so the
    pretrained filters respond to a grey image as they did to the colour one.
    """
    if arch not in ARCHS:
        raise InvalidInput(
            f"unknown detector architecture {arch!r}; use one of {ARCHS}", "bad_arch"
        )
    model: nn.Module = getattr(models, arch)(weights=None, num_classes=1)
    model.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    state = pretrained_state_dict(arch, pretrained)
    if state is not None:
        state = dict(state)
        stem = state.get("conv1.weight")
        if stem is not None and stem.ndim == 4 and stem.shape[1] == 3:
            state["conv1.weight"] = stem.sum(dim=1, keepdim=True)
        load_matching(model, state)
    return model


def to_device(model: nn.Module, device: str) -> nn.Module:
    return model.to(device).to(memory_format=torch.channels_last)
