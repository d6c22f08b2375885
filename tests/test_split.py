"""The rules every data source shares (animalclf.data.split): the seeded stratified split, on tiny
folders and on the shared photos, and explicit train/val roots that must have the same classes."""

import shutil
from collections import Counter

import pytest
from PIL import Image

from animalclf.data.folder import scan_folder
from animalclf.data.source import open_source
from animalclf.data.split import IMAGE_EXTENSIONS, stratified_split
from animalclf.errors import UserError
from conftest import make_image_folder


def expected_val(n: int, ratio: float) -> int:
    """The documented rule: round(n * ratio) per class, at least 1, at most n - 1."""
    return min(n - 1, max(1, round(n * ratio)))


def test_split_is_deterministic_and_stratified(tmp_path):
    root = make_image_folder(tmp_path, per_class=10)
    classes, samples = scan_folder(root)
    assert classes == ["Blue", "Green", "Red"]
    a = stratified_split(samples, 0.2, seed=1)
    b = stratified_split(list(reversed(samples)), 0.2, seed=1)
    c = stratified_split(samples, 0.2, seed=2)
    assert a == b
    assert a != c
    train, val = a
    assert not set(train) & set(val) and len(train) + len(val) == 30
    for label in range(3):  # 80:20 in every class
        assert sum(1 for _, y in val if y == label) == 2
        assert sum(1 for _, y in train if y == label) == 8


def test_shared_data_split_holds_for_any_size(shared_data):
    """Counts come from the folder itself, so this holds on the 269 shared photos and on the
    full Kaggle set alike."""
    folders = sorted(p for p in shared_data.iterdir() if p.is_dir() and not p.name.startswith("."))
    on_disk = {d.name: sum(1 for f in d.rglob("*") if f.is_file() and not f.name.startswith(".")
                           and f.suffix.lower() in IMAGE_EXTENSIONS) for d in folders}
    split = open_source(str(shared_data)).split(0.2, 42)  # one scan; other ratios re-split its samples
    assert split.classes == [d.name for d in folders]
    samples = split.train + split.val
    assert stratified_split(samples, 0.2, 42) == (split.train, split.val)  # seeded
    for ratio in (0.2, 0.5):
        train_s, val_s = stratified_split(samples, ratio, 42)
        assert not {p for p, _ in train_s} & {p for p, _ in val_s}
        train, val = Counter(y for _, y in train_s), Counter(y for _, y in val_s)
        for label, name in enumerate(split.classes):  # stratified: the rule holds in every class
            n = train[label] + val[label]
            assert n == on_disk[name]  # the shared photos are all readable
            assert val[label] == expected_val(n, ratio)
        total = sum(on_disk.values())
        assert len(train_s) + len(val_s) == total
        assert abs(len(val_s) / total - ratio) <= len(split.classes) * 0.5 / total + 1e-9  # per-class rounding only


def test_explicit_train_and_val_dirs_must_share_classes(tmp_path):
    train = make_image_folder(tmp_path / "train", per_class=3)
    val = make_image_folder(tmp_path / "val", per_class=2)
    split = open_source(None, str(train), str(val)).split(0.2, 0)
    assert (len(split.train), len(split.val)) == (9, 6)
    shutil.rmtree(val / "Red")
    (val / "Pink").mkdir()
    Image.new("RGB", (8, 8)).save(val / "Pink" / "p.jpg")
    with pytest.raises(UserError, match="differ from training"):
        open_source(None, str(train), str(val)).split(0.2, 0)
