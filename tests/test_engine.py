import pytest
import torch
from torch import nn

from animalclf.train.engine import Distill, EpochSetup, distill_loss, evaluate, lr_factor, make_ema, set_lr, train_one_epoch


class FixedLogits(nn.Module):
    """Returns the logits stored for each input index (the input's first value)."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return self.logits[x[:, 0, 0, 0].long()] + self.w


def test_evaluate_matches_hand_computed_metrics():
    # 3 classes, 6 samples. targets 0,0,1,1,2,2; predictions 0,1,1,1,2,0
    targets = torch.tensor([0, 0, 1, 1, 2, 2])
    preds = [0, 1, 1, 1, 2, 0]
    logits = torch.full((6, 3), -5.0)
    logits[torch.arange(6), torch.tensor(preds)] = 5.0
    x = torch.arange(6, dtype=torch.float32).view(6, 1, 1, 1).expand(6, 3, 2, 2).contiguous()
    loader = [(x[:4], targets[:4]), None, (x[4:], targets[4:])]  # None: a batch of only unreadable files
    m, (probs, tgt) = evaluate(FixedLogits(logits), loader, EpochSetup(torch.device("cpu"), 3, channels_last=False),
                               collect=True)
    assert m["val_accuracy"] == pytest.approx(4 / 6)
    # per class: P0=1/2 R0=1/2 F=1/2; P1=2/3 R1=1 F=0.8; P2=1 R2=1/2 F=2/3
    assert m["val_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3, abs=1e-6)
    expected_loss = nn.CrossEntropyLoss()(logits, targets).item()
    assert m["val_loss"] == pytest.approx(expected_loss, rel=1e-5)
    assert m["val_images"] == 6 and probs.shape == (6, 3) and torch.equal(tgt, targets)


def test_train_one_epoch_learns_and_respects_frozen_and_max_steps():
    torch.manual_seed(0)
    x = torch.randn(64, 3, 4, 4)
    y = (x[:, 0].mean((1, 2)) > 0).long()
    body = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    model = nn.Sequential(body, nn.Flatten(), nn.Linear(64, 2))
    body.requires_grad_(False)
    before = body[1].running_mean.clone()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.05)
    loader = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]
    setup = EpochSetup(torch.device("cpu"), 2, frozen=[body])
    first = train_one_epoch(model, loader, opt, setup)
    for _ in range(5):
        last = train_one_epoch(model, loader, opt, setup)
    assert last["train_loss"] < first["train_loss"]
    assert torch.equal(body[1].running_mean, before)  # frozen BN statistics untouched
    capped = train_one_epoch(model, loader, opt, EpochSetup(torch.device("cpu"), 2, max_steps=2))
    assert capped["train_images"] == 32 and capped["train_images_per_sec"] > 0


def test_ema_follows_every_step_with_its_decay_and_keeps_the_trained_weights_apart():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    ema = make_ema(model, decay=0.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 3), torch.tensor([0, 1] * 4)
    seen = []
    for _ in range(3):  # three one-batch epochs: three steps
        train_one_epoch(model, [(x, y)], opt, EpochSetup(torch.device("cpu"), 2, channels_last=False, ema=ema))
        seen.append({k: v.clone() for k, v in model.state_dict().items()})
    expected = {k: 0.25 * seen[0][k] + 0.25 * seen[1][k] + 0.5 * seen[2][k] for k in ("0.weight", "1.running_mean")}
    for k, v in expected.items():  # the first step is copied, then ema = 0.5 ema + 0.5 weights
        assert torch.allclose(ema.module.state_dict()[k], v, atol=1e-6), k
    assert int(ema.n_averaged) == 3 and not torch.equal(ema.module[0].weight, model[0].weight)


def test_freeze_bn_keeps_every_batchnorm_statistic_while_its_layer_trains():
    from animalclf.models.build import build_model, frozen_modules

    torch.manual_seed(0)
    model = build_model("efficientnet_lite0", 3, unfreeze=18, weights="none")
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert frozen_modules(model) == [] and set(map(id, bns)) <= set(map(id, frozen_modules(model, freeze_bn=True)))
    before = [bn.running_mean.clone() for bn in bns]
    weight = model.bn2.weight.detach().clone()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    loader = [(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0]))]
    train_one_epoch(model, loader, opt,
                    EpochSetup(torch.device("cpu"), 3, frozen=frozen_modules(model, freeze_bn=True), channels_last=False))
    assert all(torch.equal(bn.running_mean, b) for bn, b in zip(bns, before))  # statistics kept
    assert not torch.equal(model.bn2.weight, weight)  # scale and shift still train


def test_lr_factor_constant_and_cosine_with_warmup():
    assert [lr_factor(e, 4) for e in range(4)] == [1.0] * 4
    f = [lr_factor(e, 6, "cosine", warmup=1) for e in range(6)]
    assert f[0] == pytest.approx(0.5) and f[1] == pytest.approx(1.0)  # warm-up, then the peak
    assert all(a > b for a, b in zip(f[1:], f[2:])) and 0 < f[-1] < 0.1  # decays towards 0, never reaches it
    assert lr_factor(3, 5, "cosine", warmup=1) == pytest.approx(0.5)  # half-way through the decay (epochs 1-4)
    assert lr_factor(0, 3, "cosine") == 1.0
    with pytest.raises(ValueError):
        lr_factor(0, 3, "step")
    opt = torch.optim.Adam([nn.Parameter(torch.zeros(1))], lr=1.0)
    set_lr(opt, 0.25)
    assert opt.param_groups[0]["lr"] == 0.25


def test_distill_loss_mixes_labels_and_the_teacher_and_pulls_toward_the_teacher():
    torch.manual_seed(0)
    ce = nn.CrossEntropyLoss()
    logits = torch.randn(8, 3, requires_grad=True)
    y = torch.zeros(8, dtype=torch.long)
    teacher = torch.log_softmax(torch.tensor([[0.0, 4.0, 0.0]]).repeat(8, 1), 1)  # sure of class 1, the labels say 0
    assert torch.allclose(distill_loss(logits, y, teacher, ce, Distill(0.0, 2.0)), ce(logits, y))
    # the teacher's own answers cost nothing in the teacher-only loss
    assert distill_loss(teacher.clone(), y, teacher, ce, Distill(1.0, 3.0)).item() == pytest.approx(0.0, abs=1e-6)
    # a few steps on the teacher-only loss move the student's top-1 to the teacher's class
    opt = torch.optim.SGD([logits], lr=1.0)
    for _ in range(50):
        opt.zero_grad()
        distill_loss(logits, y, teacher, ce, Distill(1.0, 2.0)).backward()
        opt.step()
    assert (logits.argmax(1) == 1).all()


def test_an_epoch_with_teacher_answers_reports_agreement():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    x = torch.randn(16, 3, 2, 2)
    y = torch.randint(0, 3, (16,))
    teacher = torch.log_softmax(model(x).detach(), 1)  # the model agrees with it before training
    loader = [(x[:8], y[:8], teacher[:8]), (x[8:], y[8:], teacher[8:])]
    setup = EpochSetup(torch.device("cpu"), 3, channels_last=False, distill=Distill(1.0, 1.0))
    out, _ = evaluate(model, loader, setup)
    assert out["val_teacher_agreement"] == 1.0
    train = train_one_epoch(model, loader, torch.optim.SGD(model.parameters(), lr=0.0), setup)
    assert train["train_teacher_agreement"] == 1.0 and train["train_loss"] == pytest.approx(0.0, abs=1e-5)
    plain, _ = evaluate(model, [(x, y)], setup)
    assert "val_teacher_agreement" not in plain
