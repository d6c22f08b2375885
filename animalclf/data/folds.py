"""Cross-validation: stratified, seeded folds over a data source's samples, and the aggregation of
per-fold epoch metrics into one score per epoch (mean, with the standard deviation beside it).

The worker (:mod:`animalclf.train.worker`) trains the K fold models in lockstep and reports
:func:`aggregate` of their metrics once per epoch, so Ray Tune's ASHA decides on epochs as it does
without CV. The final model (:mod:`animalclf.evaluate.out_of_fold`, ``training.publish_cv``) takes the epoch
count of the checkpoint with the best fold mean.
No torch, no Ray, no I/O here.
"""

from __future__ import annotations

import random
import statistics
from collections import defaultdict
from typing import Any, Mapping, Optional, Sequence

from animalclf.data.split import Sample, Split, group_label, sample_groups
from animalclf.errors import UserError

__all__ = ["stratified_folds", "fold_splits", "all_samples", "refit_split", "aggregate", "FOLD_STD"]

FOLD_STD = "_std"
"""Suffix of a metric's standard deviation over folds (``val_accuracy_std``)."""


def stratified_folds(samples: Sequence[Sample], k: int, seed: int,
                     groups: Optional[Mapping[str, str]] = None) -> list[list[Sample]]:
    """``k`` disjoint validation parts that together cover ``samples``, each holding every class's
    share (±1 image per file; ±1 group with ``groups``, whose copies always share a part: stratified
    group k-fold). Per class, groups are shuffled with ``seed``, the larger placed first, each into
    the part that has the fewest of that class (then the fewest images). Input order does not
    matter; every class needs at least ``k`` groups."""
    if k < 2:
        raise UserError(f"--cv {k}: cross-validation needs at least 2 folds (or 0 for a single split).")
    by_class: dict[int, list[list[Sample]]] = defaultdict(list)
    for g in sample_groups(samples, groups):
        by_class[group_label(g)].append(g)
    short = {label: len(items) for label, items in by_class.items() if len(items) < k}
    if short:
        what = "photos (groups of copies)" if groups else "images"
        raise UserError(f"--cv {k} needs at least {k} {what} per class; class label(s) {short} have fewer: "
                        f"lower --cv or add images.")
    rng = random.Random(seed)
    folds: list[list[Sample]] = [[] for _ in range(k)]
    offset = 0
    for label in sorted(by_class):
        items = by_class[label]
        rng.shuffle(items)
        items.sort(key=len, reverse=True)  # stable: equal sizes keep the shuffled order
        mine = [0] * k
        for g in items:
            i = min(range(k), key=lambda j: (mine[j], len(folds[j]), (j - offset) % k))
            folds[i].extend(g)
            mine[i] += len(g)
        offset += len(items)  # classes whose count is not a multiple of k fill different folds first
    return folds


def all_samples(split: Split) -> list[Sample]:
    """Every sample of a split (train + validation, deduplicated, sorted)."""
    return sorted(set(split.train) | set(split.val))


def fold_splits(split: Split, k: int, seed: int) -> list[Split]:
    """The ``k`` CV splits of all of ``split``'s samples: fold ``i`` validates on part ``i`` and
    trains on the rest."""
    parts = stratified_folds(all_samples(split), k, seed, split.groups)
    return [Split(list(split.classes), [s for j, p in enumerate(parts) if j != i for s in p], list(parts[i]), split.groups)
            for i in range(k)]


def refit_split(split: Split) -> Split:
    """What the final model trains on after CV: every sample. Its ``val`` stays the original
    validation split, which the final model has seen: the gate compares there with the out-of-fold
    predictions (:mod:`animalclf.evaluate.out_of_fold`), never the final model's own."""
    return Split(list(split.classes), all_samples(split), list(split.val), split.groups)


def aggregate(per_fold: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One epoch's metrics over folds: the mean of every number; for ``val_*`` and ``train_*`` scores
    also ``<name>_std`` (population std over folds) and ``<name>_fold<i>`` for each fold; image
    counts and seconds are summed (the work the epoch did)."""
    if not per_fold:
        raise ValueError("aggregate() needs at least one fold's metrics")
    out: dict[str, Any] = {"folds": len(per_fold)}
    keys = [k for k, v in per_fold[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    for key in keys:
        values = [float(m[key]) for m in per_fold]
        if key.endswith(("_images", "_seconds")):
            out[key] = sum(values)
            continue
        out[key] = statistics.fmean(values)
        if key.startswith(("val_", "train_")) and key.endswith(("_accuracy", "_f1", "_loss")):
            out[key + FOLD_STD] = statistics.pstdev(values)
            if key.startswith("val_"):
                out.update({f"{key}_fold{i}": v for i, v in enumerate(values)})
    return out
