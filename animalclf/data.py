"""Data: class folders, a seeded stratified split without copying, transforms, loaders.

A dataset is a list of ``(path, label)`` samples; splitting only partitions that list.
"""

from __future__ import annotations

import io
import logging
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from PIL import Image, ImageOps
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision import transforms as T

from animalclf.config import IMAGE_EXTENSIONS
from animalclf.errors import UserError
from animalclf.model import Preprocess

log = logging.getLogger(__name__)

__all__ = [
    "IMAGE_EXTENSIONS", "Split", "ImageList", "scan_folder", "stratified_split", "load_split",
    "eval_transform", "train_transform", "make_loader", "ShardSampler", "to_rgb", "open_image",
]

Sample = tuple[str, int]


@dataclass
class Split:
    """Class names plus the train and validation samples."""

    classes: list[str]
    train: list[Sample]
    val: list[Sample]


def _is_readable(path: Path) -> Optional[str]:
    """``None`` when ``path`` decodes as an image, else the reason it does not."""
    try:
        with Image.open(path) as im:
            im.draft("RGB", (64, 64))  # JPEG: decode at reduced scale, still reads every byte
            im.load()
        return None
    except Exception as e:  # PIL raises many types for bad files
        return f"{type(e).__name__}: {e}"


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


def scan_folder(root: str | Path, classes: Optional[Sequence[str]] = None) -> tuple[list[str], list[Sample]]:
    """Read a folder of class folders; skip (and name, in one warning) files that are not images.

    ``classes`` fixes the class list (for a validation folder that must match training).
    """
    if not Path(root).is_dir():
        raise UserError(f"Data folder {str(root)!r} does not exist: pass --data DIR with one sub-folder per class.")
    root = Path(root).resolve()  # absolute sample paths: Ray workers and Tune trials run in other directories
    found = [p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    names = class_names(str(root), found, classes)
    samples: list[Sample] = []
    bad: list[str] = []
    empty: list[str] = []
    for label, name in enumerate(names):
        files = sorted(p for p in (root / name).rglob("*") if p.is_file() and not p.name.startswith("."))
        good = 0
        for f in files:
            reason = _is_readable(f) if f.suffix.lower() in IMAGE_EXTENSIONS else "not an image extension"
            if reason is None:
                samples.append((str(f), label))
                good += 1
            else:
                bad.append(f"{f.relative_to(root)} ({reason})")
        if good == 0:
            empty.append(name)
    report_scan(str(root), empty, bad)
    return names, samples


def report_scan(where: str, empty: Sequence[str], bad: Sequence[str], usable: str = "readable image",
                skipped: str = "unreadable or non-image file(s)") -> None:
    """Fail on class folders without a usable image; name every skipped file in one warning."""
    if empty:
        raise UserError(f"Class folder(s) with no {usable} in {where!r}: {', '.join(empty)}; add images or remove the folder.")
    if bad:
        log.warning("Skipping %d %s in %s: %s", len(bad), skipped, where, "; ".join(bad))


def stratified_split(samples: Sequence[Sample], val_ratio: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Per class, shuffle with ``seed`` and put ``round(n * val_ratio)`` (at least 1) in validation."""
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


def load_split(data: Optional[str], train_dir: Optional[str], val_dir: Optional[str], val_ratio: float, seed: int) -> Split:
    """The split a config describes: ``data`` split by ratio, or explicit train/val folders."""
    if data:
        classes, samples = scan_folder(data)
        train, val = stratified_split(samples, val_ratio, seed)
    else:
        classes, train = scan_folder(train_dir)
        _, val = scan_folder(val_dir, classes)
    return Split(classes, train, val)


def to_rgb(im: Image.Image) -> Image.Image:
    """Upright RGB from any mode: EXIF rotation, grayscale, 16-bit, palette, RGBA, CMYK."""
    im = ImageOps.exif_transpose(im)
    if im.mode.startswith("I"):  # 16/32-bit grayscale: scale to 8 bits rather than clip
        im = im.convert("I")
        scale = 255.0 / 65535.0 if im.getextrema()[1] > 255 else 1.0
        im = im.point(lambda v: v * scale).convert("L")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        bg = Image.new("RGB", im.size, (255, 255, 255))
        bg.paste(im, mask=im.getchannel("A"))
        return bg
    return im.convert("RGB")


_INTERP = {"bicubic": T.InterpolationMode.BICUBIC, "bilinear": T.InterpolationMode.BILINEAR}


def eval_transform(p: Preprocess) -> Callable:
    """Resize, centre-crop, to tensor, normalise: the weights' own eval preprocessing."""
    return T.Compose([
        T.Resize(p.resize_size, interpolation=_INTERP[p.interpolation], antialias=True),
        T.CenterCrop(p.crop_size),
        T.ToTensor(),
        T.Normalize(p.mean, p.std),
    ])


def train_transform(p: Preprocess) -> Callable:
    """Random resized crop, horizontal flip and mild colour jitter, then the eval normalisation."""
    return T.Compose([
        T.RandomResizedCrop(p.crop_size, scale=(0.5, 1.0), interpolation=_INTERP[p.interpolation], antialias=True),
        T.RandomHorizontalFlip(),
        T.ColorJitter(0.2, 0.2, 0.2),
        T.ToTensor(),
        T.Normalize(p.mean, p.std),
    ])


def open_image(path: str | Path) -> Image.Image:
    """A PIL image from a local path or an ``s3://`` URI (read whole, then decoded)."""
    if str(path).startswith("s3://"):
        from animalclf.remote_data import read_bytes

        return Image.open(io.BytesIO(read_bytes(str(path))))
    return Image.open(path)


class ImageList(Dataset):
    """``(path, label)`` samples as tensors; a file that fails to decode is skipped by the collate."""

    def __init__(self, samples: Sequence[Sample], transform: Callable):
        self.samples = list(samples)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        try:
            with open_image(path) as im:
                x = self.transform(to_rgb(im))
        except Exception as e:  # a file changed or broke after the scan: skip, never crash the epoch
            log.warning("Skipping unreadable image %s: %s", path, e)
            return None
        return x, label


def _collate(batch):
    batch = [b for b in batch if b is not None]
    if not batch:
        return None
    return torch.stack([b[0] for b in batch]), torch.tensor([b[1] for b in batch])


class ShardSampler(Sampler[int]):
    """Indices ``rank::world``: every sample exactly once over all ranks (no padding)."""

    def __init__(self, n: int, rank: int = 0, world: int = 1):
        self.indices = list(range(rank, n, world))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def make_loader(dataset: Dataset, batch_size: int, *, sampler: Optional[Sampler] = None, shuffle: bool = False,
                workers: int = 0, seed: int = 0, pin_memory: bool = False) -> DataLoader:
    """A DataLoader that drops unreadable samples and is reproducible by ``seed``."""
    g = torch.Generator()
    g.manual_seed(seed)
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, shuffle=shuffle if sampler is None else False,
        num_workers=workers, collate_fn=_collate, generator=g, pin_memory=pin_memory,
        persistent_workers=workers > 0,
    )
