"""The rules every data source shares: what a sample is, which names are classes, how a dataset is
split, and how a scan reports what it skipped. No torch, no I/O: a local folder
(:mod:`animalclf.data.folder`) and a bucket (:mod:`animalclf.data.bucket`) both build on this.
"""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Mapping, Optional, Sequence

from animalclf.config import IMAGE_EXTENSIONS  # one list, torch-free, also read by the UI
from animalclf.errors import UserError

log = logging.getLogger(__name__)

__all__ = ["IMAGE_EXTENSIONS", "Sample", "Split", "Scan", "class_names", "report_scan", "stratified_split", "ClassFolders", "group_label",
           "sample_groups", "straddling"]

Sample = tuple[str, int]
"""``(absolute path or s3:// URI, label)``; the label indexes :attr:`Split.classes`."""

Scan = Callable[[str, Optional[Sequence[str]]], tuple[list[str], list[Sample]]]
"""``scan(root, classes) -> (classes, samples)``: one source kind's reading of a root."""


@dataclass
class Split:
    """Class names plus the train and validation samples; ``groups`` maps a sample's path to its
    group of copies (:mod:`animalclf.data.groups`; a path not in it is a group of its own), which
    CV folds keep together as the split did."""

    classes: list[str]
    train: list[Sample]
    val: list[Sample]
    groups: dict[str, str] = field(default_factory=dict)

    def group_count(self) -> int:
        """How many photos (groups of copies) the split's images are."""
        paths = {p for p, _ in self.train} | {p for p, _ in self.val}
        return len({self.groups.get(p, p) for p in paths})


def sample_groups(samples: Sequence[Sample], groups: Optional[Mapping[str, str]] = None) -> list[list[Sample]]:
    """``samples`` as groups of copies, each sorted, in sorted order; without ``groups`` every
    sample alone."""
    by_id: dict[str, list[Sample]] = defaultdict(list)
    for s in sorted(set(samples)):
        by_id[(groups or {}).get(s[0], s[0])].append(s)
    return sorted(by_id.values())


def group_label(group: Sequence[Sample]) -> int:
    """The label a group of copies is stratified under: its most common label (the smallest on a tie)."""
    counts: dict[int, int] = defaultdict(int)
    for _, y in group:
        counts[y] += 1
    return min(counts, key=lambda y: (-counts[y], y))


def straddling(train: Sequence[Sample], val: Sequence[Sample], groups: Mapping[str, str]) -> int:
    """How many validation samples have a copy (a member of their group) in ``train``."""
    seen = {groups.get(p, p) for p, _ in train}
    return sum(1 for p, _ in val if groups.get(p, p) in seen)


def class_names(where: str, found: Sequence[str], classes: Optional[Sequence[str]] = None) -> list[str]:
    """The class list of a dataset root: ``found`` folder names sorted, or ``classes`` when given
    (they must match); at least 2."""
    found = sorted(found)
    names = list(classes) if classes is not None else found
    if classes is not None and sorted(names) != found:
        raise UserError(f"Class folders in {where!r} ({', '.join(found)}) differ from training's ({', '.join(names)}).")
    if len(names) < 2:
        raise UserError(f"{where!r} has {len(names)} class folder(s): need at least 2, one sub-folder per class.")
    return names


def report_scan(where: str, empty: Sequence[str], bad: Sequence[str], usable: str = "readable image",
                skipped: str = "unreadable or non-image file(s)") -> None:
    """Fail on class folders without a usable image; name every skipped file in one warning."""
    if empty:
        raise UserError(f"Class folder(s) with no {usable} in {where!r}: {', '.join(empty)}; add images or remove the folder.")
    if bad:
        log.warning("Skipping %d %s in %s: %s", len(bad), skipped, where, "; ".join(bad))


def stratified_split(samples: Sequence[Sample], val_ratio: float, seed: int,
                     groups: Optional[Mapping[str, str]] = None) -> tuple[list[Sample], list[Sample]]:
    """Per class, shuffle with ``seed`` and put ``round(n * val_ratio)`` images (at least 1, at most
    ``n - 1``) in validation. With ``groups`` whole groups of copies move: a class's groups are
    shuffled and taken until the next would overshoot the target more than stopping short does
    (at least one group each side). The input order does not matter; without groups (or with
    every sample alone) the result is the per-file split."""
    by_class: dict[int, list[list[Sample]]] = defaultdict(list)
    for g in sample_groups(samples, groups):
        by_class[group_label(g)].append(g)
    rng = random.Random(seed)
    train: list[Sample] = []
    val: list[Sample] = []
    for label in sorted(by_class):
        items = by_class[label]
        n = sum(map(len, items))
        if len(items) < 2:
            why = f"{n} image" if n < 2 else f"{n} images, all copies of one photo"
            raise UserError(f"Class {label} has {why}: need at least 2 {'photos' if n >= 2 else 'images'} to split; add "
                            f"images or pass --val-dir{' (or --groups none)' if n >= 2 else ''}.")
        rng.shuffle(items)
        target, taken, cut = min(n - 1, max(1, round(n * val_ratio))), 0, 0
        for g in items[:-1]:  # at least one group stays in training
            if taken and taken + len(g) - target > target - taken:
                break  # overshooting by this group is worse than stopping short
            taken, cut = taken + len(g), cut + 1
        val.extend(s for g in items[:cut] for s in g)
        train.extend(s for g in items[cut:] for s in g)
    return train, val


@dataclass(frozen=True)
class ClassFolders:
    """Where a source's class folders are: ``data`` (split by ratio), or ``train_dir`` and
    ``val_dir``. A source kind subclasses this and names its ``scan``."""

    data: Optional[str] = None
    train_dir: Optional[str] = None
    val_dir: Optional[str] = None
    kind: ClassVar[str] = ""
    scan: ClassVar[Scan]
    read: ClassVar[Callable[[str], bytes]]  # a sample's bytes (content grouping)

    @property
    def train_root(self) -> Optional[str]:
        return self.data or self.train_dir

    @property
    def val_root(self) -> Optional[str]:
        return self.data or self.val_dir

    def split(self, val_ratio: float, seed: int, groups: str = "auto") -> Split:
        """``data`` scanned and split by ratio, or ``train_dir`` and ``val_dir`` scanned
        (validation must have training's classes). Each root is scanned, and reported, once.
        ``groups`` (:data:`animalclf.data.groups.GROUP_MODES`) keeps copies of one photo on one
        side; the grouping found is logged in one line."""
        from animalclf.data.groups import find_groups

        scan = type(self).scan
        if self.data:
            classes, samples = scan(self.data, None)
            group_of, stats = find_groups(samples, groups, read=type(self).read)
            log.info("Groups of copies in %s: %s", self.data, stats.line())
            train, val = stratified_split(samples, val_ratio, seed, group_of)
            return Split(classes, train, val, _compact(group_of))
        classes, train = scan(self.train_dir, None)
        _, val = scan(self.val_dir, classes)
        group_of, stats = find_groups(train + val, groups, read=type(self).read)
        log.info("Groups of copies in %s + %s: %s", self.train_dir, self.val_dir, stats.line())
        crossing = straddling(train, val, group_of)
        if crossing:
            log.warning("%d validation image(s) in %s have a copy in %s (the folders were split per file): the "
                        "validation figures are flattered; CV folds keep copies together.", crossing, self.val_dir,
                        self.train_dir)
        return Split(classes, train, val, _compact(group_of))


def _compact(group_of: Mapping[str, str]) -> dict[str, str]:
    """Only the paths grouped with another (a path alone is its own group): what travels to workers."""
    sizes: dict[str, int] = defaultdict(int)
    for g in group_of.values():
        sizes[g] += 1
    return {p: g for p, g in group_of.items() if sizes[g] > 1}
