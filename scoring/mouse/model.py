"""The VGG16-based mouse model, adapted for small data sets and this CPU.

The convolutional stack is torchvision's VGG16-BN layout (13 3×3 convolutions with batch
norm, five max-pools; layer indices match ``torchvision.models.vgg16_bn().features`` so
ImageNet weights load by name at ``width=1`` through :mod:`scoring.backbones`). Changes for
small data and a CPU, all configurable:

- ``width``: channel multiplier (1.0 is VGG16; 0.25 trains ~30× faster at 64²);
- ``in_channels``: the renderer's model channels (a first conv of another channel count is
  left at random initialisation when ImageNet weights are loaded);
- the 3×4096 classifier is replaced by global average pooling, a small embedding layer with
  batch norm and dropout, and a linear head. The embedding is what per-account heads use.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from renderer.errors import InvalidInput
from renderer.mouse import MODEL_CHANNELS
from scoring.backbones import load_matching, pretrained_state_dict

VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


@dataclass(frozen=True)
class ModelConfig:
    width: float = 0.25
    size: int = 64
    in_channels: int = len(MODEL_CHANNELS)
    embed_dim: int = 64
    dropout: float = 0.3
    n_out: int = 1
    batch_norm: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ModelConfig:
        known = {k: raw[k] for k in cls.__dataclass_fields__ if k in raw}
        return cls(**known)


def make_features(cfg: ModelConfig) -> tuple[nn.Sequential, int]:
    layers: list[nn.Module] = []
    channels = cfg.in_channels
    for item in VGG16:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
            continue
        out = max(4, round(int(item) * cfg.width))
        layers.append(nn.Conv2d(channels, out, 3, padding=1))
        if cfg.batch_norm:
            layers.append(nn.BatchNorm2d(out))
        layers.append(nn.ReLU(inplace=True))
        channels = out
    return nn.Sequential(*layers), channels


class MouseNet(nn.Module):
    """VGG16(-BN) features → global average pool → embedding → head."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.size < 32 or cfg.width <= 0:
            raise InvalidInput("model size must be ≥ 32 and width > 0", "bad_model_config")
        self.cfg = cfg
        self.features, channels = make_features(cfg)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.embedding = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(cfg.dropout),
            nn.Linear(channels, cfg.embed_dim),
            nn.BatchNorm1d(cfg.embed_dim),
            nn.ReLU(inplace=True),
        )
        self.head = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(cfg.embed_dim, cfg.n_out))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.embedding(self.pool(self.features(x)))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.embed(x))
        return out


def build(cfg: ModelConfig, pretrained: str = "none") -> MouseNet:
    """A model; ``pretrained`` is ``imagenet`` (local cache only), ``none`` or a weights path."""
    model = MouseNet(cfg)
    arch = "vgg16_bn" if cfg.batch_norm else "vgg16"
    state = pretrained_state_dict(arch, pretrained)
    if state is not None:
        load_matching(model, state)
    return model.to(memory_format=torch.channels_last)
