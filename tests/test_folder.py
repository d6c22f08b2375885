"""A local folder of class folders (animalclf.data.folder): the scan and its errors, its loaders
over ranks, relative paths, and no import loop between the source kinds. The split rules are in
tests/test_split.py, ``to_rgb`` in tests/test_transforms.py, ``open_source`` in tests/test_source.py."""

import logging
from collections import Counter
from pathlib import Path

import pytest
import torch

from animalclf.data.folder import LocalFolder, scan_folder
from animalclf.data.loaders import Shard
from animalclf.data.source import open_source
from animalclf.errors import UserError
from animalclf.models.build import preprocess_for
from conftest import make_image_folder


def test_corrupt_and_non_image_files_are_named_once_and_skipped(tmp_path, caplog):
    root = make_image_folder(tmp_path, per_class=4)
    good = next((root / "Red").glob("*.jpg")).read_bytes()
    (root / "Red" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "Red" / "notes.txt").write_text("hello")
    (root / "Blue" / "fake.jpg").write_bytes(b"not a jpeg at all")
    with caplog.at_level(logging.WARNING, logger="animalclf"):
        split = LocalFolder(str(root)).split(0.25, 0)
    assert len(split.train) + len(split.val) == 12
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "3 unreadable" in warnings[0] and "truncated.jpg" in warnings[0] and "fake.jpg" in warnings[0]


def test_missing_dir_empty_class_and_single_class_are_clear_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        scan_folder(tmp_path / "nope")
    root = make_image_folder(tmp_path / "d", per_class=3)
    (root / "Empty").mkdir()
    with pytest.raises(UserError, match="no readable image.*Empty"):
        scan_folder(root)
    one = make_image_folder(tmp_path / "one", per_class=3, classes={"Red": (200, 0, 0)})
    with pytest.raises(UserError, match="need at least 2"):
        scan_folder(one)


def _labels(loader) -> Counter:
    return Counter(int(y) for batch in loader if batch is not None for y in batch[1])


def test_folder_loaders_cover_the_split_over_ranks(tmp_path):
    root = make_image_folder(tmp_path, per_class=7, size=24)
    source = open_source(str(root))
    split = source.split(0.3, 0)
    pre = preprocess_for("efficientnet_lite0", 16)
    world = 2
    val = Counter()
    for rank in range(world):  # every validation image once over the ranks, none padded in
        val += _labels(source.val_loader(split, pre, Shard(4, rank, world)))
    assert val == Counter(y for _, y in split.val)

    def order(rank: int, epoch: int) -> list[int]:
        loader = source.train_loader(split, pre, Shard(4, rank, world, seed=5))
        loader.set_epoch(epoch)
        return list(loader.sampler)

    a, b = order(0, 0), order(1, 0)
    assert set(a) | set(b) == set(range(len(split.train)))  # every training image, in equal shards
    assert len(a) == len(b) and len(a) + len(b) - len(split.train) == (-len(split.train)) % world  # padding only
    assert order(0, 0) == order(0, 0) and order(0, 0) != order(0, 1)  # seeded, reshuffled per epoch
    x, y = next(iter(source.train_loader(split, pre, Shard(4))))
    assert tuple(x.shape) == (4, 3, 16, 16) and y.dtype == torch.int64
    probe = Counter()
    for rank in range(world):  # the linear probe's images: every training image once, unaugmented
        probe += _labels(source.probe_loader(split, pre, Shard(4, rank, world)))
    assert probe == Counter(y for _, y in split.train)
    first, again = (torch.cat([b[0] for b in source.probe_loader(split, pre, Shard(4, seed=s))]) for s in (0, 1))
    assert torch.equal(first, again)  # no random crop, flip or jitter


def test_relative_data_path_gives_absolute_samples(tmp_path, monkeypatch):
    make_image_folder(tmp_path / "rel", per_class=2)
    monkeypatch.chdir(tmp_path)
    split = open_source("rel").split(0.5, 0)
    assert all(Path(p).is_absolute() and Path(p).is_file() for p, _ in split.train + split.val)


def _imports(module: str, seen: set[str] | None = None) -> set[str]:
    """Every ``animalclf`` module ``module`` imports, directly or not, at any depth of the file
    (function-level imports included), read from the source."""
    import ast

    seen = set() if seen is None else seen
    path = Path(__file__).resolve().parents[1] / (module.replace(".", "/") + ".py")
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            if name.startswith("animalclf.") and name not in seen and (path.parents[1] / (name.replace(".", "/") + ".py")).is_file():
                seen.add(name)
                _imports(name, seen)
    return seen


def test_no_import_loop_between_the_kinds():
    assert "animalclf.data.bucket" not in _imports("animalclf.data.folder")
    assert "animalclf.data.folder" not in _imports("animalclf.data.bucket")
    kinds = {"animalclf.data.folder", "animalclf.data.bucket", "animalclf.data.source", "animalclf.data.loaders", "animalclf.data.s3"}
    assert not _imports("animalclf.data.split") & kinds  # the shared rules stand alone
