"""``s3://`` datasets: list class folders in a bucket, split them like local folders, and stream
the images to the training workers through Ray Data.

Listing reads object metadata only (names and sizes, no image bytes), so a bucket of any size is
split on the driver in seconds; the same seeded :func:`animalclf.data.stratified_split` runs on
``(uri, label)`` samples, so the same images give the same split as a local copy of the folder.
Ray Data tasks on CPU then read the bytes and decode, resize and normalise them with the same
transforms as local training; an object that does not decode is dropped (and logged), never fatal.

Credentials and endpoint come from the standard AWS variables: ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION``/``AWS_DEFAULT_REGION`` and
``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL`` (MinIO, moto, ...). Without keys in the environment,
each node uses the AWS SDK's own chain (instance role, ``~/.aws``).
"""

from __future__ import annotations

import functools
import io
import logging
import os
from typing import Any, Iterator, Optional, Sequence
from urllib.parse import urlparse

import numpy as np
from PIL import Image
from ray.train import DataConfig

from animalclf.data import (
    IMAGE_EXTENSIONS, Sample, Split, class_names, eval_transform, report_scan, stratified_split, to_rgb, train_transform,
)
from animalclf.errors import UserError
from animalclf.model import Preprocess

log = logging.getLogger(__name__)

__all__ = [
    "is_remote", "s3_filesystem", "read_bytes", "scan_bucket", "load_remote_split", "image_dataset", "make_datasets",
    "ShardBatches", "WholeValDataConfig",
]

SCHEME = "s3://"


def is_remote(uri: Optional[str]) -> bool:
    """``True`` for an ``s3://`` URI."""
    return bool(uri) and str(uri).startswith(SCHEME)


def _options_from_env() -> tuple[tuple[str, Any], ...]:
    """``pyarrow.fs.S3FileSystem`` keyword arguments from the standard AWS variables."""
    env = os.environ
    kw: dict[str, Any] = {}
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if endpoint:
        u = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        kw["endpoint_override"] = u.netloc + u.path.rstrip("/")
        kw["scheme"] = u.scheme
        region = region or "us-east-1"  # S3-compatible servers ignore it; avoids a region lookup
    if region:
        kw["region"] = region
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        # explicit keys travel with the filesystem into the Ray Data read tasks, so nodes whose
        # environment lacks them (a cluster started before this shell) can still read
        kw["access_key"] = env["AWS_ACCESS_KEY_ID"]
        kw["secret_key"] = env["AWS_SECRET_ACCESS_KEY"]
        if env.get("AWS_SESSION_TOKEN"):
            kw["session_token"] = env["AWS_SESSION_TOKEN"]
    return tuple(sorted(kw.items()))


@functools.lru_cache(maxsize=4)
def _filesystem(options: tuple[tuple[str, Any], ...]):
    from pyarrow import fs

    return fs.S3FileSystem(**dict(options))


def s3_filesystem():
    """A ``pyarrow.fs.S3FileSystem`` configured from the environment (cached per configuration)."""
    return _filesystem(_options_from_env())


def _strip(uri: str) -> str:
    """``s3://bucket/prefix/`` → ``bucket/prefix`` (the form pyarrow and Ray Data paths use)."""
    return str(uri)[len(SCHEME):].strip("/")


def read_bytes(uri: str) -> bytes:
    """The whole object at ``uri``."""
    with s3_filesystem().open_input_stream(_strip(uri)) as f:
        return f.read()


def scan_bucket(root: str, classes: Optional[Sequence[str]] = None) -> tuple[list[str], list[Sample]]:
    """The ``s3://`` counterpart of :func:`animalclf.data.scan_folder`, from the listing alone.

    Class folders are the names directly below ``root`` (sorted, dot-names skipped); every object
    below one with an image extension and a non-zero size is a sample ``(s3://..., label)``. Other
    objects are skipped and counted in one warning. Bytes that do not decode are found later, when
    Ray Data reads them (they are dropped there), because checking them here would mean
    downloading the whole dataset on the driver.
    """
    from pyarrow import fs

    if not is_remote(root) or not _strip(root):
        raise UserError(f"{root!r} is not an s3:// URI: pass --data s3://BUCKET/PREFIX with one sub-folder per class.")
    base = _strip(root)
    try:
        infos = s3_filesystem().get_file_info(fs.FileSelector(base, recursive=True, allow_not_found=True))
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
                samples.append((SCHEME + info.path, label))
                good += 1
        if good == 0:
            empty.append(name)
    report_scan(root, empty, bad, usable="image object", skipped="non-image or empty object(s)")
    return names, samples


def load_remote_split(data: Optional[str], train_dir: Optional[str], val_dir: Optional[str], val_ratio: float,
                      seed: int) -> Split:
    """:func:`animalclf.data.load_split` for ``s3://`` URIs (``data``, or both folders)."""
    if data:
        classes, samples = scan_bucket(data)
        train, val = stratified_split(samples, val_ratio, seed)
    else:
        if not (is_remote(train_dir) and is_remote(val_dir)):
            raise UserError("--train-dir and --val-dir must both be local folders or both s3:// URIs.")
        classes, train = scan_bucket(train_dir)
        _, val = scan_bucket(val_dir, classes)
    return Split(classes, train, val)


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
            log.warning("Skipping unreadable image %s%s: %s", SCHEME, path, e)
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

    ds = ray.data.read_binary_files([uri for uri, _ in samples], include_paths=True, filesystem=s3_filesystem(),
                                    shuffle=FileShuffleConfig(seed=seed) if train else None)
    return ds.map_batches(_decode, batch_size=batch_size, batch_format="numpy",
                          fn_kwargs={"base": _strip(root), "classes": list(classes), "pre": pre.to_dict(), "train": train})


def make_datasets(data: Optional[str], train_dir: Optional[str], val_dir: Optional[str], split: Split, pre: Preprocess,
                  seed: int) -> dict[str, Any]:
    """``{"train": ..., "val": ...}`` for a ``TorchTrainer`` from a remote split."""
    return {
        "train": image_dataset(split.train, data or train_dir, split.classes, pre, train=True, seed=seed),
        "val": image_dataset(split.val, data or val_dir, split.classes, pre, train=False),
    }


class ShardBatches:
    """``(x, y)`` batches of a Ray Train dataset shard; each iteration is one pass (an epoch).

    Quacks like the local DataLoader for :mod:`animalclf.engine`, and like its sampler
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


class WholeValDataConfig(DataConfig):
    """``train`` is split into equal shards (DDP workers must take the same number of steps); every
    other dataset is split unequally, so each validation image is evaluated exactly once (Ray
    Train's default ``DataConfig`` drops rows to make all shards equal)."""

    def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
        output = [{} for _ in range(world_size)]
        hints = worker_node_ids if self._enable_shard_locality else None
        for name, ds in datasets.items():
            if name == "train":
                part = super().configure({name: ds}, world_size, worker_handles, worker_node_ids, **kwargs)
                for i in range(world_size):
                    output[i][name] = part[i][name]
                continue
            if ds.name is None:
                ds.set_name(name)
            ds = ds.copy(ds)
            ds.context.execution_options = self._resolve_execution_options(name)
            for i, it in enumerate(ds.streaming_split(world_size, equal=False, locality_hints=hints)):
                output[i][name] = it
        return output
