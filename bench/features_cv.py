"""Which input invariances help the linear probe: 5-fold CV of the probe on frozen features, outside
the pipeline (seconds per variant once the features are extracted), over several seeds.

    python bench/features_cv.py --data ../shared/data/animals15 [--seeds 42,1,2]

For each backbone (Lite0 at 224 px, Lite2 at 260 px: the weights' own eval transforms) and with or
without ``--autocontrast``, the pooled features of every photo turned 0/90/180/270 degrees are
extracted once; then, per seed, stratified 5-fold CV of ``animalclf.train.probe.fit_linear`` (the probe
the pipeline fits) on the upright features ("plain") and on their mean over the four turns ("rotation
pool", what ``--rotation-pool`` computes). Every figure twice, side by side: on per-file folds
(copies of one photo may sit in different folds: what was measured before) and on grouped folds
(``--groups auto``: a photo and its edited copies always in one fold), so the leak's worth shows.
``bench/quality.py --recipes lite2`` measures the chosen recipe through the real pipeline.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

VARIANTS = [("efficientnet_lite0", False), ("efficientnet_lite0", True), ("efficientnet_lite2", False),
            ("efficientnet_lite2", True)]


def turned_features(arch: str, autocontrast: bool, samples: list, batch: int = 16) -> torch.Tensor:
    """``N x 4 x D`` pooled features of each photo turned k quarter turns (k = 0..3): the library's
    eval loader (each photo decoded once) and the probe's own ``extract_features``."""
    from animalclf.data.loaders import ImageList, make_loader
    from animalclf.data.transforms import eval_transform
    from animalclf.models.build import build_model, preprocess_for
    from animalclf.train.probe import extract_features

    model = build_model(arch, 2, 0, "imagenet")
    batches = list(make_loader(ImageList(samples, eval_transform(preprocess_for(arch, autocontrast=autocontrast))), batch))
    cpu = torch.device("cpu")
    turns = [extract_features(model, [(torch.rot90(x, k, (2, 3)), y) for x, y in batches], cpu, channels_last=False)[0]
             for k in range(4)]
    return torch.stack(turns, 1)


def cv_accuracy(x: torch.Tensor, samples: list, seed: int, folds: int = 5, groups=None) -> float:
    """CV accuracy of the probe on features ``x`` (row i = ``samples[i]``), on the folds ``--cv``
    uses for ``seed`` (``animalclf.data.folds.stratified_folds``; grouped with ``groups``)."""
    from animalclf.data.folds import stratified_folds
    from animalclf.train.probe import fit_linear

    y = torch.tensor([label for _, label in samples])
    row = {s: i for i, s in enumerate(samples)}
    right = 0
    for part in stratified_folds(samples, folds, seed, groups):
        val = torch.tensor(sorted(row[s] for s in part))
        train = torch.ones(len(y), dtype=torch.bool)
        train[val] = False
        w, b = fit_linear(x[train], y[train], int(y.max()) + 1)
        right += int(((x[val] @ w.T + b).argmax(1) == y[val]).sum())
    return right / len(y)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="folder of class folders")
    p.add_argument("--seeds", default="42,1,2", help="fold seeds (default: 42,1,2)")
    args = p.parse_args()
    from animalclf.config import TrainConfig
    from animalclf.data.source import source_of

    split = source_of(TrainConfig(data=args.data)).split(0.2, 0)  # --groups auto
    samples = sorted([*split.train, *split.val])
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"command: python bench/features_cv.py --data {args.data} --seeds {args.seeds}; {len(samples)} files, "
          f"{split.group_count()} photos; load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}", flush=True)
    print("| backbone | autocontrast | features | per-file folds, mean | " + " | ".join(f"grouped seed {s}" for s in seeds)
          + " | grouped mean | leak (points) | extraction s |")
    print("|---|---|---|---|" + "---|" * len(seeds) + "---|---|---|")
    for arch, autocontrast in VARIANTS:
        t0 = time.perf_counter()
        feats = turned_features(arch, autocontrast, samples)
        took = time.perf_counter() - t0
        for name, x in (("plain", feats[:, 0]), ("rotation pool", feats.mean(1))):
            per_file = statistics.mean(cv_accuracy(x, samples, s) for s in seeds)
            accs = [cv_accuracy(x, samples, s, groups=split.groups) for s in seeds]
            grouped = statistics.mean(accs)
            print(f"| {arch} | {'yes' if autocontrast else 'no'} | {name} | {per_file:.4f} | "
                  + " | ".join(f"{a:.4f}" for a in accs)
                  + f" | {grouped:.4f} | {100 * (per_file - grouped):.1f} | {took:.0f} |", flush=True)
    print(f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
