"""The card CNN: torchvision builders with offline pretrained weights, tensors, metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision import models

from renderer.errors import InvalidInput, ModelNotFound
from scoring.pump import evaluate
from scoring.pump.model import build, default_preprocessing, to_tensor


def test_resnet_from_scratch_has_the_right_head() -> None:
    model = build("resnet18", 11, "none")
    assert isinstance(model, models.ResNet)
    out = model.eval()(torch.zeros(2, 3, 64, 64))
    assert out.shape == (2, 11)


def test_vgg16_pools_small_inputs() -> None:
    model = build("vgg16_bn", 5, "none").eval()
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 5)


def test_pretrained_from_a_local_file_copies_matching_layers(tmp_path: Path) -> None:
    torch.manual_seed(1)
    source = models.resnet18(weights=None, num_classes=1000)
    path = tmp_path / "weights.pt"
    torch.save(source.state_dict(), path)
    model = build("resnet18", 11, str(path))
    assert torch.equal(model.conv1.weight, source.conv1.weight)
    assert model.fc.out_features == 11  # the 1000-class head is skipped, not forced in


def test_imagenet_is_never_downloaded(tmp_path: Path) -> None:
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "empty-hub"))
    try:
        with pytest.raises(ModelNotFound, match="resnet18"):
            build("resnet18", 11, "imagenet")
    finally:
        torch.hub.set_dir(previous)


def test_unknown_arch_and_missing_weights_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput) as info:
        build("alexnet", 3)
    assert info.value.code == "bad_arch"
    with pytest.raises(InvalidInput) as info:
        build("resnet18", 3, str(tmp_path / "nope.pt"))
    assert info.value.code == "no_weights_file"


def test_tensor_is_three_normalised_channels() -> None:
    prep = default_preprocessing(48)
    images = np.zeros((4, 48, 48), dtype=np.float32)
    images[:, 10, 10] = 1.0
    x = to_tensor(images, prep)
    assert x.shape == (4, 3, 48, 48)
    assert torch.allclose(x[0, :, 0, 0], -torch.tensor(prep["mean"]) / torch.tensor(prep["std"]))
    line = (1 - torch.tensor(prep["mean"])) / torch.tensor(prep["std"])
    assert torch.allclose(x[0, :, 10, 10], line)


def test_metrics_and_confusion_png(tmp_path: Path) -> None:
    classes = ["a", "b", "c"]
    y_true = np.array([0, 0, 1, 1, 2, 2])
    y_pred = np.array([0, 0, 1, 2, 2, 2])
    result = evaluate.metrics(y_true, y_pred, classes)
    assert result["accuracy"] == pytest.approx(5 / 6)
    assert result["per_class"]["b"] == {
        "precision": 1.0,
        "recall": 0.5,
        "f1": pytest.approx(2 / 3),
        "support": 2,
    }
    assert result["per_class"]["c"]["precision"] == pytest.approx(2 / 3)
    assert result["macro_f1"] == pytest.approx((1 + 2 / 3 + 0.8) / 3)
    assert result["confusion"] == [[2, 0, 0], [0, 1, 1], [0, 0, 2]]
    png = evaluate.confusion_png(result, tmp_path / "cm.png")
    assert png.read_bytes().startswith(b"\x89PNG")
    assert "| b | 1.000 | 0.500 |" in evaluate.table(result)
