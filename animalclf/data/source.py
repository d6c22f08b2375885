"""One data source, chosen once: a local folder (:class:`animalclf.data.folder.LocalFolder`) or an
``s3://`` bucket (:class:`animalclf.data.bucket.Bucket`), behind one interface.

The driver calls ``open_source(...)`` then ``.split(val_ratio, seed)`` (one scan, one report) and
``.trainer_inputs(...)`` (what the ``TorchTrainer`` takes); each Ray Train worker calls
``open_source(...)`` again (cheap: no I/O) and asks it for its ``train_loader`` and
``val_loader``. Nothing else needs to know which kind it has.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Protocol, Sequence, Union, runtime_checkable

from animalclf.data import s3
from animalclf.data.bucket import Bucket
from animalclf.data.folder import LocalFolder
from animalclf.data.loaders import Shard
from animalclf.data.split import Split
from animalclf.errors import UserError
from animalclf.models.build import Preprocess

__all__ = ["DataSource", "EpochIterable", "open_source", "source_of", "LocalFolder", "Bucket", "Shard", "Split"]


@runtime_checkable
class EpochIterable(Protocol):
    """``(x, y)`` batches (or ``None``), one pass per ``iter``; ``set_epoch`` before each pass."""

    def set_epoch(self, epoch: int) -> None: ...

    def __iter__(self) -> Any: ...


@runtime_checkable
class DataSource(Protocol):
    """What a source of class folders gives the driver and the workers."""

    kind: str
    """``"folder"`` or ``"bucket"``, for messages and logs only."""

    def split(self, val_ratio: float, seed: int, groups: str = "auto") -> Split:
        """Scan once (skipped files named in one warning), then the seeded stratified split, or the
        explicit train/val roots (validation must have training's classes)."""

    def trainer_inputs(self, split: Split, pre: Preprocess, seed: int, num_workers: int) -> dict[str, Any]:
        """Keyword arguments for ``TorchTrainer`` (``datasets``, ``dataset_config``); ``{}`` if none."""

    def train_loader(self, split: Split, pre: Preprocess, shard: Shard, *, augment: str = "standard",
                     targets: Optional[Mapping[str, Sequence[float]]] = None) -> EpochIterable:
        """This worker's training batches, augmented, in a seeded order that changes per epoch; with
        ``targets`` (a teacher's log-probabilities by path) each batch is ``(x, y, teacher)``."""

    def val_loader(self, split: Split, pre: Preprocess, shard: Shard, *,
                   targets: Optional[Mapping[str, Sequence[float]]] = None) -> EpochIterable:
        """This worker's validation batches; over all ranks, every validation image exactly once."""

    def probe_loader(self, split: Split, pre: Preprocess, shard: Shard) -> EpochIterable:
        """This worker's share of the training images for the linear probe (``--head-init probe``): a
        local folder gives each image once over all ranks, unaugmented; a bucket one augmented pass
        over the worker's training shard (Ray Data's equal split may leave out a few images)."""


def open_source(data: Optional[str] = None, train_dir: Optional[str] = None,
                val_dir: Optional[str] = None) -> Union[LocalFolder, Bucket]:
    """The source for ``--data`` or ``--train-dir``/``--val-dir``: a bucket for ``s3://`` URIs,
    else a local folder. Only reads the names; nothing is listed or opened."""
    if data:
        return Bucket(data) if s3.is_remote(data) else LocalFolder(data)
    if not (train_dir and val_dir):
        raise UserError("No data given: pass --data DIR (class folders) or both --train-dir and --val-dir.")
    if s3.is_remote(train_dir) != s3.is_remote(val_dir):
        raise UserError("--train-dir and --val-dir must both be local folders or both s3:// URIs.")
    kind = Bucket if s3.is_remote(train_dir) else LocalFolder
    return kind(None, train_dir, val_dir)


def source_of(cfg: Any) -> Union[LocalFolder, Bucket]:
    """:func:`open_source` for anything with ``data``, ``train_dir`` and ``val_dir`` (a ``TrainConfig``)."""
    return open_source(cfg.data, cfg.train_dir, cfg.val_dir)
