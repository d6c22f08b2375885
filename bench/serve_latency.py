"""Latency of one JPEG: over HTTP through Ray Serve vs the same Predictor called in-process.

Both sides do the same work (decode the bytes, preprocess, Lite0 forward at 224 px, top-5) with
the same number of torch threads; the ratio is what serving costs on top.

    python bench/serve_latency.py [--model CKPT_OR_URI] [--n 200] [--smoke-test]

Target: HTTP p50 <= 1.3x in-process p50.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import os
import statistics
import tempfile
import time

import requests
import torch

from animalclf.localray import free_port

SHARED_PHOTO = Path(__file__).resolve().parents[2] / "shared" / "data" / "animals15" / "Cat"
CLASSES = ["Bear", "Bird", "Cat", "Cow", "Deer", "Dog", "Dolphin", "Elephant", "Giraffe", "Horse",
           "Kangaroo", "Lion", "Panda", "Tiger", "Zebra"]


def make_model(directory: str, image_size: int = 224) -> str:
    """An untrained-head Lite0 checkpoint (ImageNet backbone): same compute as a trained one."""
    from animalclf.checkpoint import save_checkpoint
    from animalclf.config import TrainConfig
    from animalclf.model import build_model
    from animalclf.worker import checkpoint_meta

    cfg = TrainConfig(arch="efficientnet_lite0", weights="imagenet", unfreeze=0, image_size=image_size)
    save_checkpoint(directory, build_model(cfg.arch, len(CLASSES), 0, "imagenet"), checkpoint_meta(cfg, CLASSES, {}, 0))
    return directory


def photo_bytes(path: str | None) -> bytes:
    p = Path(path) if path else sorted(SHARED_PHOTO.iterdir())[0]
    return p.read_bytes()


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q / 100 * (len(xs) - 1)))]


def in_process(model: str, data: bytes, n: int, warmup: int) -> list[float]:
    from animalclf.predict import Predictor

    p = Predictor.load(model)
    out = []
    for i in range(warmup + n):
        t0 = time.perf_counter()
        p.predict([p.decode(data)], 5)
        if i >= warmup:
            out.append((time.perf_counter() - t0) * 1000)
    return out


def over_http(url: str, data: bytes, n: int, warmup: int, inside: list[float] | None = None) -> list[float]:
    """Client-side ms per request; ``inside`` collects the replica's own ``latency_ms``."""
    s = requests.Session()
    out = []
    for i in range(warmup + n):
        t0 = time.perf_counter()
        r = s.post(f"{url}/predict", data=data, timeout=30)
        dt = (time.perf_counter() - t0) * 1000
        r.raise_for_status()
        if i >= warmup:
            out.append(dt)
            if inside is not None:
                inside.append(r.json()["latency_ms"])
    return out


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="HTTP vs in-process latency of one JPEG", add_help=add_help)
    p.add_argument("--model", default=None, help="checkpoint or MLflow URI (default: a fresh Lite0 224 px checkpoint)")
    p.add_argument("--image", default=None, help="JPEG to send (default: the first shared Cat photo)")
    p.add_argument("--n", type=int, default=200, help="timed requests per side (default: 200)")
    p.add_argument("--warmup", type=int, default=20, help="untimed requests first (default: 20)")
    p.add_argument("--smoke-test", action="store_true", help="n=10, warmup=2")
    return p


def main(args: argparse.Namespace) -> None:
    import ray

    from serve import deploy

    if args.smoke_test:
        args.n, args.warmup = 10, 2
    threads = torch.get_num_threads()
    data = photo_bytes(args.image)
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or make_model(os.path.join(tmp, "lite0"))
        local = in_process(model, data, args.n, args.warmup)
        os.environ.setdefault("RAY_ADDRESS", "local")
        ray.init(num_cpus=4, logging_level="ERROR")
        rows, inside = [], []
        try:
            url = deploy.start(model, port=free_port(), num_cpus=threads)  # the replica gets (and uses) as many CPUs
            replica_threads = requests.get(f"{url}/metadata", timeout=10).json()["torch_threads"]
            rows.append(("HTTP, dynamic batching (max 16, wait 5 ms)", over_http(url, data, args.n, args.warmup)))
            deploy.reconfigure(max_batch_size=1, batch_wait_timeout_s=0.0)
            rows.append(("HTTP, no batching", over_http(url, data, args.n, args.warmup, inside)))
        finally:
            deploy.stop()
            ray.shutdown()
    base = statistics.median(local)
    print(f"\nLite0 224 px, one {len(data)}-byte JPEG, {args.n} sequential requests, torch threads {threads}, {os.cpu_count()} CPUs")
    print(f"{'path':45s} {'p50 ms':>8s} {'p99 ms':>8s} {'p50 ratio':>10s}")
    print(f"{'in-process Predictor (decode+predict)':45s} {base:8.2f} {pct(local, 99):8.2f} {1.0:10.2f}")
    for name, xs in rows:
        print(f"{name:45s} {statistics.median(xs):8.2f} {pct(xs, 99):8.2f} {statistics.median(xs) / base:10.2f}")
    print(f"(no batching: the replica's own latency_ms p50 {statistics.median(inside):.2f}; the rest is proxy + HTTP; "
          f"replica torch threads {replica_threads})")
    load = os.getloadavg()
    print(f"load average during the run: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    best = min(statistics.median(xs) for _, xs in rows) / base
    print(f"\nHTTP p50 / in-process p50 = {best:.2f} (target <= 1.3): {'met' if best <= 1.3 else 'MISSED'}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
