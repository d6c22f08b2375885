"""Progress lines of long phases (animalclf.runtime.progress): rate and ETA in real time, silence for
short phases, and the lines the probe's feature pass, a training epoch and an evaluation give."""

from __future__ import annotations

import logging
import re
import time

import pytest
import torch
from torch import nn

from animalclf.runtime.progress import ProgressLog
from animalclf.train.engine import EpochSetup, evaluate, train_one_epoch
from animalclf.train.probe import init_head

LINE = re.compile(r"^(?P<what>.+): (?P<done>\d+)/(?P<total>\d+) images \((?P<pct>\d+)%\), (?P<rate>[\d.]+) images/s, "
                  r"ETA (?P<m>\d+)m(?P<s>\d\d)s$")
FINAL = re.compile(r"^(?P<what>.+): (?P<done>\d+) images in \d+m\d\ds, (?P<rate>[\d.]+) images/s$")


class Lines(logging.Handler):
    """The messages a logger emitted, whatever the ``animalclf`` logger's propagation."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def lines():
    logger = logging.getLogger("animalclf.runtime.progress")
    handler, level = Lines(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler.messages
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_a_long_phase_says_how_far_how_fast_and_how_long_is_left(lines):
    p = ProgressLog("probe features", 40, every_s=0.2)
    for _ in range(20):  # 20 steps of 2 images, ~0.05 s each: ~20 images/s, 1 s in all
        time.sleep(0.05)
        p.update(2)
    p.done()
    p.done()  # once only
    progress, final = lines[:-1], lines[-1]
    assert 3 <= len(progress) <= 5, lines  # ~every 0.2 s of ~1 s, not every step
    seen = [LINE.match(m) for m in progress]
    assert all(seen), progress
    for m in seen:
        done, rate = int(m["done"]), float(m["rate"])
        assert m["what"] == "probe features" and m["total"] == "40" and int(m["pct"]) == round(100 * done / 40)
        assert 8 < rate <= 41  # ~20 images/s (sleep only ever runs long)
        eta = int(m["m"]) * 60 + int(m["s"])
        assert abs(eta - (40 - done) / rate) <= 1  # what is left at the rate so far, rounded to the second
    assert [int(m["done"]) for m in seen] == sorted(int(m["done"]) for m in seen)
    f = FINAL.match(final)
    assert f and f["what"] == "probe features" and f["done"] == "40" and 8 < float(f["rate"]) <= 41, final


def test_a_short_phase_and_a_disabled_one_say_nothing(lines):
    with ProgressLog("evaluation", 100, every_s=5) as quick:
        for _ in range(10):
            quick.update(10)
    quiet = ProgressLog("epoch 1/1 training", 10, every_s=0, enabled=False)  # another rank than 0
    for _ in range(10):
        quiet.update(1)
    quiet.done()
    assert lines == [] and quick.count == 100 and quiet.count == 10


def test_an_unknown_total_gives_count_and_rate_without_eta(lines):
    p = ProgressLog("batch predictions", every_s=0)
    p.update(5)
    assert re.fullmatch(r"batch predictions: 5 images, [\d.]+ images/s", lines[0]) and "ETA" not in lines[0]


class Slow(list):
    """Batches that take ``delay`` seconds each to load, like images decoded from disk."""

    def __init__(self, batches, delay: float = 0.03):
        super().__init__(batches)
        self.delay = delay

    def __iter__(self):
        for b in super().__iter__():
            time.sleep(self.delay)
            yield b


def test_the_probe_pass_an_epoch_and_an_evaluation_report_progress(lines):
    torch.manual_seed(0)
    x, y = torch.randn(48, 3, 8, 8), torch.arange(48) % 3
    batches = Slow([(x[i:i + 8], y[i:i + 8]) for i in range(0, 48, 8)])
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    model.classifier = nn.Sequential(nn.Dropout(0.0), nn.Linear(4, 3))  # last in the Sequential; what head_of() finds
    setup = EpochSetup(torch.device("cpu"), 3, channels_last=False)
    init_head(model, batches, setup, progress=ProgressLog("Linear probe features", 48, every_s=0.05))
    train_one_epoch(model, batches, torch.optim.SGD(model.parameters(), lr=0.01), setup,
                    progress=ProgressLog("epoch 1/1 training", 48, every_s=0.05))
    evaluate(model, batches, setup, progress=ProgressLog("epoch 1/1 validation", 48, every_s=0.05))
    for what in ("Linear probe features", "epoch 1/1 training", "epoch 1/1 validation"):
        mine = [m for m in lines if m.startswith(what + ":")]
        assert any(LINE.match(m) for m in mine), lines
        assert FINAL.match(mine[-1]) and FINAL.match(mine[-1])["done"] == "48", mine


def test_only_rank_0_of_a_ray_train_run_reports_its_share():
    from animalclf.config import TrainConfig
    from animalclf.data.split import Split
    from animalclf.train.worker import _progress, _Worker

    split = Split(classes=["a"], train=[(f"{i}.jpg", 0) for i in range(101)], val=[])
    cfg = TrainConfig(batch_size=8)
    first, second = (_Worker(cfg, split, rank, 2, torch.device("cpu")) for rank in (0, 1))
    p = _progress(first, "epoch 1/3 training", len(split.train))
    assert p.enabled and p.total == 51 and p.what == "epoch 1/3 training (worker 0 of 2)"
    assert not _progress(second, "epoch 1/3 training", len(split.train)).enabled
    assert _progress(first, "epoch 1/3 training", len(split.train), max_steps=2).total == 8  # 2 batches of 4 a worker
