"""The rules every data source shares: what a sample is, which names are classes, how a dataset is
split, and how a scan reports what it skipped. No torch, no I/O: a local folder
(:mod:`animalclf.data.folder`) and a bucket (:mod:`animalclf.data.bucket`) both build on this.
"""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, ClassVar, Optional, Sequence

from animalclf.config import IMAGE_EXTENSIONS  # one list, torch-free, also read by the UI
from animalclf.errors import UserError

log = logging.getLogger(__name__)

__all__ = ["IMAGE_EXTENSIONS", "Sample", "Split", "Scan", "class_names", "report_scan", "stratified_split", "ClassFolders"]

Sample = tuple[str, int]
"""``(absolute path or s3:// URI, label)``; the label indexes :attr:`Split.classes`."""

Scan = Callable[[str, Optional[Sequence[str]]], tuple[list[str], list[Sample]]]
"""``scan(root, classes) -> (classes, samples)``: one source kind's reading of a root."""


@dataclass
class Split:
    """Class names plus the train and validation samples."""

    classes: list[str]
    train: list[Sample]
    val: list[Sample]


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


def stratified_split(samples: Sequence[Sample], val_ratio: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Per class, shuffle with ``seed`` and put ``round(n * val_ratio)`` (at least 1, at most
    ``n - 1``) in validation. The input order does not matter."""
    by_class: dict[int, list[Sample]] = defaultdict(list)
    for s in sorted(samples):
        by_class[s[1]].append(s)
    rng = random.Random(seed)
    train: list[Sample] = []
    val: list[Sample] = []
    for label in sorted(by_class):
        items = by_class[label]
        if len(items) < 2:
            raise UserError(f"Class {label} has {len(items)} image: need at least 2 to split; add images or pass --val-dir.")
        rng.shuffle(items)
        n_val = min(len(items) - 1, max(1, round(len(items) * val_ratio)))
        val.extend(items[:n_val])
        train.extend(items[n_val:])
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

    @property
    def train_root(self) -> Optional[str]:
        return self.data or self.train_dir

    @property
    def val_root(self) -> Optional[str]:
        return self.data or self.val_dir

    def split(self, val_ratio: float, seed: int) -> Split:
        """``data`` scanned and split by ratio, or ``train_dir`` and ``val_dir`` scanned
        (validation must have training's classes). Each root is scanned, and reported, once."""
        scan = type(self).scan
        if self.data:
            classes, samples = scan(self.data, None)
            train, val = stratified_split(samples, val_ratio, seed)
            return Split(classes, train, val)
        classes, train = scan(self.train_dir, None)
        _, val = scan(self.val_dir, classes)
        return Split(classes, train, val)
