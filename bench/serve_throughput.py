"""Throughput of the Serve endpoint at concurrency 1, 8 and 32, with and without dynamic
batching, in one run (Lite0 at 224 px, one real JPEG, raw-body POST /predict).

    python bench/serve_throughput.py [--model CKPT_OR_URI] [--seconds 8] [--ingress haproxy]
                                     [--threads-per-forward 1 2] [--images-per-pass 4 0] [--smoke-test]

Targets: with batching >= 1.5x the unbatched throughput at concurrency 32; p99 <= 3x p50.
Batching on/off (and ``images_per_pass``) is switched in place (``deploy.reconfigure``), so all
modes share one replica.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import requests
import torch

from animalclf.runtime.localray import free_port
from common import INGRESS, like_replica, make_model, pct, photo_bytes, ray_head


def run_level(url: str, data: bytes, concurrency: int, seconds: float) -> dict:
    """``concurrency`` clients sending back to back for ``seconds``; images/s and latencies."""
    lat: list[float] = []
    errors: dict[int, int] = {}
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def client(_):
        s = requests.Session()
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            r = s.post(f"{url}/predict", data=data, timeout=60)
            dt = (time.perf_counter() - t0) * 1000
            with lock:
                if r.status_code == 200:
                    lat.append(dt)
                else:
                    errors[r.status_code] = errors.get(r.status_code, 0) + 1

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as ex:
        list(ex.map(client, range(concurrency)))
    wall = time.perf_counter() - t0
    return {"rps": len(lat) / wall, "p50": statistics.median(lat), "p99": pct(lat, 99), "n": len(lat), "errors": errors}


def model_ceiling(model: str, data: bytes, workers: int, tpf: int, batch: int, seconds: float) -> float:
    """Images/s of the model alone, in this process, laid out like the replica: ``workers`` threads
    side by side, each with ``tpf`` torch threads, each forwarding ``batch`` preprocessed images at a
    time. Batching cannot gain the endpoint more than it gains the model here."""
    from animalclf.models.predict import Predictor

    p = Predictor.load(model)
    x = torch.stack([p.tensor(p.decode(data))] * batch)
    done = [0] * workers
    start = threading.Barrier(workers + 1)
    stop_at = [0.0]

    def work(i: int) -> None:
        torch.set_num_threads(tpf)
        p.predict_tensors(x)  # warm, before the clock starts
        start.wait()
        while time.perf_counter() < stop_at[0]:
            p.predict_tensors(x)
            done[i] += batch

    with ThreadPoolExecutor(workers) as ex:
        futures = [ex.submit(work, i) for i in range(workers)]
        stop_at[0] = float("inf")
        start.wait()  # every worker is warm: start the clock
        t0 = time.perf_counter()
        stop_at[0] = t0 + seconds
        for f in futures:
            f.result()
    return sum(done) / (time.perf_counter() - t0)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Serve throughput with and without dynamic batching", add_help=add_help)
    p.add_argument("--model", default=None, help="checkpoint or MLflow URI (default: a fresh Lite0 224 px checkpoint)")
    p.add_argument("--image", default=None, help="JPEG to send (default: the first shared Cat photo)")
    p.add_argument("--seconds", type=float, default=8.0, help="seconds per concurrency level (default: 8.0)")
    p.add_argument("--levels", default="1,8,32", help="concurrency levels (default: 1,8,32)")
    p.add_argument("--max-batch-size", type=int, default=16, help="batching run's max batch size (default: 16)")
    p.add_argument("--batch-wait-ms", type=float, default=10.0, help="batching run's wait (default: 10.0)")
    p.add_argument("--ingress", choices=list(INGRESS), default="python",
                   help="HTTP ingress: Ray's Python proxy or the HAProxy one (default: python)")
    p.add_argument("--threads-per-forward", type=int, nargs="+", default=[1],
                   help="the replica's threads_per_forward settings to measure in turn (default: 1, the serving default)")
    p.add_argument("--images-per-pass", type=int, nargs="+", default=[4],
                   help="the batching runs' images_per_pass settings, each a mode of its own (default: 4, the serving default)")
    p.add_argument("--smoke-test", action="store_true", help="2 s per level")
    return p


def main(args: argparse.Namespace) -> None:
    from serve import deploy
    from serve.settings import ServeSettings

    if args.smoke_test:
        args.seconds = 2.0
    levels = [int(x) for x in args.levels.split(",")]
    data = photo_bytes(args.image)
    threads = torch.get_num_threads()
    like_replica()  # the in-process side's allocator as a replica's (ServeSettings.mmap_threshold_mib)
    batching = [(f"batching/{ipp}", {"max_batch_size": args.max_batch_size, "batch_wait_timeout_s": args.batch_wait_ms / 1000,
                                      "images_per_pass": ipp}) for ipp in args.images_per_pass]
    modes = [*batching, ("no batching", {"max_batch_size": 1, "batch_wait_timeout_s": 0.0})]
    results: dict[tuple[int, str], dict[int, dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or make_model(os.path.join(tmp, "lite0"))
        os.environ["RAY_SERVE_ENABLE_HA_PROXY"] = INGRESS[args.ingress]  # read by Serve's controller at start
        with ray_head(num_cpus=4):  # a private head (token auth, loopback), stopped with its processes
            for tpf in args.threads_per_forward:
                try:
                    url = deploy.start(model, port=free_port(), num_cpus=threads, threads_per_forward=tpf,
                                       max_ongoing_requests=max(levels), max_queued_requests=4 * max(levels),
                                       **modes[0][1])
                    run_level(url, data, 4, 2.0)  # warm up
                    for name, cfg in modes:
                        deploy.reconfigure(**cfg)
                        results[tpf, name] = {c: run_level(url, data, c, args.seconds) for c in levels}
                finally:
                    deploy.stop()
        ceilings = []
        for tpf in args.threads_per_forward:  # the model alone, after the endpoint (its head stopped)
            workers = max(1, threads // tpf)
            one = model_ceiling(model, data, workers, tpf, 1, args.seconds / 2)
            for ipp in args.images_per_pass:  # a full batch in the replica's passes (ServeSettings.forward_parts)
                parts = ServeSettings(num_threads=threads, threads_per_forward=tpf, images_per_pass=ipp).forward_parts(
                    args.max_batch_size)
                per = -(-args.max_batch_size // parts)
                full = model_ceiling(model, data, workers, tpf, per, args.seconds / 2)
                ceilings.append(f"tpf {tpf}, the model alone in-process ({workers} worker(s) x {tpf} thread(s)): batch 1 "
                                f"{one:.1f} img/s, batch {per} per pass {full:.1f} img/s: batching/{ipp}'s ceiling {full / one:.2f}x")
    print(f"\nLite0 224 px, {len(data)}-byte JPEG, 1 replica with num_cpus {threads}, {os.cpu_count()} CPUs, "
          f"{args.seconds:.0f} s per level, ingress {args.ingress}")
    print(f"batching/N = max batch {args.max_batch_size}, wait {args.batch_wait_ms:.0f} ms, images_per_pass N; tpf = "
          f"the replica's threads_per_forward ({threads} // tpf forward passes at once)")
    print(f"{'tpf':>3s} {'mode':12s} {'conc':>5s} {'img/s':>8s} {'p50 ms':>8s} {'p99 ms':>8s} {'p99/p50':>8s} {'ok':>6s}  errors")
    for (tpf, name), rows in results.items():
        for c, r in rows.items():
            print(f"{tpf:3d} {name:12s} {c:5d} {r['rps']:8.1f} {r['p50']:8.1f} {r['p99']:8.1f} {r['p99'] / r['p50']:8.2f} "
                  f"{r['n']:6d}  {r['errors'] or '-'}")
    top = max(levels)
    for tpf in args.threads_per_forward:
        for name, _ in batching:
            b, nb = results[tpf, name], results[tpf, "no batching"]
            for c in levels:
                print(f"tpf {tpf}, concurrency {c:2d}: {name} / no batching throughput = {b[c]['rps'] / nb[c]['rps']:.2f}")
    print("\n".join(ceilings))
    load = os.getloadavg()
    print(f"load average during the run: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    for tpf in args.threads_per_forward:
        for name, _ in batching:
            b, nb = results[tpf, name], results[tpf, "no batching"]
            ratio, tail = b[top]["rps"] / nb[top]["rps"], b[top]["p99"] / b[top]["p50"]
            print(f"tpf {tpf}: target {name} >= 1.5x no batching at {top}: {ratio:.2f} {'met' if ratio >= 1.5 else 'MISSED'}; "
                  f"p99 <= 3x p50 at {top}: {tail:.2f} {'met' if tail <= 3 else 'MISSED'}")
    if len(args.threads_per_forward) > 1:
        first = args.threads_per_forward[0]
        for tpf in args.threads_per_forward[1:]:
            for name, _ in modes:
                print(f"{name} at {top}: tpf {first} / tpf {tpf} throughput = "
                      f"{results[first, name][top]['rps'] / results[tpf, name][top]['rps']:.2f}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
