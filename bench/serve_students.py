"""The demo's endpoint serving the probe (version 1) against serving a student, side by side in one run.

    python bench/serve_students.py [--seconds 10] [--concurrency 8] [--rounds 2]

Both models are served exactly as ``make demo`` serves its champion (``serve.deploy.start`` with
its defaults, one replica, the Python proxy) on one private Ray head, one after the other, in
``--rounds`` alternating rounds; ``--concurrency`` clients POST one real JPEG back to back to
``/predict``. The probe is EfficientNet-Lite2 at 260 px with autocontrast and the rotation pool;
the students Lite0 at 160 px with autocontrast (the demo's search's trials) and Lite2 at 260 px
with autocontrast but no pool (the closest student measured, bench/RESULTS.md "Students"). Untrained heads of the
same shapes: the same compute as trained ones. Target: a student serves at least 5x the probe's requests per second
at concurrency 8, so that promoting it pays at the endpoint, not only in the model's own forward pass.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile

from common import load_average, make_model, photo_bytes, ray_head
from serve_throughput import run_level

from animalclf.runtime.localray import free_port

MODELS = {
    "probe (Lite2 260 px, autocontrast, rotation pool)": dict(arch="efficientnet_lite2", image_size=None,
                                                               autocontrast=True, rotation_pool=True),
    "student (Lite0 160 px, autocontrast)": dict(arch="efficientnet_lite0", image_size=160, autocontrast=True),
    "student (Lite2 260 px, autocontrast, no pool)": dict(arch="efficientnet_lite2", image_size=None, autocontrast=True),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--image", default=None, help="JPEG to send (default: the first shared Cat photo)")
    args = p.parse_args()
    from serve import deploy

    data = photo_bytes(args.image)
    print(f"command: python bench/serve_students.py --seconds {args.seconds:g} --concurrency {args.concurrency} "
          f"--rounds {args.rounds}; {load_average()}", flush=True)
    rows: dict[str, list[dict]] = {name: [] for name in MODELS}
    with tempfile.TemporaryDirectory() as tmp, ray_head(num_cpus=4):
        paths = {name: make_model(os.path.join(tmp, str(i)), **fields) for i, (name, fields) in enumerate(MODELS.items())}
        for r in range(args.rounds):
            for name, path in paths.items():
                try:
                    url = deploy.start(path, port=free_port())
                    run_level(url, data, 2, 2.0)  # warm up
                    row = run_level(url, data, args.concurrency, args.seconds)
                finally:
                    deploy.stop()
                rows[name].append(row)
                print(f"round {r + 1} {name}: {row['rps']:.1f} req/s, p50 {row['p50']:.0f} ms, p99 {row['p99']:.0f} ms, "
                      f"errors {row['errors'] or '-'}; {load_average()}", flush=True)
    probe, student, *_ = (statistics.median(x["rps"] for x in rows[n]) for n in MODELS)
    print(f"\n| model | req/s at concurrency {args.concurrency} (median of {args.rounds}) | p50 ms |\n|---|---|---|")
    for name in MODELS:
        print(f"| {name} | {statistics.median(x['rps'] for x in rows[name]):.1f} | "
              f"{statistics.median(x['p50'] for x in rows[name]):.0f} |")
    for name in list(MODELS)[1:]:
        ratio = statistics.median(x["rps"] for x in rows[name]) / probe
        print(f"{name} / probe throughput: {ratio:.2f}x (target >= 5x: {'met' if ratio >= 5 else 'MISSED'})")
    print(load_average())


if __name__ == "__main__":
    main()
