"""Linear-probe head initialisation: the fit itself, the head set in place (and nothing else), and
``--head-init probe`` through real Ray Train workers on the shared photos."""

from __future__ import annotations

import pytest
import torch

from animalclf.config import TrainConfig
from animalclf.errors import UserError
from animalclf.models.build import build_model
from animalclf.train.engine import EpochSetup
from animalclf.train.probe import _gather, extract_features, fit_linear, head_of, init_head


def test_fit_linear_reaches_the_regularised_optimum():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 16, generator=g) * 3
    y = torch.arange(3).repeat_interleave(20)
    x = centres[y] + torch.randn(60, 16, generator=g)
    weight, bias = fit_linear(x, y, 3, l2=1e-3)
    assert weight.shape == (3, 16) and bias.shape == (3,) and weight.dtype == torch.float32
    assert ((x @ weight.T + bias).argmax(1) == y).all()
    # the gradient of the objective vanishes there: a converged fit, not a few steps
    w, b = weight.double().requires_grad_(), bias.double().requires_grad_()
    loss = torch.nn.functional.cross_entropy(x.double() @ w.T + b, y) + 0.5e-3 * (w * w).sum()
    loss.backward()
    assert w.grad.abs().max() < 1e-4 and b.grad.abs().max() < 1e-4


def _colour_batches(n_classes: int = 3, per_class: int = 6, size: int = 32):
    g = torch.Generator().manual_seed(1)
    y = torch.arange(n_classes).repeat_interleave(per_class)
    x = torch.rand(len(y), 3, size, size, generator=g) * 0.5
    for c in range(n_classes):
        x[y == c, c] += 1.0  # one bright channel per class
    return [(x[i:i + 5], y[i:i + 5]) for i in range(0, len(y), 5)], x, y


def test_init_head_fits_the_head_on_frozen_features_and_touches_nothing_else():
    torch.manual_seed(0)
    model = build_model("efficientnet_lite0", 3, unfreeze=2, weights="none").train()
    body = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("classifier")}
    batches, x, y = _colour_batches()
    stats = init_head(model, batches, EpochSetup(torch.device("cpu"), 3, channels_last=False))
    assert stats["probe_images"] == len(y) and stats["train_images"] == len(y) and stats["train_accuracy"] == 1.0
    assert stats["train_loss"] > 0 and stats["probe_seconds"] > 0
    assert all(torch.equal(v, body[k]) for k, v in model.state_dict().items() if k in body)  # BN stats too
    assert model.training and isinstance(model.classifier, torch.nn.Sequential)  # mode and head restored
    with torch.no_grad():
        assert (model.eval()(x).argmax(1) == y).all()  # the fitted head is what the model now uses
    feats, labels = extract_features(model, batches, torch.device("cpu"), channels_last=False)
    assert feats.shape == (len(y), head_of(model).in_features) and torch.equal(labels, y)


def test_probe_features_are_pooled_over_quarter_turns_with_the_rotation_pool():
    torch.manual_seed(0)
    model = build_model("efficientnet_lite0", 3, unfreeze=0, weights="none", rotation_pool=True)
    batches, x, y = _colour_batches()
    feats, _ = extract_features(model, batches, torch.device("cpu"), channels_last=False)
    turned, _ = extract_features(model, [(torch.rot90(b, 1, (2, 3)), t) for b, t in batches], torch.device("cpu"),
                                 channels_last=False)
    assert feats.shape == (len(y), head_of(model).in_features)  # one row per image, not per turn
    torch.testing.assert_close(turned, feats, atol=1e-5, rtol=1e-5)


def test_an_empty_training_set_is_an_error_not_a_random_head():
    model = build_model("efficientnet_lite0", 3, unfreeze=0, weights="none")
    with pytest.raises(RuntimeError, match="no training image"):
        init_head(model, [None], EpochSetup(torch.device("cpu"), 3, channels_last=False))


def _gather_on_rank(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        n = rank + 1  # unequal shares: 1 and 2 images
        x, y = torch.full((n, 4), float(rank)), torch.full((n,), rank, dtype=torch.long)
        torch.save(_gather(x, y), f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_every_rank_fits_on_every_ranks_features(tmp_path):
    """Two real gloo processes with unequal shares: both get all 3 rows, in rank order."""
    import torch.multiprocessing as mp

    from animalclf.runtime.localray import free_port

    mp.spawn(_gather_on_rank, args=(2, free_port(), str(tmp_path / "g")), nprocs=2, join=True)
    for rank in range(2):
        x, y = torch.load(tmp_path / f"g.{rank}", weights_only=True)
        assert y.tolist() == [0, 1, 1] and x[:, 0].tolist() == [0.0, 1.0, 1.0]
    x, y = torch.ones(2, 3), torch.zeros(2, dtype=torch.long)
    assert _gather(x, y) == (x, y)  # no process group: unchanged


def test_an_unknown_head_init_is_a_one_line_error():
    with pytest.raises(UserError, match="--head-init 'lp'.*random, probe"):
        TrainConfig(data="d", head_init="lp").validate()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_probe_through_two_ray_train_workers_gives_a_fitted_head(ray_session, project, shared_data):
    """2 gloo workers, each extracting its half of the training images; lr 1e-8 so the one epoch
    changes nothing: any accuracy above chance comes from the probe fitted on the gathered set."""
    from animalclf.train.run import run_training

    cfg = TrainConfig(data=str(shared_data), arch="efficientnet_lite0", unfreeze=0, image_size=96, batch_size=32,
                      epochs=1, num_workers=2, lr=1e-8, head_init="probe", name="probe", track=False, patience=0)
    out = run_training(cfg)
    chance = 1 / len(out.report["classes"])
    assert out.report["accuracy"] >= max(0.6, 8 * chance), out.report["accuracy"]
