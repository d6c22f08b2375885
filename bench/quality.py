"""Cross-validated quality of fine-tune recipes on the shared photos, through the real ``run_training``.

For each recipe and seed: ``run_training`` with ``cv=K`` (K stratified, seeded folds over all
images, the K fold models trained in lockstep in one Ray Train worker, ``final="none"``), on a
private Ray head (``common.ray_head``), outputs under a temporary ``ANIMALCLF_HOME``, MLflow
off. Prints per recipe: CV accuracy and macro F1 (mean ± std over folds) at the last epoch (what a
fixed-epoch recipe ships) and at the epoch with the best mean (what ``--final refit`` would train
for), wall time and load, and the spread of the last-epoch mean over the seeds.

    python bench/quality.py                                  # demo fine-tune + what make demo ships (lite2), 5 folds, seeds 42,1,2
    python bench/quality.py --recipes lite2 --seeds 42,1,2   # the shipped probe alone (7-7.5 min per seed here)
    python bench/quality.py --recipes demo --seeds 42 --folds 5
    python bench/quality.py --recipes demo,probe,probe224 --seeds 42,1,2 --strong-seeds 42
    python bench/quality.py --recipes demo --seeds 42 --vary - label_smoothing=0.1 schedule=cosine,warmup_epochs=1
                                                             # cheap gains, paired with the recipe as is (-)
    python bench/quality.py --final-compare --recipes demo  # --final refit vs ensemble by nested CV
    python bench/quality.py --overhead                       # lockstep CV vs K separate runs, tiny images
    python bench/quality.py --quick
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import DEFAULT_DATA, load_average, ray_head

# "demo": a 6-epoch fine-tune of Lite0 at 160 px (the demo search's first point is this at 4 epochs);
# "strong": a longer fine-tune at 224 px; "probe": the linear probe of Lite0 alone at 160 px;
# "probe224": the same at 224 px; "lite2": the probe of Lite2 at 260 px with autocontrast and the
# rotation pool (the demo's step 1, ray_jobs/demo.py).
RECIPES = {
    "demo": dict(arch="efficientnet_lite0", image_size=160, unfreeze=2, lr=1e-3, batch_size=32, epochs=6),
    "strong": dict(arch="efficientnet_lite0", image_size=224, unfreeze=3, lr=1e-3, batch_size=32, epochs=8),
    "probe": dict(arch="efficientnet_lite0", image_size=160, unfreeze=0, lr=0.0, batch_size=32, epochs=1, head_init="probe"),
    "probe224": dict(arch="efficientnet_lite0", image_size=224, unfreeze=0, lr=0.0, batch_size=32, epochs=1,
                     head_init="probe"),
    "lite2": dict(arch="efficientnet_lite2", image_size=260, unfreeze=0, lr=0.0, batch_size=32, epochs=1,
                  head_init="probe", autocontrast=True, rotation_pool=True),
}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(DEFAULT_DATA), help=f"class folders (default: {DEFAULT_DATA})")
    p.add_argument("--recipes", default="demo,lite2", help=f"comma list of {', '.join(RECIPES)} (default: demo,lite2)")
    p.add_argument("--seeds", default="42,1,2", help="fold and init seeds (default: 42,1,2)")
    p.add_argument("--strong-seeds", default=None, help="seeds for the strong recipe (default: --seeds)")
    p.add_argument("--folds", type=int, default=5, help="(default: 5)")
    p.add_argument("--cpus", type=int, default=2, help="CPUs of the one worker (default: 2, the whole machine)")
    p.add_argument("--vary", nargs="+", default=["-"], metavar="K=V[,K=V]",
                   help="variants of each recipe ('-' = as is), each on the same folds and seeds; the table adds the "
                        "paired per-fold gain over the first variant (default: -)")
    p.add_argument("--final-compare", action="store_true",
                   help="--final refit vs ensemble by nested CV: per outer fold, the model trained on the other folds "
                        "(what a refit is) against the ensemble of an inner K-fold CV on them, on the held-out fold")
    p.add_argument("--overhead", action="store_true", help="time lockstep CV against K separate runs (tiny images)")
    p.add_argument("--quick", action="store_true", help="seconds-long smoke run (64 px, 2 epochs of 2 steps)")
    return p


def parse_variant(text: str) -> dict:
    """``label_smoothing=0.1,schedule=cosine`` -> overrides (values as JSON when they parse); ``-`` -> {}."""
    import dataclasses
    import json

    from animalclf.config import TrainConfig

    if text == "-":
        return {}
    fixed = {"data", "cv", "final", "seed", "name", "track", "schedule_epochs"}  # what the bench itself sets
    allowed = {f.name for f in dataclasses.fields(TrainConfig)} - fixed
    out = {}
    for part in text.split(","):
        key, _, value = part.partition("=")
        if key not in allowed:
            raise SystemExit(f"--vary {text!r}: {key!r} is not a TrainConfig field the bench lets vary "
                             f"(not one of {sorted(fixed)}); e.g. label_smoothing=0.1")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _cfg(args, recipe: str, seed: int, **kw):
    from animalclf.config import TrainConfig

    cfg = TrainConfig(data=args.data, weights="imagenet", patience=0, seed=seed, num_workers=1, cpus_per_worker=args.cpus,
                      track=False, cv=args.folds, final="none", name=f"q-{recipe}-{seed}", **{**RECIPES[recipe], **kw})
    if args.quick:
        cfg = cfg.replace(image_size=64, epochs=min(cfg.epochs, 2), max_steps_per_epoch=2, batch_size=8)
    return cfg


def cv_once(args, recipe: str, seed: int, variant: str = "-") -> dict:
    """One recipe (and variant), one seed: the CV history's last epoch and best-mean epoch, and the wall time."""
    from animalclf.train.run import run_training

    t0 = time.perf_counter()
    tag = "" if variant == "-" else "-" + "".join(c if c.isalnum() else "_" for c in variant)
    out = run_training(_cfg(args, recipe, seed, **parse_variant(variant)).replace(name=f"q-{recipe}-{seed}{tag}"))
    wall = time.perf_counter() - t0
    hist = out.report["history"]
    last, best = hist[-1], next(h for h in hist if h["epoch"] == out.epochs_run)
    means = " ".join(f"{h['val_accuracy']:.3f}" for h in hist)
    row = {"recipe": recipe, "variant": variant, "seed": seed, "wall": wall, "load": load_average(), "last": last,
           "best": best}
    print(f"  {recipe} [{variant}] seed {seed}: last epoch {last['epoch']}: acc {last['val_accuracy']:.4f} ± {last['val_accuracy_std']:.4f} "
          f"F1 {last['val_f1']:.4f} ± {last['val_f1_std']:.4f}, flip TTA acc {last.get('val_tta_accuracy', float('nan')):.4f} "
          f"± {last.get('val_tta_accuracy_std', float('nan')):.4f} | best-mean epoch {best['epoch']}: acc "
          f"{best['val_accuracy']:.4f} ± {best['val_accuracy_std']:.4f} | per-epoch means "
          f"{means} | {wall:.0f}s; {row['load']}", flush=True)
    return row


def overhead(args) -> None:
    """Lockstep (one TorchTrainer, K models) against K separate TorchTrainer runs on the same folds."""
    from animalclf.config import TrainConfig
    from animalclf.data.folds import fold_splits
    from animalclf.data.source import source_of
    from animalclf.train.run import run_training

    base = TrainConfig(data=args.data, arch="efficientnet_lite0", image_size=64, batch_size=32, epochs=2, unfreeze=2,
                       patience=0, num_workers=1, cpus_per_worker=args.cpus, track=False, final="none")
    split = source_of(base).split(base.val_ratio, base.seed)
    t0 = time.perf_counter()
    run_training(base.replace(cv=args.folds, name="lockstep"))
    lockstep = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i, fold in enumerate(fold_splits(split, args.folds, base.seed)):
        run_training(base.replace(name=f"separate-{i}"), split=fold)
    separate = time.perf_counter() - t0
    print(f"\n{args.folds} folds x {base.epochs} epochs at 64 px: lockstep {lockstep:.1f}s vs {args.folds} separate runs "
          f"{separate:.1f}s ({separate / lockstep:.2f}x); {load_average()}")


def final_compare(args, recipe: str, seed: int) -> None:
    """Nested CV of the two ``--final`` modes on the same outer folds. Refit: the outer CV's fold model
    (trained on the other K-1 folds for the recipe's epochs, like a refit on everything it may see);
    ensemble: an inner K-fold CV on those same images, its fold models of the best inner fold-mean
    epoch averaged (``animalclf.evaluate.out_of_fold.export_ensemble``). Both scored on the held-out outer fold."""
    from ray.train import Result

    from animalclf.data.folds import fold_splits
    from animalclf.data.source import source_of
    from animalclf.data.split import Split
    from animalclf.evaluate.evaluation import evaluate_checkpoint
    from animalclf.evaluate.out_of_fold import export_ensemble
    from animalclf.train.run import run_training

    cfg = _cfg(args, recipe, seed).replace(name=f"fc-outer-{recipe}-{seed}")
    split = source_of(cfg).split(cfg.val_ratio, cfg.seed)
    t0 = time.perf_counter()
    outer = run_training(cfg).report["history"][-1]  # lockstep outer CV: the refit proxy per fold, last epoch
    refit_acc = [outer[f"val_accuracy_fold{i}"] for i in range(args.folds)]
    refit_f1 = [outer[f"val_f1_fold{i}"] for i in range(args.folds)]
    t_outer = time.perf_counter() - t0
    ens_acc, ens_f1 = [], []
    for i, fold in enumerate(fold_splits(split, args.folds, cfg.seed)):
        inner = cfg.replace(name=f"fc-inner-{recipe}-{seed}-{i}")
        run_training(inner, split=Split(list(split.classes), list(fold.train), [], split.groups))  # inner folds grouped too
        best = Result.from_path(f"{inner.resolved_storage()}/{inner.name}").get_best_checkpoint(cfg.metric, cfg.mode)
        with best.as_directory() as d, tempfile.TemporaryDirectory() as tmp:
            export_ensemble(d, args.folds, tmp)
            report = evaluate_checkpoint(tmp, fold.val, split.classes)
        ens_acc.append(report["accuracy"])
        ens_f1.append(report["macro_avg"]["f1"])
        print(f"  outer fold {i}: refit proxy acc {refit_acc[i]:.4f} f1 {refit_f1[i]:.4f} | ensemble of {args.folds} "
              f"acc {ens_acc[i]:.4f} f1 {ens_f1[i]:.4f} ({len(fold.val)} images); {load_average()}", flush=True)
    gains = [e - r for e, r in zip(ens_acc, refit_acc)]
    print(f"\n| {recipe}, seed {seed}, {args.folds}x{args.folds} nested CV | acc (mean ± std over outer folds) | macro F1 |\n"
          f"|---|---|---|\n"
          f"| refit (model on the other folds, last epoch) | {statistics.fmean(refit_acc):.4f} ± {statistics.pstdev(refit_acc):.4f} "
          f"| {statistics.fmean(refit_f1):.4f} ± {statistics.pstdev(refit_f1):.4f} |\n"
          f"| ensemble of {args.folds} inner fold models | {statistics.fmean(ens_acc):.4f} ± {statistics.pstdev(ens_acc):.4f} "
          f"| {statistics.fmean(ens_f1):.4f} ± {statistics.pstdev(ens_f1):.4f} |\n"
          f"| paired gain, ensemble - refit | {100 * statistics.fmean(gains):+.2f} ± {100 * statistics.pstdev(gains):.2f} points "
          f"| |\n\nwall: outer CV {t_outer:.0f}s, inner CVs {time.perf_counter() - t0 - t_outer:.0f}s; {load_average()}",
          flush=True)


def main(args: argparse.Namespace) -> list[dict]:
    home = tempfile.mkdtemp(prefix="bench-quality-")
    os.environ["ANIMALCLF_HOME"] = home
    from animalclf.tracking import TRACKING_VARS

    for k in TRACKING_VARS:  # a local store in the bench's home, whatever the shell says
        os.environ.pop(k, None)
    from animalclf.runtime.logs import setup_logging

    setup_logging("WARNING")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}; {load_average()}", flush=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    strong_seeds = [int(s) for s in args.strong_seeds.split(",")] if args.strong_seeds else seeds
    rows: list[dict] = []
    try:
        t_all = time.perf_counter()
        with ray_head(num_cpus=args.cpus):
            if args.overhead:
                overhead(args)
                return rows
            if args.final_compare:
                for recipe in args.recipes.split(","):
                    for seed in seeds:
                        final_compare(args, recipe, seed)
                return rows
            for recipe in args.recipes.split(","):
                print(f"{recipe}: {RECIPES[recipe]}, {args.folds}-fold CV", flush=True)
                for seed in (strong_seeds if recipe == "strong" else seeds):
                    for variant in args.vary:
                        rows.append(cv_once(args, recipe, seed, variant))
        total = time.perf_counter() - t_all
    finally:
        shutil.rmtree(home, ignore_errors=True)
    print("\n| recipe | variant | seeds | CV acc, last epoch (mean ± fold std) | CV macro F1, last epoch | CV acc, best-mean epoch "
          "| spread of last-epoch acc over seeds | CV acc with flip TTA, last epoch | paired gain over the first variant, "
          "last epoch (mean ± std over folds x seeds) | wall per CV run |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for recipe, variant in [(r, v) for r in args.recipes.split(",") for v in args.vary]:
        rs = [r for r in rows if r["recipe"] == recipe and r["variant"] == variant]
        if not rs:
            continue
        base = {r["seed"]: r for r in rows if r["recipe"] == recipe and r["variant"] == args.vary[0]}
        gains = [r["last"][f"val_accuracy_fold{i}"] - base[r["seed"]]["last"][f"val_accuracy_fold{i}"]
                 for r in rs if r["seed"] in base for i in range(args.folds)]
        acc = [r["last"]["val_accuracy"] for r in rs]
        f1 = [r["last"]["val_f1"] for r in rs]
        std = statistics.fmean(r["last"]["val_accuracy_std"] for r in rs)
        f1std = statistics.fmean(r["last"]["val_f1_std"] for r in rs)
        best = [r["best"]["val_accuracy"] for r in rs]
        tta = [r["last"].get("val_tta_accuracy", float("nan")) for r in rs]
        tta_std = statistics.fmean(r["last"].get("val_tta_accuracy_std", float("nan")) for r in rs)
        gain = (f"{100 * statistics.fmean(gains):+.2f} ± {100 * statistics.pstdev(gains):.2f} points"
                if variant != args.vary[0] and gains else "–")
        print(f"| {recipe} | {variant} | {','.join(str(r['seed']) for r in rs)} | {statistics.fmean(acc):.4f} ± {std:.4f} | "
              f"{statistics.fmean(f1):.4f} ± {f1std:.4f} | {statistics.fmean(best):.4f} | "
              f"{100 * (max(acc) - min(acc)):.1f} points ({', '.join(f'{a:.4f}' for a in acc)}) | "
              f"{statistics.fmean(tta):.4f} ± {tta_std:.4f} | {gain} | "
              f"{statistics.fmean(r['wall'] for r in rs):.0f}s |")
    print(f"\ntotal wall {total:.0f}s incl. Ray start; {load_average()}")
    return rows


if __name__ == "__main__":
    main(get_args_parser().parse_args())
