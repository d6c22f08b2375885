"""A local folder of class folders as a data source: the scan (every file decoded once, unreadable
ones named in one warning), the seeded split, and the per-worker PyTorch loaders.

A dataset is a list of ``(absolute path, label)`` samples; splitting only partitions that list.
Pick a source with :func:`animalclf.data.source.open_source`; the bucket counterpart is
:class:`animalclf.data.bucket.Bucket`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from torch.utils.data.distributed import DistributedSampler

from animalclf.data.loaders import EpochLoader, ImageList, Shard, ShardSampler, make_loader
from animalclf.data.split import IMAGE_EXTENSIONS, ClassFolders, Sample, Split, class_names, report_scan
from animalclf.data.transforms import eval_transform, train_transform
from animalclf.errors import UserError
from animalclf.models.build import Preprocess

log = logging.getLogger(__name__)

__all__ = ["LocalFolder", "scan_folder"]


def _is_readable(path: Path) -> Optional[str]:
    """``None`` when ``path`` decodes as an image, else the reason it does not."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.draft("RGB", (64, 64))  # JPEG: decode at reduced scale, still reads every byte
            im.load()
        return None
    except Exception as e:  # PIL raises many types for bad files
        return f"{type(e).__name__}: {e}"


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


@dataclass(frozen=True)
class LocalFolder(ClassFolders):
    """Class folders on a local (or shared) filesystem; ``split`` decodes every file once (absolute
    paths). Every worker reads the files itself, so on a cluster they must be at the same path on
    every node."""

    kind = "folder"
    scan = staticmethod(scan_folder)
    read = staticmethod(lambda path: Path(path).read_bytes())

    def trainer_inputs(self, split: Split, pre: Preprocess, seed: int, num_workers: int) -> dict[str, Any]:
        """Nothing for the ``TorchTrainer``: workers load the files themselves."""
        return {}

    def train_loader(self, split: Split, pre: Preprocess, shard: Shard, *, augment: str = "standard",
                     targets: Optional[Mapping[str, Sequence[float]]] = None) -> EpochLoader:
        """This rank's share of the training images, augmented (``augment``: see
        :func:`train_transform`), reshuffled by ``set_epoch``; with ``targets`` (a teacher's
        log-probabilities by path) each batch carries them third."""
        dataset = ImageList(split.train, train_transform(pre, augment), targets)
        sampler = DistributedSampler(dataset, num_replicas=shard.world, rank=shard.rank, shuffle=True, seed=shard.seed)
        loader = make_loader(dataset, shard.batch_size, sampler=sampler, workers=shard.workers,
                             seed=shard.seed + shard.rank, pin_memory=shard.pin_memory)
        return EpochLoader(loader, sampler)

    def val_loader(self, split: Split, pre: Preprocess, shard: Shard, *,
                   targets: Optional[Mapping[str, Sequence[float]]] = None) -> EpochLoader:
        """Validation images ``rank::world``: over all ranks, each image exactly once (with
        ``targets``, the teacher's rows third, as for training)."""
        return self._eval_loader(split.val, pre, shard, targets)

    def probe_loader(self, split: Split, pre: Preprocess, shard: Shard) -> EpochLoader:
        """Training images ``rank::world`` with the eval transform (no augmentation), each once."""
        return self._eval_loader(split.train, pre, shard)

    @staticmethod
    def _eval_loader(samples: Sequence[Sample], pre: Preprocess, shard: Shard,
                     targets: Optional[Mapping[str, Sequence[float]]] = None) -> EpochLoader:
        dataset = ImageList(samples, eval_transform(pre), targets)
        return EpochLoader(make_loader(dataset, shard.batch_size, sampler=ShardSampler(len(dataset), shard.rank, shard.world),
                                       workers=shard.workers, pin_memory=shard.pin_memory))

