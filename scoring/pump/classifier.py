"""A ready-to-use card classifier: the active model of the store, or an untrained stand-in."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sqlalchemy.orm import Session
from torch import nn

from renderer.errors import ModelNotFound
from scoring import model_store
from scoring.pump import synth
from scoring.pump.cards import Card
from scoring.pump.model import build, default_preprocessing, render_images, to_tensor

TRAIN_HINT = "trailguard pump train"


@dataclass
class Classifier:
    model: nn.Module
    classes: list[str]
    preprocessing: dict[str, Any]
    version_id: int | None
    untrained: bool

    def images(self, cards: Sequence[Card]) -> torch.Tensor:
        return to_tensor(render_images(cards, self.preprocessing), self.preprocessing)

    @torch.inference_mode()
    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        self.model.eval()
        return torch.softmax(self.model(images).float(), dim=1)

    def classify(self, cards: Sequence[Card], batch_size: int = 128) -> list[dict[str, Any]]:
        """``{"card_id", "mode", "confidence", "probabilities"}`` for each card."""
        out: list[dict[str, Any]] = []
        for start in range(0, len(cards), batch_size):
            chunk = cards[start : start + batch_size]
            probs = self.probabilities(self.images(chunk)).numpy()
            out.extend(self.describe(card.card_id, p) for card, p in zip(chunk, probs, strict=True))
        return out

    def describe(self, card_id: str, probs: np.ndarray) -> dict[str, Any]:
        best = int(np.argmax(probs))
        return {
            "card_id": card_id,
            "mode": self.classes[best],
            "confidence": round(float(probs[best]), 6),
            "probabilities": {
                c: round(float(p), 6) for c, p in zip(self.classes, probs, strict=True)
            },
        }


def load_active(session: Session, device: str = "cpu") -> Classifier:
    """The active pump model; :class:`ModelNotFound` naming the train command when none."""
    row = model_store.active(session, "pump")
    if row is None:
        raise ModelNotFound("no trained pump model", hint=TRAIN_HINT)
    path = Path(row.path)
    if not path.exists():
        raise ModelNotFound(f"the active pump model file {path} is missing", hint=TRAIN_HINT)
    ckpt = model_store.load_checkpoint(path, map_location=device)
    classes = list(ckpt.config["classes"])
    model = build(str(ckpt.config["arch"]), len(classes), "none")
    model.load_state_dict(ckpt.state_dict)
    model.to(device).eval()
    return Classifier(model, classes, dict(ckpt.preprocessing), row.id, untrained=False)


def untrained(seed: int = 0) -> Classifier:
    """A randomly initialised ResNet-18 over the default modes, for when nothing is trained."""
    torch.manual_seed(seed)
    model = build("resnet18", len(synth.MODES), "none").eval()
    return Classifier(model, list(synth.MODES), default_preprocessing(), None, untrained=True)
