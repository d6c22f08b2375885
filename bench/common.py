"""What the benchmark scripts share: a private Ray head, the shared photos and a model to serve,
timing helpers, the replica's allocator setting and memory, and `ray_jobs/train.py` in a process
of its own.

Run a bench as ``python bench/X.py`` with the project's Python (``.venv/bin/python``), from any
directory: ``animalclf`` and ``serve`` come from the installed package, and Python puts ``bench/``
first on ``sys.path``, so ``from common import ...`` finds this module. The commands in
``bench/RESULTS.md`` are written from the repository root (``--data ../shared/data/animals15``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from pathlib import Path
from typing import Callable, Iterator, Mapping, Optional

from animalclf.runtime.localray import start_head

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "animals15"
SHARED_PHOTOS = DEFAULT_DATA / "Cat"
INGRESS = {"python": "0", "haproxy": "1"}  # --ingress -> RAY_SERVE_ENABLE_HA_PROXY
CLASSES = ["Bear", "Bird", "Cat", "Cow", "Deer", "Dog", "Dolphin", "Elephant", "Giraffe", "Horse",
           "Kangaroo", "Lion", "Panda", "Tiger", "Zebra"]


# ------------------------------------------------------------------ arguments and the machine

def base_parser(doc: str, *, image_size: int, epochs: int, unfreeze: Optional[int] = None,
                epochs_help: str = "") -> argparse.ArgumentParser:
    """The flags every training benchmark shares: data, arch, (unfreeze), image size, batch, epochs.
    ``doc``: the script's docstring; its first paragraph is the description."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DEFAULT_DATA), help=f"class folders (default: {DEFAULT_DATA})")
    p.add_argument("--arch", default="efficientnet_lite0", help="(default: efficientnet_lite0)")
    if unfreeze is not None:
        p.add_argument("--unfreeze", type=int, default=unfreeze, help=f"(default: {unfreeze})")
    p.add_argument("--image-size", type=int, default=image_size, help=f"(default: {image_size})")
    p.add_argument("--batch-size", type=int, default=32, help="(default: 32)")
    p.add_argument("--epochs", type=int, default=epochs, help=f"{epochs_help}(default: {epochs})")
    return p


def load_average() -> str:
    """The load line the scripts print next to their figures (this machine's speed drifts)."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs"


@contextlib.contextmanager
def ray_head(num_cpus: int = 2) -> Iterator[str]:
    """A private Ray head for one run, connected to, its address yielded; stopped after.

    The library's own head (``start_head``: loopback, token auth, its own temp dir, ``RAY_ADDRESS``
    set before it starts), so a bench never joins another Ray on the machine, and stopping it kills
    only its own processes (never ``ray stop``)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    t0 = time.perf_counter()
    head = start_head(num_cpus=num_cpus)
    try:
        print(f"[ray_head] private head at {head.address} (temp {head.temp_dir}) up in {time.perf_counter() - t0:.1f}s", flush=True)
        yield head.address
    finally:
        head.stop()


# ------------------------------------------------------------------ a photo and a model to serve

def photo_bytes(path: Optional[str]) -> bytes:
    """The bytes of the photo at ``path``, or of the first shared Cat photo when ``None``."""
    p = Path(path) if path else sorted(SHARED_PHOTOS.iterdir())[0]
    return p.read_bytes()


def make_model(directory: str, image_size: Optional[int] = 224, arch: str = "efficientnet_lite0", **cfg_fields) -> str:
    """Save an untrained-head checkpoint in ``directory`` and return it: an ImageNet backbone (Lite0
    at 224 px unless told) with a new 15-class head, the same compute as a trained model.
    ``cfg_fields``: other ``TrainConfig`` fields (``autocontrast``, ``rotation_pool``)."""
    from animalclf.config import TrainConfig
    from animalclf.models.build import build_model
    from animalclf.models.checkpoint import save_checkpoint
    from animalclf.train.worker import checkpoint_meta

    cfg = TrainConfig(arch=arch, weights="imagenet", unfreeze=0, image_size=image_size, **cfg_fields)
    model = build_model(cfg.arch, len(CLASSES), 0, "imagenet", rotation_pool=cfg.rotation_pool)
    save_checkpoint(directory, model, checkpoint_meta(cfg, CLASSES, {}, 0))
    return directory


def like_replica(mmap_threshold_mib: Optional[int] = None) -> None:
    """Set this process's allocator as a Serve replica sets its own (``ServeSettings.mmap_threshold_mib``,
    its default unless given; 0: glibc's own), so in-process figures compare with a replica's."""
    from animalclf.runtime.allocator import keep_freed_memory
    from serve.settings import ServeSettings

    if mmap_threshold_mib is None:
        mmap_threshold_mib = ServeSettings().mmap_threshold_mib
    if mmap_threshold_mib:
        keep_freed_memory(mmap_threshold_mib)


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    """Resident memory of process ``pid`` in MiB: ``VmRSS``, or another ``/proc/<pid>/status``
    field such as ``RssAnon`` (the private part); NaN if it has none."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# ------------------------------------------------------------------ timing

def timed(fn: Callable[[], object], n: int, warmup: int) -> list[float]:
    """Milliseconds per call of ``fn()`` for ``n`` calls, after ``warmup`` untimed ones."""
    out = []
    for i in range(warmup + n):
        t0 = time.perf_counter()
        fn()
        if i >= warmup:
            out.append((time.perf_counter() - t0) * 1000)
    return out


def alternating(calls: Mapping[str, Callable[[], object]], n: int, warmup: int, rounds: int) -> dict[str, list[float]]:
    """Milliseconds per call of each of ``calls`` (name -> no-argument function): ``warmup`` untimed
    calls each, then ``n`` timed calls each spread over ``rounds`` rounds in which they take turns,
    so every side sees the same machine (its speed drifts over minutes)."""
    for fn in calls.values():
        timed(fn, 0, warmup)
    out: dict[str, list[float]] = {name: [] for name in calls}
    per = max(1, n // rounds)
    for _ in range(rounds):
        for name, fn in calls.items():
            out[name] += timed(fn, per, 0)
    return out


def pct(xs: list[float], q: float) -> float:
    """The ``q``-th percentile of ``xs`` (nearest rank)."""
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q / 100 * (len(xs) - 1)))]
