"""An ``s3://`` bucket of class folders as a data source: list it, split it like a local folder,
and stream the images to the training workers through Ray Data.

Listing reads object metadata only (names and sizes, no image bytes), so a bucket of any size is
split on the driver in seconds; the same seeded :func:`animalclf.data.split.stratified_split` runs on
``(uri, label)`` samples, so the same images give the same split as a local copy of the folder.
Ray Data tasks on CPU then read the bytes and decode, resize and normalise them with the same
transforms as local training; an object that does not decode is dropped (and logged), never fatal.
Credentials and endpoint: see :mod:`animalclf.data.s3`.
"""

from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Optional, Sequence

import numpy as np
from PIL import Image

from animalclf.data import s3
from animalclf.data.loaders import EpochLoader, Shard
from animalclf.data.split import IMAGE_EXTENSIONS, ClassFolders, Sample, Split, class_names, report_scan
from animalclf.data.transforms import eval_transform, to_rgb, train_transform
from animalclf.errors import UserError
from animalclf.models.build import Preprocess

log = logging.getLogger(__name__)

__all__ = ["Bucket", "scan_bucket", "image_dataset", "ShardBatches", "val_dataset_name"]


def scan_bucket(root: str, classes: Optional[Sequence[str]] = None) -> tuple[list[str], list[Sample]]:
    """The ``s3://`` counterpart of :func:`animalclf.data.folder.scan_folder`, from the listing alone.

    Class folders are the names directly below ``root`` (sorted, dot-names skipped); every object
    below one with an image extension and a non-zero size is a sample ``(s3://..., label)``. Other
    objects are skipped and counted in one warning. Bytes that do not decode are found later, when
    Ray Data reads them (they are dropped there), because checking them here would mean
    downloading the whole dataset on the driver.
    """
    from pyarrow import fs

    if not s3.is_remote(root) or not s3.strip(root):
        raise UserError(f"{root!r} is not an s3:// URI: pass --data s3://BUCKET/PREFIX with one sub-folder per class.")
    base = s3.strip(root)
    try:
        infos = s3.s3_filesystem().get_file_info(fs.FileSelector(base, recursive=True, allow_not_found=True))
    except OSError as e:
        raise UserError(f"Cannot list {root!r}: {e}. Check the bucket name, the AWS credentials and "
                        f"AWS_ENDPOINT_URL.") from None
    found: set[str] = set()
    files: dict[str, list[Any]] = {}
    for info in infos:
        parts = info.path[len(base) + 1:].split("/")
        if parts[0].startswith(".") or (len(parts) == 1 and info.type != fs.FileType.Directory):
            continue  # hidden folder, or an object directly under the prefix: not a class
        found.add(parts[0])
        if info.type == fs.FileType.File:
            files.setdefault(parts[0], []).append(info)
    if not infos:
        raise UserError(f"No objects under {root!r}: pass --data s3://BUCKET/PREFIX with one sub-folder per class.")
    names = class_names(root, found, classes)
    samples: list[Sample] = []
    bad: list[str] = []
    empty: list[str] = []
    for label, name in enumerate(names):
        good = 0
        for info in sorted(files.get(name, []), key=lambda i: i.path):
            if info.base_name.startswith("."):
                continue
            rel = info.path[len(base) + 1:]
            if os.path.splitext(info.base_name)[1].lower() not in IMAGE_EXTENSIONS:
                bad.append(f"{rel} (not an image extension)")
            elif not info.size:
                bad.append(f"{rel} (empty object)")
            else:
                samples.append((s3.SCHEME + info.path, label))
                good += 1
        if good == 0:
            empty.append(name)
    report_scan(root, empty, bad, usable="image object", skipped="non-image or empty object(s)")
    return names, samples


def _decode(batch: dict[str, np.ndarray], *, base: str, classes: Sequence[str], pre: dict[str, Any],
            train: bool) -> dict[str, np.ndarray]:
    """Ray Data ``map_batches`` step: bytes → the same tensors local loading makes; the label is
    the class folder below ``base`` in the object's path. Undecodable objects are dropped."""
    p = Preprocess.from_dict(pre)
    transform = train_transform(p) if train else eval_transform(p)
    index = {name: i for i, name in enumerate(classes)}
    images, labels = [], []
    for data, path in zip(batch["bytes"], batch["path"]):
        try:
            label = index[str(path)[len(base) + 1:].split("/")[0]]
            with Image.open(io.BytesIO(data)) as im:
                images.append(transform(to_rgb(im)).numpy())
            labels.append(label)
        except Exception as e:  # PIL raises many types for bad files: skip, never crash the epoch
            log.warning("Skipping unreadable image %s%s: %s", s3.SCHEME, path, e)
    if not images:
        return {"image": np.zeros((0, 3, p.crop_size, p.crop_size), np.float32), "label": np.zeros(0, np.int64)}
    return {"image": np.stack(images).astype(np.float32, copy=False), "label": np.asarray(labels, np.int64)}


def image_dataset(samples: Sequence[Sample], root: str, classes: Sequence[str], pre: Preprocess, *, train: bool,
                  seed: int = 0, batch_size: int = 16):
    """A Ray Data dataset of ``{"image": float32 CHW, "label": int64}`` rows for ``samples``.

    Read tasks fetch the objects; CPU ``map_batches`` tasks decode and transform them (with the
    training augmentation when ``train``, the eval transform otherwise). Training files are
    read in a new seeded order every epoch.
    """
    import ray.data
    from ray.data import FileShuffleConfig

    ds = ray.data.read_binary_files([uri for uri, _ in samples], include_paths=True, filesystem=s3.s3_filesystem(),
                                    shuffle=FileShuffleConfig(seed=seed) if train else None)
    return ds.map_batches(_decode, batch_size=batch_size, batch_format="numpy",
                          fn_kwargs={"base": s3.strip(root), "classes": list(classes), "pre": pre.to_dict(), "train": train})


class ShardBatches:
    """``(x, y)`` batches of a Ray Train dataset shard; each iteration is one pass (an epoch).

    Quacks like the local DataLoader for :mod:`animalclf.train.engine`, and like its sampler
    (``set_epoch``) for the worker loop. ``shuffle_seed`` turns on a seeded local shuffle buffer.
    """

    def __init__(self, shard, batch_size: int, shuffle_seed: Optional[int] = None):
        self.shard = shard
        self.batch_size = batch_size
        self.shuffle_seed = shuffle_seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        import torch

        shuffle = {}
        if self.shuffle_seed is not None:
            shuffle = {"local_shuffle_buffer_size": 4 * self.batch_size, "local_shuffle_seed": self.shuffle_seed + self.epoch}
        for b in self.shard.iter_torch_batches(batch_size=self.batch_size, dtypes={"image": torch.float32, "label": torch.int64},
                                               device="cpu", **shuffle):
            yield b["image"], b["label"]


def check_training_options(augment: str, teacher: bool) -> None:
    """A bucket trains with the standard augmentation and without a teacher (its Ray Data rows carry
    no teacher targets yet): anything else is a :class:`UserError` naming the way around."""
    if teacher:
        raise UserError("--teacher (distillation) reads a local or shared folder for now, not s3://: copy the data "
                        "to a folder every node sees, or drop --teacher.")
    if augment != "standard":
        raise UserError(f"--augment {augment} reads a local or shared folder for now, not s3://: copy the data to a "
                        f"folder every node sees, or use --augment standard.")


def val_dataset_name(rank: int, world: int) -> str:
    """The Ray Train dataset holding rank ``rank``'s validation share (``world`` names the count, so
    a worker group of another size fails on a missing name instead of skipping images)."""
    return f"val_{rank}_of_{world}"


@dataclass(frozen=True)
class Bucket(ClassFolders):
    """Class folders under ``s3://`` prefixes: ``data`` split by ratio, or explicit ``train_dir``
    and ``val_dir``. The driver lists; Ray Data tasks read and decode for the workers.

    Training is one dataset that Ray Train splits into equal shards (DDP workers must take the
    same number of steps). Validation is one dataset per rank, holding the samples
    ``rank::world``, which ``ray.train.DataConfig(datasets_to_split=["train"])`` hands whole to
    every worker and each worker reads only its own: every validation image is evaluated exactly
    once per epoch over all workers, with public Ray APIs (an unequal split of one dataset would
    need a ``DataConfig.configure`` override and its private members).
    """

    kind = "bucket"
    scan = staticmethod(scan_bucket)  # the listing only: the split reads no image bytes but content grouping's
    read = staticmethod(s3.read_bytes)

    def trainer_inputs(self, split: Split, pre: Preprocess, seed: int, num_workers: int) -> dict[str, Any]:
        """``datasets`` and ``dataset_config`` for the ``TorchTrainer`` of ``num_workers`` workers."""
        from ray.train import DataConfig

        datasets = {"train": image_dataset(split.train, self.train_root, split.classes, pre, train=True, seed=seed)}
        for rank in range(num_workers):
            share = split.val[rank::num_workers]
            if share:  # more workers than validation images: the extra ranks evaluate nothing
                datasets[val_dataset_name(rank, num_workers)] = image_dataset(share, self.val_root, split.classes, pre,
                                                                               train=False)
        return {"datasets": datasets, "dataset_config": DataConfig(datasets_to_split=["train"])}

    def train_loader(self, split: Split, pre: Preprocess, shard: Shard, *, augment: str = "standard",
                     targets: Optional[Mapping[str, Sequence[float]]] = None) -> ShardBatches:
        """This worker's equal shard of the training dataset, with a seeded local shuffle (the
        standard augmentation, no teacher: :func:`check_training_options` refuses the others first)."""
        import ray.train

        check_training_options(augment, targets is not None)
        return ShardBatches(ray.train.get_dataset_shard("train"), shard.batch_size, shuffle_seed=shard.seed + shard.rank)

    def probe_loader(self, split: Split, pre: Preprocess, shard: Shard) -> ShardBatches:
        """One pass over this worker's training shard, augmented: the only per-worker copy of the
        training images a bucket gives (a local folder probes unaugmented images)."""
        return self.train_loader(split, pre, shard)

    def val_loader(self, split: Split, pre: Preprocess, shard: Shard, *,
                   targets: Optional[Mapping[str, Sequence[float]]] = None) -> ShardBatches | EpochLoader:
        """This worker's validation share (samples ``rank::world``), in order."""
        import ray.train

        check_training_options("standard", targets is not None)
        if not split.val[shard.rank::shard.world]:
            return EpochLoader(())
        return ShardBatches(ray.train.get_dataset_shard(val_dataset_name(shard.rank, shard.world)), shard.batch_size)

