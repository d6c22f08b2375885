"""The demo's endpoint serving the probe (version 1) against serving a student, side by side in one run.

    python bench/serve_students.py [--seconds 10] [--concurrency 8] [--rounds 2] [--models probe,lite0,lite2]

Both models are served exactly as ``make demo`` serves its champion (``serve.deploy.start`` with
its defaults, one replica, the Python proxy) on one private Ray head, one after the other, in
``--rounds`` alternating rounds; ``--concurrency`` clients POST one real JPEG back to back to
``/predict``. The probe is EfficientNet-Lite2 at 260 px with autocontrast and the rotation pool;
the students Lite0 at 160 px with autocontrast (the demo's search's trials) and Lite2 at 260 px
with autocontrast but no pool (the closest student measured, bench/RESULTS.md "Students"). ``--models`` adds
what would lift that student further: a 224 px crop (``lite2-224``), and two forward workers in the one
replica (``*-t2``: ``num_threads=2``, for the probe too, so that the comparison stays like for like).
Untrained heads of the same shapes: the same compute as trained ones. Target: a student serves at least 5x the probe's requests per second
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

# key: (label, model fields, serve.deploy.start overrides); the first key given is the baseline
PROBE = dict(arch="efficientnet_lite2", image_size=None, autocontrast=True, rotation_pool=True)
LITE2 = dict(arch="efficientnet_lite2", image_size=None, autocontrast=True)
LITE2_224 = {**LITE2, "image_size": 224}
TWO = {"num_threads": 2}
MODELS = {
    "probe": ("probe (Lite2 260 px, autocontrast, rotation pool)", PROBE, {}),
    "lite0": ("student (Lite0 160 px, autocontrast)", dict(arch="efficientnet_lite0", image_size=160, autocontrast=True), {}),
    "lite2": ("student (Lite2 260 px, autocontrast, no pool)", LITE2, {}),
    "lite2-224": ("student (Lite2 224 px, autocontrast, no pool)", LITE2_224, {}),
    "probe-t2": ("probe, 2 forward workers (num_threads=2)", PROBE, TWO),
    "lite2-t2": ("student (Lite2 260 px, no pool), 2 forward workers (num_threads=2)", LITE2, TWO),
    "lite2-224-t2": ("student (Lite2 224 px, no pool), 2 forward workers (num_threads=2)", LITE2_224, TWO),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--image", default=None, help="JPEG to send (default: the first shared Cat photo)")
    p.add_argument("--models", default="probe,lite0,lite2",
                   help=f"comma list of {', '.join(MODELS)}; ratios are against the first (default: probe,lite0,lite2)")
    args = p.parse_args()
    keys = args.models.split(",")
    if unknown := sorted(set(keys) - set(MODELS)):
        raise SystemExit(f"--models: unknown {unknown}; choose from {', '.join(MODELS)}")
    from serve import deploy

    data = photo_bytes(args.image)
    print(f"command: python bench/serve_students.py --seconds {args.seconds:g} --concurrency {args.concurrency} "
          f"--rounds {args.rounds} --models {args.models}; {load_average()}", flush=True)
    rows: dict[str, list[dict]] = {k: [] for k in keys}
    with tempfile.TemporaryDirectory() as tmp, ray_head(num_cpus=4):
        paths = {k: make_model(os.path.join(tmp, k), **MODELS[k][1]) for k in keys}
        for r in range(args.rounds):
            for name, path in paths.items():
                try:
                    url = deploy.start(path, port=free_port(), **MODELS[name][2])
                    run_level(url, data, 2, 2.0)  # warm up
                    row = run_level(url, data, args.concurrency, args.seconds)
                finally:
                    deploy.stop()
                rows[name].append(row)
                print(f"round {r + 1} {MODELS[name][0]}: {row['rps']:.1f} req/s, p50 {row['p50']:.0f} ms, p99 {row['p99']:.0f} ms, "
                      f"errors {row['errors'] or '-'}; {load_average()}", flush=True)
    rps = {k: statistics.median(x["rps"] for x in rows[k]) for k in keys}
    print(f"\n| model | req/s at concurrency {args.concurrency} (median of {args.rounds}) | p50 ms | / {keys[0]} |\n|---|---|---|---|")
    for k in keys:
        print(f"| {MODELS[k][0]} | {rps[k]:.1f} | {statistics.median(x['p50'] for x in rows[k]):.0f} | "
              f"{rps[k] / rps[keys[0]]:.2f}x |")
    for k in keys[1:]:
        ratio = rps[k] / rps[keys[0]]
        print(f"{MODELS[k][0]} / {MODELS[keys[0]][0]} throughput: {ratio:.2f}x (target >= 5x: {'met' if ratio >= 5 else 'MISSED'})")
    print(load_average())


if __name__ == "__main__":
    main()
