"""PyTorch loading of ``(path, label)`` samples: a dataset that skips files which stopped
decoding, a rank sampler that covers every sample once, a seeded DataLoader, and the epoch-aware
wrapper the worker loop iterates. Paths may be local files or ``s3://`` URIs."""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from animalclf.data import s3
from animalclf.data.split import Sample
from animalclf.data.transforms import to_rgb

log = logging.getLogger(__name__)

__all__ = ["open_image", "ImageList", "Shard", "ShardSampler", "make_loader", "EpochLoader"]


@dataclass(frozen=True)
class Shard:
    """Which part of the data one Ray Train worker reads, and how: its ``rank`` among ``world``
    workers, its batch size, the shuffle seed, loader processes and pinned memory."""

    batch_size: int
    rank: int = 0
    world: int = 1
    seed: int = 0
    workers: int = 0
    pin_memory: bool = False


def open_image(path: str | Path) -> Image.Image:
    """A PIL image from a local path or an ``s3://`` URI (read whole, then decoded)."""
    if s3.is_remote(str(path)):
        return Image.open(io.BytesIO(s3.read_bytes(str(path))))
    return Image.open(path)


class ImageList(Dataset):
    """``(path, label)`` samples as tensors; a file that fails to decode is skipped by the collate.
    With ``targets`` (path -> a teacher's log-probabilities, :mod:`animalclf.train.distill`) each
    item carries its sample's row as a third element."""

    def __init__(self, samples: Sequence[Sample], transform: Callable, targets: Optional[Mapping[str, Sequence[float]]] = None):
        self.samples = list(samples)
        self.transform = transform
        self.targets = targets

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
        if self.targets is not None:
            return x, label, torch.as_tensor(self.targets[path], dtype=torch.float32)
        return x, label


def _collate(batch):
    batch = [b for b in batch if b is not None]
    if not batch:
        return None
    out = (torch.stack([b[0] for b in batch]), torch.tensor([b[1] for b in batch]))
    return out + (torch.stack([b[2] for b in batch]),) if len(batch[0]) > 2 else out


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


class EpochLoader:
    """What the worker loop iterates, whatever the source: ``(x, y)`` batches (or ``None`` for a
    batch whose every image failed), one pass per ``iter``; ``set_epoch(n)`` before each pass
    reseeds the order where the underlying sampler has one (``DistributedSampler``)."""

    def __init__(self, batches: Any, sampler: Any = None):
        self.batches = batches
        self.sampler = sampler

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.batches)
