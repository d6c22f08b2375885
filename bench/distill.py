"""Fine-tuned students against their teacher on grouped 5-fold CV, over seeds, and what each costs per photo.

    python bench/distill.py --data ../shared/data/animals15 --seeds 42 --students base,kd    # screen
    python bench/distill.py --data ../shared/data/animals15 --seeds 42,1,2 --students base,kd --cost

The teacher is what ``make demo`` ships as version 1: the linear probe of EfficientNet-Lite2 at
260 px on autocontrasted images, pooled over quarter turns. Its CV must not leak, so each fold
has its own teacher, fitted on that fold's training images only: the pooled features of every photo
are extracted once (``features_cv.turned_features``), and per fold the pipeline's own probe fit
(``fit_linear``) gives the teacher whose answers (log-probabilities, for every image) that fold's
student learns from. Students run through the real pipeline: ``run_training(cv=5)`` with those
per-fold answers (the K fold models in lockstep in one Ray Train worker, MLflow off, a private
Ray head), the same grouped folds (``--groups auto``) for teacher and students. The figure per
student is the fold mean at the last epoch (what a fixed-epoch recipe ships).

``--cost``: ms per photo of each model as the gate measures it
(:func:`animalclf.evaluate.cost.measure`: the Predictor, one thread, decode and preprocessing
included, rounds alternating between the models), on untrained heads of the same shapes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_DATA, load_average, make_model, ray_head  # noqa: E402

TEACHER = dict(arch="efficientnet_lite2", autocontrast=True, rotation_pool=True)  # image size: the weights' 260
# The demo's fine-tune (Lite0 160 px, unfreeze 2, lr 1e-3, batch 32, autocontrast) for 6 epochs, and
# students of it; "kd" learns from the teacher with the augmentations the teacher is invariant to.
BASE = dict(arch="efficientnet_lite0", image_size=160, unfreeze=2, lr=1e-3, batch_size=32, epochs=6, autocontrast=True)
STUDENTS = {
    "base": {},
    "invariant": dict(augment="invariant"),
    "kd": dict(augment="invariant", kd_weight=0.7, kd_temperature=2.0),
    "kd-only": dict(augment="invariant", kd_weight=1.0, kd_temperature=2.0),
    "kd224": dict(augment="invariant", kd_weight=0.7, kd_temperature=2.0, image_size=224),
    "kd224-deep": dict(augment="invariant", kd_weight=0.7, kd_temperature=2.0, image_size=224, unfreeze=3, epochs=8),
    "kd-long": dict(augment="invariant", kd_weight=0.7, kd_temperature=2.0, epochs=10),
    # Lite2 at its own 260 px without the rotation pool (a quarter of the teacher's forward passes):
    # the head starts as the probe and then learns from the teacher on turned and darkened images
    "lite2-kd": dict(arch="efficientnet_lite2", image_size=None, unfreeze=0, head_init="probe", epochs=4,
                     augment="invariant", kd_weight=0.7, kd_temperature=2.0),
    # the same recipe without the teacher (kd_weight 0): what the turned and darkened images alone give
    "lite2-inv": dict(arch="efficientnet_lite2", image_size=None, unfreeze=0, head_init="probe", epochs=4,
                      augment="invariant"),
    "lite2-kd-u1": dict(arch="efficientnet_lite2", image_size=None, unfreeze=1, head_init="probe", lr=3e-4, epochs=4,
                        augment="invariant", kd_weight=0.7, kd_temperature=2.0, freeze_bn=True),
}


def fold_teachers(samples, feats, split, folds: int, seed: int):
    """Per fold: the teacher's log-probabilities for every image (path -> row) and its fold accuracy."""
    from animalclf.data import folds as cv
    from animalclf.train.probe import fit_linear

    row = {path: i for i, (path, _) in enumerate(samples)}
    y = torch.tensor([label for _, label in samples])
    out, accs = [], []
    for fold in cv.fold_splits(split, folds, seed):
        train = torch.tensor([row[p] for p, _ in fold.train])
        val = torch.tensor([row[p] for p, _ in fold.val])
        w, b = fit_linear(feats[train], y[train], len(split.classes))
        logp = (feats @ w.T + b).log_softmax(1)
        accs.append(float((logp[val].argmax(1) == y[val]).float().mean()))
        out.append({path: logp[row[path]].tolist() for path, _ in samples})
    return out, accs


def cost_table(names) -> None:
    from animalclf.evaluate.cost import measure
    from animalclf.models.predict import Predictor

    photos = [p.read_bytes() for p in sorted(DEFAULT_DATA.glob("*/*"))[::27][:10]]
    shapes = [("teacher", TEACHER), *[(n, {**BASE, **STUDENTS[n]}) for n in names]]
    keep = ("arch", "autocontrast", "rotation_pool")  # with the size, what sets a model's cost per photo
    with tempfile.TemporaryDirectory() as tmp:
        models = {name: Predictor.from_checkpoint(make_model(str(Path(tmp) / name), image_size=fields.get("image_size"),
                                                             **{k: v for k, v in fields.items() if k in keep}))
                  for name, fields in shapes}
        ms = measure(list(models.values()), photos)
    print(f"\nms per photo (Predictor, 1 thread, decode + preprocess + forward, {len(photos)} photos, alternating "
          f"rounds); {load_average()}")
    print("| model | ms per photo | share of the teacher's |\n|---|---|---|")
    for name, value in zip(models, ms):
        print(f"| {name} | {value:.1f} | {value / ms[0]:.2f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--seeds", default="42", help="fold and init seeds (default: 42)")
    p.add_argument("--students", default="base,kd", help=f"comma list of {', '.join(STUDENTS)} (default: base,kd)")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--cost", action="store_true", help="also time each model per photo")
    p.add_argument("--no-train", action="store_true", help="only the cost table")
    args = p.parse_args()
    names = [n for n in args.students.split(",") if n]
    unknown = set(names) - set(STUDENTS)
    if unknown:
        raise SystemExit(f"unknown students {sorted(unknown)}: choose from {', '.join(STUDENTS)}")
    print(f"command: python bench/distill.py {' '.join(sys.argv[1:])}; {load_average()}", flush=True)
    if not args.no_train:
        train(args, names)
    if args.cost or args.no_train:
        torch.set_num_threads(1)
        cost_table(names)


def train(args, names) -> None:
    from features_cv import turned_features

    from animalclf.config import TrainConfig
    from animalclf.data.source import source_of
    from animalclf.train.run import run_training

    os.environ["ANIMALCLF_HOME"] = tempfile.mkdtemp(prefix="distill-bench-")
    split = source_of(TrainConfig(data=args.data)).split(0.2, 0)  # --groups auto
    samples = sorted([*split.train, *split.val])
    t0 = time.perf_counter()
    feats = turned_features(TEACHER["arch"], True, samples).mean(1)  # the rotation pool
    print(f"teacher features: {len(samples)} files ({split.group_count()} photos) x 4 turns in "
          f"{time.perf_counter() - t0:.0f}s; {load_average()}", flush=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    results: dict[str, list[float]] = {"teacher": []}
    with ray_head():
        for seed in seeds:
            targets, accs = fold_teachers(samples, feats, split, args.folds, seed)
            results["teacher"].append(statistics.mean(accs))
            print(f"teacher seed {seed}: grouped {args.folds}-fold CV acc {statistics.mean(accs):.4f} ± "
                  f"{statistics.pstdev(accs):.4f}", flush=True)
            for name in names:
                fields = {**BASE, **STUDENTS[name]}
                kd = "kd_weight" in fields
                cfg = TrainConfig(data=args.data, weights="imagenet", patience=0, seed=seed, cpus_per_worker=2, track=False,
                                  cv=args.folds, final="none", name=f"d-{name}-{seed}",
                                  teacher="fold-matched Lite2 probe" if kd else None, **fields)
                t1 = time.perf_counter()
                out = run_training(cfg, targets=targets if kd else None)
                hist = out.report["history"]
                last = hist[-1]
                results.setdefault(name, []).append(last["val_accuracy"])
                agree = f", teacher agreement {last['val_teacher_agreement']:.3f}" if "val_teacher_agreement" in last else ""
                means = " ".join(f"{h['val_accuracy']:.3f}" for h in hist)
                print(f"  {name} seed {seed}: last epoch {last['epoch']}: acc {last['val_accuracy']:.4f} ± "
                      f"{last['val_accuracy_std']:.4f}{agree} | per-epoch means {means} | "
                      f"{time.perf_counter() - t1:.0f}s; {load_average()}", flush=True)
    print(f"\n| model | {' | '.join(f'seed {s}' for s in seeds)} | mean | vs teacher (points) |")
    print("|---|" + "---|" * len(seeds) + "---|---|")
    for name, accs in results.items():
        gap = 100 * (statistics.mean(accs) - statistics.mean(results["teacher"]))
        print(f"| {name} | {' | '.join(f'{a:.4f}' for a in accs)} | {statistics.mean(accs):.4f} | {gap:+.1f} |")


if __name__ == "__main__":
    main()
