"""Fault tolerance of the real train job: a driver SIGKILLed mid-run is resumed by re-running with
the same --name and --storage-path, and its private Ray goes with it. (A lost worker, replaced and
resumed from the latest checkpoint, is tests/test_multinode.py::test_node_lost_mid_epoch, on a node
that goes away; bench/fault_tolerance.py measures the SIGKILLed worker with --max-failures 1.)

Each run is `ray_jobs/train.py` in its own process session with its own local Ray
(RAY_ADDRESS=local, own RAY_TMPDIR); the worker to kill is found among that run's descendants
(helpers in animalclf.runtime.trainproc, shared with bench/fault_tolerance.py).
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest

from animalclf.runtime.trainproc import TrainProcess, checkpointed_epoch, descendants, running


pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

EPOCHS = 6
ARGS = ["--arch", "efficientnet_lite0", "--image-size", "64", "--unfreeze", "1", "--batch-size", "8",
        "--epochs", str(EPOCHS), "--max-steps-per-epoch", "3", "--patience", "0"]


def train_run(home: Path, data: Path, *extra: str) -> TrainProcess:
    return TrainProcess(home, ["--data", str(data), *ARGS, *extra])


def epoch_lines(out: str) -> list[int]:
    return [int(m) for m in re.findall(rf"epoch (\d+)/{EPOCHS}  train loss", out)]


def test_driver_killed_rerun_resumes(tiny_folder, tmp_path):
    storage = tmp_path / "storage"
    name = ["--name", "ft-driver", "--storage-path", str(storage), "--experiment", "ft", "--model-name", "ft-driver"]
    first = train_run(tmp_path, tiny_folder, *name)
    try:
        first.wait_until(lambda: checkpointed_epoch(storage, "ft-driver") >= 1, 180, "epoch 1's checkpoint")
        head = list(descendants(first.proc.pid))  # its private head: raylet, GCS, Train controller and worker, guardian
        os.kill(first.proc.pid, signal.SIGKILL)
        first.proc.wait(10)
        # The head goes with its driver (animalclf.runtime.headguard). Without that, its Train controller
        # went on alone and checkpointed the last epoch, leaving the rerun nothing to resume (CI, stop 17).
        deadline = time.monotonic() + 30
        while (left := [p for p in head if running(p)]) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not left, f"the killed driver's Ray processes are still running: {left}"
    finally:
        first.cleanup()
    left_at = checkpointed_epoch(storage, "ft-driver")
    assert 1 <= left_at < EPOCHS, f"the first run checkpointed epoch {left_at} of {EPOCHS} before it was killed"

    out = train_run(tmp_path, tiny_folder, *name).finish()
    resumed = [int(n) for n in re.findall(r"Resumed from checkpoint after epoch (\d+)", out)]
    assert resumed == [left_at], out[-4000:]
    assert epoch_lines(out) == list(range(left_at + 1, EPOCHS + 1)), out[-4000:]
    assert "Best checkpoint:" in out
