"""One `ray_jobs/train.py` run in its own process session with its own local Ray, and the
process helpers to find and kill its Ray Train workers: used by tests/test_fault_tolerance.py and
bench/fault_tolerance.py."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from animalclf.tracking import TRACKING_VARS

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "ray_jobs" / "train.py"
# Tracking credentials of the caller must not reach these runs (they use a local sqlite store).
SCRUB = TRACKING_VARS


def descendants(pid: int) -> dict[int, str]:
    """``{pid: command line}`` of every live descendant of ``pid`` (read from /proc)."""
    children: dict[int, list[int]] = {}
    cmdlines: dict[int, str] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdlines[int(d.name)] = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(d.name))
    out, todo = {}, [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            if c in cmdlines:
                out[c] = cmdlines[c]
                todo.append(c)
    return out


def running(pid: int) -> bool:
    """Whether ``pid`` is a live process (not gone, not a zombie waiting to be reaped)."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def train_workers(pid: int) -> list[int]:
    """The Ray Train worker processes of the run whose driver is ``pid``."""
    return [p for p, cmd in descendants(pid).items() if cmd.startswith("ray::RayTrainWorker")]


class TrainProcess:
    """One `ray_jobs/train.py` with its own local Ray (RAY_ADDRESS=local, own RAY_TMPDIR), output to a file."""

    def __init__(self, home: Path, args: list[str]):
        self.home = home
        home.mkdir(parents=True, exist_ok=True)
        self.ray_tmp = tempfile.mkdtemp(prefix="ft-", dir="/tmp")  # short: Ray's socket paths must stay < 108 chars
        env = {k: v for k, v in os.environ.items() if k not in SCRUB and not k.startswith("RAY_")}
        env.update(ANIMALCLF_HOME=str(home), RAY_ADDRESS="local", RAY_TMPDIR=self.ray_tmp, RAY_USAGE_STATS_ENABLED="0")
        self.log = home / f"train-{time.monotonic_ns()}.log"
        self.started = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, str(TRAIN), *args], cwd=home, env=env, stdout=self.log.open("w"),
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_until(self, predicate: Callable[[], object], timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while not (value := predicate()):
            if self.proc.poll() is not None:
                raise RuntimeError(f"train exited {self.proc.returncode} before {what}:\n{self.output()[-4000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what}:\n{self.output()[-4000:]}")
            time.sleep(0.2)
        return value

    def finish(self, timeout: float = 600) -> str:
        """Wait for a clean exit; return the output (raise with its tail otherwise)."""
        try:
            self.proc.wait(timeout)
        finally:
            self.cleanup()
        if self.proc.returncode != 0:
            raise RuntimeError(f"train exited {self.proc.returncode}:\n{self.output()[-5000:]}")
        return self.output()

    def cleanup(self) -> None:
        """Kill what is left of the run's process group and its Ray temp dir. (A private head is in a
        process group of its own; it goes with its driver: animalclf.runtime.headguard.)"""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)
        shutil.rmtree(self.ray_tmp, ignore_errors=True)


def checkpointed_epoch(storage: Path, name: str) -> int:
    """The epoch of run ``name``'s latest checkpoint that Ray Train has registered (0 if none).

    Read from Train's checkpoint-manager snapshot, not from the checkpoint folders: a folder is
    uploaded by the worker before the controller registers it, and a worker killed in between
    restarts from the previous checkpoint.
    """
    try:
        snap = json.loads((storage / name / "checkpoint_manager_snapshot.json").read_text())
    except (OSError, ValueError):
        return 0
    latest = snap.get("latest_checkpoint_result") or {}
    return int((latest.get("metrics") or {}).get("epoch", 0))
