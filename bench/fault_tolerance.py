"""Time lost to one killed Ray Train worker, against the same job uninterrupted.

Runs `ray_jobs/train.py` twice with the same arguments (each in a process group of its own with
its own local Ray): once straight through, once with the training worker SIGKILLed halfway through
epoch 2 (after epoch 1's checkpoint is in storage) under --max-failures 1. Prints both wall
times, the ratio, and the lost time in epochs of the uninterrupted run.

    python bench/fault_tolerance.py --data ../shared/data/animals15 [--epochs 4] [--image-size 160]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from animalclf.runtime.trainproc import TrainProcess, checkpointed_epoch, train_workers


def worker_logger() -> str:
    """The name of the Ray Train worker's logger, as its lines in the run's output show it."""
    from animalclf.train.worker import log

    return log.name


def report_history(out: str) -> list[dict]:
    m = re.search(r"Report: (\S+)", out)
    return json.loads((Path(m.group(1)) / "report.json").read_text())["history"] if m else []


def run_once(workdir: Path, args: list[str], kill_after: Optional[float]) -> dict:
    """One run; with ``kill_after`` seconds, SIGKILL the worker that long after checkpoint 1."""
    storage = workdir / "storage"
    proc = TrainProcess(workdir, [*args, "--storage-path", str(storage), "--name", "bench"])
    killed_at = killed_clock = None
    try:
        if kill_after is not None:
            proc.wait_until(lambda: checkpointed_epoch(storage, "bench") >= 1, 600, "epoch 1's checkpoint")
            time.sleep(kill_after)
            workers = proc.wait_until(lambda: train_workers(proc.proc.pid), 30, "the train worker")
            os.kill(workers[0], signal.SIGKILL)
            killed_at = time.monotonic() - proc.started
            killed_clock = time.time()
        out = proc.finish()
    except BaseException:
        proc.cleanup()
        raise
    wall = time.monotonic() - proc.started
    worker = re.escape(worker_logger())
    resumed = re.findall(rf"(\d\d:\d\d:\d\d) INFO {worker}: Resumed from checkpoint after epoch (\d+)", out)
    restart_s = None
    if resumed and killed_clock is not None:  # kill -> resumed worker running (log stamps: 1 s resolution)
        stamp = time.strptime(resumed[0][0], "%H:%M:%S")
        k = time.localtime(killed_clock)
        restart_s = (stamp.tm_hour * 3600 + stamp.tm_min * 60 + stamp.tm_sec) - (k.tm_hour * 3600 + k.tm_min * 60 + k.tm_sec + killed_clock % 1)
    epochs_run = len(re.findall(rf"INFO {worker}: epoch \d+/", out))
    return {"wall_s": wall, "killed_at_s": killed_at, "resumed_after_epoch": [int(r[1]) for r in resumed],
            "restart_s": restart_s, "epochs_trained": epochs_run,
            "epoch_seconds": [h["epoch_seconds"] for h in report_history(out)]}


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Time lost to one killed Ray Train worker", add_help=add_help)
    p.add_argument("--data", required=True, help="class folders")
    p.add_argument("--epochs", type=int, default=4, help="(default: 4)")
    p.add_argument("--image-size", type=int, default=160, help="(default: 160)")
    p.add_argument("--arch", default="efficientnet_lite0", help="(default: efficientnet_lite0)")
    p.add_argument("--workdir", default=None, help="where runs go (default: a temp dir, removed)")
    return p


def main(args: argparse.Namespace) -> int:
    train_args = ["--data", args.data, "--arch", args.arch, "--image-size", str(args.image_size), "--unfreeze", "1",
                  "--batch-size", "16", "--epochs", str(args.epochs), "--patience", "0", "--max-failures", "1",
                  "--no-track"]
    root = Path(args.workdir or tempfile.mkdtemp(prefix="bench-ft-"))
    try:
        base = run_once(root / "baseline", train_args, None)
        epoch = sum(base["epoch_seconds"]) / len(base["epoch_seconds"])
        hit = run_once(root / "killed", train_args, kill_after=epoch / 2)
    finally:
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    lost = hit["wall_s"] - base["wall_s"]
    print(json.dumps({"baseline": base, "killed": hit}, indent=1))
    print(f"uninterrupted: {base['wall_s']:.1f} s ({args.epochs} epochs, {epoch:.1f} s/epoch)")
    print(f"one worker killed {hit['killed_at_s']:.1f} s in (mid epoch 2), resumed after epoch "
          f"{hit['resumed_after_epoch']}: {hit['wall_s']:.1f} s")
    print(f"ratio {hit['wall_s'] / base['wall_s']:.2f}; lost {lost:.1f} s = {lost / epoch:.2f} epochs")
    rerun = hit["epochs_trained"] - base["epochs_trained"]
    if hit["restart_s"] is not None:
        print(f"of which: restart (kill -> resumed worker) {hit['restart_s']:.0f} s, epochs trained twice {rerun}; "
              f"lost minus restart = {(lost - hit['restart_s']) / epoch:.2f} epochs")
    print(f"1-min load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
