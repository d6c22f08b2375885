"""ASHA against the full budget: the same search on the shared photos, with and without ASHA.

Both searches run through the library's ``run_search`` (Ray Tune + OptunaSearch + Ray Train, one
TorchTrainer per trial) on one private Ray head (``common.ray_head``), one after the other,
with the same seed, space, number of trials and epochs per trial (Optuna's TPE samples its first
10 trials at random from the seed, so with <= 10 trials both searches try the same configs).
Patience is off so "full budget" means every trial runs every epoch. Prints the trial-epochs each
search spent, the best validation accuracy each found, the wall times and the per-trial table.

    python bench/asha.py --data ../shared/data/animals15 [--num-samples 8] [--epochs 6] [--reduction-factor 3]
    python bench/asha.py --quick
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from common import base_parser, load_average, ray_head


def get_args_parser() -> argparse.ArgumentParser:
    p = base_parser(__doc__, image_size=128, epochs=6, epochs_help="epochs per trial = ASHA max_t ")
    p.add_argument("--space", action="append", default=None, help='search space items (default: lr=1e-4:1e-2 unfreeze=0:2)')
    p.add_argument("--num-samples", type=int, default=8, help="trials per search (default: 8)")
    p.add_argument("--grace-period", type=int, default=1, help="(default: 1)")
    p.add_argument("--reduction-factor", type=int, default=3, help="(default: 3, as ray_jobs/tune.py)")
    p.add_argument("--max-concurrent", type=int, default=2, help="trials at once, 1 CPU each (default: 2)")
    p.add_argument("--seed", type=int, default=42, help="split and search seed (default: 42)")
    p.add_argument("--order", default="full,asha", help="which search first (default: full,asha)")
    p.add_argument("--quick", action="store_true", help="seconds-long smoke run (2 trials x 2 epochs of 2 steps, 64 px)")
    return p


def main(args: argparse.Namespace) -> dict:
    home = tempfile.mkdtemp(prefix="bench-asha-")
    os.environ["ANIMALCLF_HOME"] = home
    from animalclf.tracking import TRACKING_VARS

    for k in TRACKING_VARS:  # a local store in the bench's home, whatever the shell says
        os.environ.pop(k, None)
    from animalclf.config import TrainConfig
    from animalclf.runtime.logs import setup_logging
    from animalclf.tune.search import TuneOptions, run_search
    from animalclf.tune.space import parse_space

    setup_logging("WARNING")
    cfg = TrainConfig(data=args.data, arch=args.arch, weights="imagenet", image_size=args.image_size, batch_size=args.batch_size,
                      epochs=args.epochs, patience=0, seed=args.seed, num_workers=1, cpus_per_worker=1, track=False,
                      keep_checkpoints=1)
    num_samples = args.num_samples
    if args.quick:
        cfg = cfg.replace(image_size=64, epochs=2, max_steps_per_epoch=2, batch_size=8)
        num_samples = 2
    space = parse_space(args.space or ["lr=1e-4:1e-2", "unfreeze=0:2"], arch=cfg.arch)
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"search: {num_samples} trials x {cfg.epochs} epochs, space {{{', '.join(f'{k}: {v.describe()}' for k, v in space.items())}}}, "
          f"{cfg.arch} {cfg.image_size} px batch {cfg.batch_size}, seed {cfg.seed}, max_concurrent {args.max_concurrent}; "
          f"ASHA grace_period {args.grace_period} reduction_factor {args.reduction_factor}; {load_average()}", flush=True)
    results = {}
    try:
        # each trial asks 1 CPU for its worker + 0.01 for its driver: one spare logical CPU lets
        # max_concurrent trials fit while only max_concurrent threads compute
        with ray_head(num_cpus=args.max_concurrent + 1):
            for kind in args.order.split(","):
                asha = kind == "asha"
                opts = TuneOptions(name=f"bench-{kind}", num_samples=num_samples, max_concurrent=args.max_concurrent,
                                   grace_period=args.grace_period, reduction_factor=args.reduction_factor, asha=asha,
                                   seed=cfg.seed)
                print(f"\n-- {kind} search starts; {load_average()}", flush=True)
                t0 = time.perf_counter()
                out = run_search(cfg.replace(name=f"bench-{kind}"), space, opts)
                wall = time.perf_counter() - t0
                results[kind] = {"out": out, "wall": wall}
                print(f"-- {kind}: {out.epochs_run}/{out.epochs_budget} trial-epochs, best val_accuracy "
                      f"{out.best_metrics['val_accuracy']:.4f} ({out.best_config}), wall {wall:.0f}s; {load_average()}", flush=True)
    finally:
        shutil.rmtree(home, ignore_errors=True)

    for kind, r in results.items():
        print(f"\n{kind} trials:")
        print(f"  {'config':<42} {'status':<16} {'epochs':>6} {'best val acc':>12} {'at epoch':>8}")
        for t in sorted(r["out"].trials, key=lambda t: str(t["config"])):
            b = t["best"] or {}
            cfg_s = ", ".join(f"{k}={v:.2e}" if isinstance(v, float) else f"{k}={v}" for k, v in t["config"].items())
            print(f"  {cfg_s:<42} {t['status']:<16} {t['epochs']:>6} {b.get('val_accuracy', float('nan')):>12.4f} {b.get('epoch', 0):>8}")
    summary = {}
    if "full" in results and "asha" in results:
        f, a = results["full"], results["asha"]
        frac = a["out"].epochs_run / max(f["out"].epochs_run, 1)
        acc_f, acc_a = f["out"].best_metrics["val_accuracy"], a["out"].best_metrics["val_accuracy"]
        gap = 100 * (acc_f - acc_a)
        summary = {"epochs_full": f["out"].epochs_run, "epochs_asha": a["out"].epochs_run, "fraction": frac,
                   "acc_full": acc_f, "acc_asha": acc_a, "gap_points": gap, "wall_full": f["wall"], "wall_asha": a["wall"]}
        print(f"\n{'':>14} | {'trial-epochs':>12} | {'best val acc':>12} | {'wall s':>7}")
        print(f"{'full budget':>14} | {f['out'].epochs_run:>12} | {acc_f:>12.4f} | {f['wall']:>7.0f}")
        print(f"{'ASHA':>14} | {a['out'].epochs_run:>12} | {acc_a:>12.4f} | {a['wall']:>7.0f}")
        print(f"ASHA/full epochs {frac:.1%} (target <= 35%: {'MET' if frac <= 0.35 else 'MISSED'}); best accuracy gap "
              f"{gap:+.1f} points (target <= 1: {'MET' if gap <= 1.0 else 'MISSED'}); wall ratio {a['wall'] / f['wall']:.2f}; "
              f"{load_average()}")
    return summary


if __name__ == "__main__":
    main(get_args_parser().parse_args())
