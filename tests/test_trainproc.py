"""animalclf.runtime.trainproc: what watches a train.py run from outside, on real processes and
files (the whole run is exercised by test_fault_tolerance)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from animalclf.runtime.trainproc import TRAIN_SCRIPT, checkpointed_epoch, descendants, running, train_workers


def test_the_train_script_is_the_repository_entry_point():
    assert TRAIN_SCRIPT.is_file() and TRAIN_SCRIPT.parent.name == "ray_jobs"


def test_descendants_and_running_on_real_processes():
    parent = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; "
                               "subprocess.Popen(['sleep', '30']); time.sleep(30)"])
    try:
        deadline = time.monotonic() + 10
        while not any("sleep 30" in cmd for cmd in descendants(parent.pid).values()):
            assert time.monotonic() < deadline, descendants(parent.pid)
            time.sleep(0.05)
        assert running(parent.pid)
        assert train_workers(parent.pid) == []  # a sleep is not a Ray Train worker
    finally:
        for pid in descendants(parent.pid):
            subprocess.run(["kill", "-9", str(pid)], check=False)
        parent.kill()
        parent.wait()
    assert not running(parent.pid)


def test_checkpointed_epoch_reads_what_ray_train_registered(tmp_path):
    assert checkpointed_epoch(tmp_path, "run") == 0  # nothing yet
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoint_manager_snapshot.json").write_text("{broken")
    assert checkpointed_epoch(tmp_path, "run") == 0
    (tmp_path / "run" / "checkpoint_manager_snapshot.json").write_text(
        json.dumps({"latest_checkpoint_result": {"metrics": {"epoch": 3, "val_accuracy": 0.5}}}))
    assert checkpointed_epoch(tmp_path, "run") == 3
