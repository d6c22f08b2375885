"""Where the driver's private memory grows at 100x (``bench/cost_at_size.py``), and how glibc's
malloc settings change it, side by side in one run.

Each side is a fresh process with its own Ray head that runs what ``cost_at_size.py``'s epoch
phase runs (``run_training``: a Lite0 head at 64 px, one epoch, ``--groups auto``, 1 worker with 2
CPUs, MLflow off) and samples its own private RSS (``RssAnon``, with ``cost_at_size.PeakRSS``)
every 0.2 s, apart for the
evaluation of the published checkpoint on the validation split (the pass ``publish`` sends through
its runner, :mod:`animalclf.runtime.isolate`) and for everything before it. The evaluation's
Python-level peak on the driver (``tracemalloc``: Python objects and NumPy buffers, not torch's or
PIL's native ones) is printed too. Side 1 is the library as it is: the pass runs in a Ray actor of
its own. Sides 2-4 run the pass on the driver, as the library did before, under glibc's defaults,
``MALLOC_ARENA_MAX=2``, and a fixed mmap threshold (``MALLOC_MMAP_THRESHOLD_=131072``, which also
turns off glibc's dynamic threshold); Ray's workers inherit the environment.

    python bench/driver_memory.py --data bench/out/cost/100x
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from common import rss_mib
from cost_at_size import PeakRSS  # the same sampler (this folder is on sys.path when run as a script)

HERE = {"BENCH_EVAL_HERE": "1"}
SIDES = (("library: the evaluation in its own Ray actor", {}), ("evaluation on the driver, glibc defaults", HERE),
         ("evaluation on the driver, MALLOC_ARENA_MAX=2", {"MALLOC_ARENA_MAX": "2", **HERE}),
         ("evaluation on the driver, MALLOC_MMAP_THRESHOLD_=131072", {"MALLOC_MMAP_THRESHOLD_": "131072", **HERE}))


def one(data: str) -> dict:
    """One side, in this process: the figures of one ``run_training``."""
    import contextlib
    import tracemalloc

    import animalclf.train.publish as publish
    from animalclf.runtime import isolate
    from animalclf.config import TrainConfig
    from animalclf.runtime.localray import start_head
    from animalclf.train.run import run_training

    os.environ["ANIMALCLF_HOME"] = tempfile.mkdtemp(prefix="driver-memory-")
    out: dict = {}
    head = start_head(num_cpus=2)
    peaks = PeakRSS(head.temp_dir)
    peaks.phase = "before"
    real = (lambda: contextlib.nullcontext(isolate.here)) if os.environ.get("BENCH_EVAL_HERE") else publish.isolated

    def private_mib() -> int:
        return round(rss_mib(os.getpid(), "RssAnon"))

    @contextlib.contextmanager
    def measured():
        with real() as run:
            def timed(fn, *args, **kwargs):
                out["eval_images"], out["eval_before"] = len(args[2]), private_mib()
                peaks.phase, t0 = "evaluation", time.perf_counter()
                tracemalloc.start()
                try:
                    return run(fn, *args, **kwargs)
                finally:
                    out["eval_python_peak"] = round(tracemalloc.get_traced_memory()[1] / 2**20, 1)
                    tracemalloc.stop()
                    out["eval_s"], out["eval_after"] = round(time.perf_counter() - t0, 1), private_mib()
                    peaks.phase = "after"

            yield timed

    publish.isolated = measured  # the one pass publish makes (untracked: no gate), timed and sampled
    try:
        with peaks:
            cfg = TrainConfig(data=data, arch="efficientnet_lite0", image_size=64, unfreeze=0, epochs=1, batch_size=64,
                              lr=1e-3, patience=0, track=False, groups="auto", name="mem", cpus_per_worker=2)
            t0 = time.perf_counter()
            trained = run_training(cfg)
            out["run_s"] = round(time.perf_counter() - t0, 1)
            out["train_s"] = round(trained.report["history"][-1]["train_seconds"], 1)
    finally:
        head.stop()
    out.update({f"peak_{k[7:]}": round(v) for k, v in peaks.anon.items() if k.startswith("driver:")})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="the data set (e.g. bench/out/cost/100x, from cost_at_size.py)")
    p.add_argument("--sides", default="1,2", help="which sides, 1-based (default: 1,2)")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # internal: one side, JSON out
    args = p.parse_args()
    if args.one:
        print("RESULT " + json.dumps(one(args.data)), flush=True)
        return
    load = lambda: " ".join(f"{v:.2f}" for v in os.getloadavg())  # noqa: E731
    print(f"command: python bench/driver_memory.py --data {args.data} --sides {args.sides}; load average {load()}", flush=True)
    print("\n| driver environment | validation images | private MiB before the run's evaluation (peak) | "
          "evaluation: private before -> peak -> after MiB | evaluation Python peak MiB | evaluation s | "
          "training epoch s | load |")
    print("|---|---:|---:|---|---:|---:|---:|---:|")
    for name, extra in [SIDES[int(i) - 1] for i in args.sides.split(",")]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "BENCH_"))} | extra
        r = subprocess.run([sys.executable, __file__, "--data", args.data, "--one"], capture_output=True, text=True, env=env)
        line = next((x for x in r.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            print(f"| {name} | failed: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode} |")
            continue
        x = json.loads(line[len("RESULT "):])
        print(f"| {name} | {x['eval_images']} | {x.get('peak_before', '-')} | {x['eval_before']} -> "
              f"{x.get('peak_evaluation', '-')} -> {x['eval_after']} | {x['eval_python_peak']} | {x['eval_s']} | "
              f"{x['train_s']} | {os.getloadavg()[0]:.1f} |", flush=True)
    print(f"load average {load()}")


if __name__ == "__main__":
    main()
