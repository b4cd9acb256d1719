from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.models.vgg import cfgs, make_layers

from renderer.errors import InvalidInput, InvalidSession, ModelNotFound
from renderer.mouse import MODEL_CHANNELS, Cleaned, window_bounds
from scoring.backbones import load_matching
from scoring.mouse import store
from scoring.mouse.data import Preprocessing, scoring_images, training_images, view_bounds
from scoring.mouse.live import live_bounds, live_view_bounds
from scoring.mouse.model import ModelConfig, MouseNet, build
from scoring.mouse.train import (
    GroupModel,
    Head,
    OwnerModel,
    TrainConfig,
    calibrate,
    calibration_sessions,
    fit,
)
from scoring.sessionfile import SessionRecord


def test_shapes_follow_width_size_and_channels():
    model = build(ModelConfig(width=0.125, size=48, embed_dim=16, n_out=5)).eval()
    x = torch.zeros(3, len(MODEL_CHANNELS), 48, 48)
    assert model(x).shape == (3, 5)
    assert model.embed(x).shape == (3, 16)
    convs = [m for m in model.features if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 13 and convs[0].out_channels == 8 and convs[-1].out_channels == 64


def test_full_width_layout_is_torchvision_vgg16_bn():
    """At width 1 every feature tensor but the first conv (other channel count) loads by name."""
    features = make_layers(cfgs["D"], batch_norm=True)  # what vgg16_bn().features is
    tv = {f"features.{k}": v for k, v in features.state_dict().items()}
    ours = MouseNet(ModelConfig(width=1.0, size=32))
    skipped = load_matching(ours, tv)
    feature_skips = [k for k in skipped if k.startswith("features.")]
    assert feature_skips == ["features.0.weight"]


def test_pretrained_from_a_local_file_and_imagenet_never_downloads(tmp_path: Path, monkeypatch):
    cfg = ModelConfig(width=0.0625, size=32)
    donor = build(cfg)
    path = tmp_path / "w.pt"
    torch.save(donor.state_dict(), path)
    model = build(cfg, str(path))
    for (k, a), b in zip(model.state_dict().items(), donor.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty-hub"))
    with pytest.raises(ModelNotFound):
        build(ModelConfig(width=1.0, size=32), "imagenet")
    with pytest.raises(InvalidInput):
        build(cfg, str(tmp_path / "missing.pt"))


def test_group_calibration_hits_the_target_false_alarm_rate():
    # owner calibration (held-out pieces, pooled over accounts): tests/test_mouse_calibration.py
    rng = np.random.default_rng(0)
    genuine = rng.normal(size=5000)
    thr = calibrate(genuine, 0.05)
    assert (genuine > thr).mean() == pytest.approx(0.05, abs=0.005)


def test_owner_and_group_models_round_trip_through_the_store(tmp_path: Path):
    prep = Preprocessing(size=32)
    net = build(ModelConfig(width=0.0625, size=32, embed_dim=8, n_out=3)).eval()
    heads = {"acct-1": Head(np.arange(8, dtype=np.float32), 0.25, 1.5)}
    path = store.save(tmp_path, OwnerModel(net, prep, heads, {"m": 1}), "v1")
    back = store.load(path)
    assert isinstance(back, OwnerModel) and back.prep == prep
    assert back.heads["acct-1"].threshold == 1.5
    np.testing.assert_array_equal(back.heads["acct-1"].weight, heads["acct-1"].weight)
    x = torch.rand(2, len(MODEL_CHANNELS), 32, 32)
    with torch.inference_mode():
        assert torch.allclose(back.model.embed(x), net.embed(x))
    gpath = store.save(
        tmp_path, GroupModel(build(ModelConfig(width=0.0625, size=32)), prep, 0.7), "v2"
    )
    group = store.load(gpath)
    assert isinstance(group, GroupModel) and group.threshold == 0.7


def test_thresholds_are_calibrated_on_whole_sessions_never_trained_on():
    def session(user: str, j: int) -> tuple[SessionRecord, Cleaned]:
        ev = np.zeros((3, 4))
        return SessionRecord(f"{user}-{j}", user, (100, 100), ev), Cleaned(ev, (100.0, 100.0))

    cleaned = [session("a", j) for j in range(10)] + [session("b", j) for j in range(2)]
    held = calibration_sessions(cleaned, 0.2)
    # a: its two latest sessions, whole; b has too few sessions to spare one (time split)
    assert held == {8, 9}


def test_training_windows_scale_with_the_scoring_window_unless_given():
    assert (Preprocessing().train_min_events, Preprocessing().train_max_events) == (100, 700)
    long = Preprocessing(window_events=1600)
    assert (long.train_min_events, long.train_max_events) == (400, 2800)
    fixed = Preprocessing(window_events=1600, train_min_events=50, train_max_events=900)
    assert (fixed.train_min_events, fixed.train_max_events) == (50, 900)
    # checkpoints store the resolved lengths, so loading never re-derives them
    assert Preprocessing.from_dict(long.to_dict()) == long
    old = {"size": 64, "window_events": 1600, "train_min_events": 100, "train_max_events": 700}
    assert Preprocessing.from_dict(old).train_max_events == 700
    rng = np.random.default_rng(0)
    clean = Cleaned(
        np.column_stack([np.arange(8000.0), rng.uniform(0, 500, (8000, 2)), np.zeros(8000)]),
        (800.0, 600.0),
    )
    images = training_images(clean, Preprocessing(size=16, window_events=1600), rng, 2.0)
    assert len(images) == 10  # 2 x 8000 / 1600


def test_window_views_add_shifted_windows_of_the_same_length():
    assert view_bounds(5000, 1600) == window_bounds(5000, 1600)
    two = view_bounds(5000, 1600, 2)
    assert two == [(0, 1667), (834, 2500), (1667, 3333), (2500, 4166), (3333, 5000)]
    four = view_bounds(5000, 1600, 4)
    assert len(four) == 4 * 2 + 1 and set(two) <= set(four)
    assert all(1666 <= b - a <= 1667 for a, b in four)
    assert four == sorted(four)
    assert view_bounds(1000, 1600, 4) == [(0, 1000)]  # one window: nothing to shift
    # scoring images follow the views, at most max_windows of them
    rng = np.random.default_rng(0)
    clean = Cleaned(
        np.column_stack([np.arange(5000.0), rng.uniform(0, 500, (5000, 2)), np.zeros(5000)]),
        (800.0, 600.0),
    )
    prep = Preprocessing(size=16, window_events=1600, window_views=2)
    assert len(scoring_images(clean, prep)) == 5
    assert len(scoring_images(clean, Preprocessing(size=16, window_events=400))) == 12
    capped = Preprocessing(size=16, window_events=400, window_views=2, max_windows=7)
    assert len(scoring_images(clean, capped)) == 7
    # stored in checkpoints; checkpoints from before it score consecutive windows
    assert Preprocessing.from_dict(prep.to_dict()) == prep
    assert Preprocessing.from_dict({"size": 64, "window_events": 1600}).window_views == 1
    with pytest.raises(InvalidSession):
        Preprocessing(window_views=0)


def test_live_views_are_complete_windows_that_never_change():
    assert live_view_bounds(5000, 1600) == live_bounds(5000, 1600)
    # blocks 0-1600-3200-5000 (the tail joins the last one) and the complete shifted windows
    assert live_view_bounds(5000, 1600, 2) == [
        (0, 1600),
        (800, 2400),
        (1600, 3200),
        (2400, 4000),
        (3200, 5000),
    ]
    for n in range(2, 7000, 37):
        now, later = live_view_bounds(n, 600, 4), live_view_bounds(n + 450, 600, 4)
        growing = live_bounds(n, 600)[-1]
        assert {b for b in now if b != growing} <= set(later)
        # as many windows as the batch path, give or take the placement of the tail
        assert abs(len(now) - len(view_bounds(n, 600, 4))) <= 4


def test_fresh_windows_give_every_epoch_new_training_images():
    model = build(ModelConfig(width=0.0625, size=32, embed_dim=8, n_out=1))
    rng = np.random.default_rng(0)
    draws = []

    def draw() -> tuple[np.ndarray, np.ndarray]:
        x = rng.random((8, len(MODEL_CHANNELS), 32, 32), dtype=np.float32)
        draws.append(x)
        return x, (rng.random((8, 1)) > 0.5).astype(np.float32)

    cfg = TrainConfig(epochs=3, batch_size=4, progress=False)
    losses = fit(model, *draw(), torch.nn.BCEWithLogitsLoss(), cfg, redraw=draw)
    assert len(losses) == 3 and len(draws) == 3  # the first draw, then one per later epoch
    losses = fit(model, *draw(), torch.nn.BCEWithLogitsLoss(), cfg)
    assert len(draws) == 4  # without redraw every epoch sees the first draw
