"""``ray_jobs/train.py`` run as a child process of its own, with its own local Ray, and what is
needed to watch it from outside: its output, its Ray Train worker processes (to kill one, as a
lost node would), and the epoch Ray Train last registered a checkpoint for. The fault-tolerance
tests and benchmark drive training this way, as a user's terminal does."""

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

__all__ = ["TRAIN_SCRIPT", "TrainProcess", "train_workers", "checkpointed_epoch", "descendants", "running"]

TRAIN_SCRIPT = Path(__file__).resolve().parents[2] / "ray_jobs" / "train.py"


class TrainProcess:
    """One ``ray_jobs/train.py`` run in a process group of its own with its own local Ray
    (``RAY_ADDRESS=local``, its own ``RAY_TMPDIR``), ``ANIMALCLF_HOME=home``, output to a file.
    The caller's tracking credentials and ``RAY_*`` settings are left out: the run stays local."""

    def __init__(self, home: Path, args: list[str]):
        from animalclf.tracking import TRACKING_VARS

        self.home = home
        home.mkdir(parents=True, exist_ok=True)
        self.ray_tmp = tempfile.mkdtemp(prefix="ft-", dir="/tmp")  # short: Ray's socket paths must stay < 108 chars
        env = {k: v for k, v in os.environ.items() if k not in TRACKING_VARS and not k.startswith("RAY_")}
        env.update(ANIMALCLF_HOME=str(home), RAY_ADDRESS="local", RAY_TMPDIR=self.ray_tmp, RAY_USAGE_STATS_ENABLED="0")
        self.log = home / f"train-{time.monotonic_ns()}.log"
        self.started = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, str(TRAIN_SCRIPT), *args], cwd=home, env=env,
                                     stdout=self.log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)

    def output(self) -> str:
        """Everything the run has printed so far (stdout and stderr)."""
        return self.log.read_text(errors="replace")

    def wait_until(self, predicate: Callable[[], object], timeout: float, what: str) -> object:
        """Poll ``predicate`` until it returns something true, and return that; raise if the run
        exits first or ``timeout`` seconds pass (``what`` names the wait in the error)."""
        deadline = time.monotonic() + timeout
        while not (value := predicate()):
            if self.proc.poll() is not None:
                raise RuntimeError(f"train exited {self.proc.returncode} before {what}:\n{self.output()[-4000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what}:\n{self.output()[-4000:]}")
            time.sleep(0.2)
        return value

    def finish(self, timeout: float = 600) -> str:
        """Wait for a clean exit and return the output (raise with its tail otherwise)."""
        try:
            self.proc.wait(timeout)
        finally:
            self.cleanup()
        if self.proc.returncode != 0:
            raise RuntimeError(f"train exited {self.proc.returncode}:\n{self.output()[-5000:]}")
        return self.output()

    def cleanup(self) -> None:
        """Kill what is left of the run's process group and remove its Ray temp dir. (A private head
        is in a process group of its own; it goes with its driver: ``animalclf.runtime.headguard``.)"""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)
        shutil.rmtree(self.ray_tmp, ignore_errors=True)


def train_workers(pid: int) -> list[int]:
    """The pids of the Ray Train worker processes among the descendants of ``pid`` (a run's driver)."""
    import psutil

    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    out = []
    for child in children:
        try:
            if " ".join(child.cmdline()).startswith("ray::RayTrainWorker"):
                out.append(child.pid)
        except psutil.Error:  # gone, or a zombie, since the listing
            continue
    return out


def checkpointed_epoch(storage: Path, name: str) -> int:
    """The epoch of run ``name``'s latest checkpoint that Ray Train has registered (0 if none).

    Read from Train's checkpoint-manager snapshot, not from the checkpoint folders: a folder is
    uploaded by the worker before the controller registers it, and a worker killed in between
    restarts from the previous checkpoint."""
    try:
        snap = json.loads((storage / name / "checkpoint_manager_snapshot.json").read_text())
    except (OSError, ValueError):
        return 0
    latest = snap.get("latest_checkpoint_result") or {}
    return int((latest.get("metrics") or {}).get("epoch", 0))


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
