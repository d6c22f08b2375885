"""The rules every data source shares (animalclf.data.split): the seeded stratified split, on tiny
folders and on the shared photos, and explicit train/val roots that must have the same classes."""

import shutil
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from animalclf.data.folder import scan_folder
from animalclf.data.source import open_source
from animalclf.data.split import IMAGE_EXTENSIONS, straddling, stratified_split
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
    full Kaggle set alike: per file (--groups none) the exact per-class rule; grouped (the
    default), no photo has a copy on the other side and each class's share misses its target by
    less than one group."""
    folders = sorted(p for p in shared_data.iterdir() if p.is_dir() and not p.name.startswith("."))
    on_disk = {d.name: sum(1 for f in d.rglob("*") if f.is_file() and not f.name.startswith(".")
                           and f.suffix.lower() in IMAGE_EXTENSIONS) for d in folders}
    per_file = open_source(str(shared_data)).split(0.2, 42, groups="none")
    assert per_file.classes == [d.name for d in folders] and per_file.groups == {}
    samples = per_file.train + per_file.val
    assert stratified_split(samples, 0.2, 42) == (per_file.train, per_file.val)  # seeded
    grouped = open_source(str(shared_data)).split(0.2, 42)
    assert len(set(grouped.groups.values())) > 40 and straddling(per_file.train, per_file.val, grouped.groups) > 10
    assert stratified_split(samples, 0.2, 42, grouped.groups) == (grouped.train, grouped.val)
    biggest = max(Counter(grouped.groups.values()).values())
    for ratio in (0.2, 0.5):
        for groups, slack in ((None, 0), (grouped.groups, biggest)):
            train_s, val_s = stratified_split(samples, ratio, 42, groups)
            assert not {p for p, _ in train_s} & {p for p, _ in val_s}
            assert straddling(train_s, val_s, grouped.groups if groups else {}) == 0
            train, val = Counter(y for _, y in train_s), Counter(y for _, y in val_s)
            for label, name in enumerate(per_file.classes):
                n = train[label] + val[label]
                assert n == on_disk[name]  # the shared photos are all readable
                assert abs(val[label] - expected_val(n, ratio)) <= slack and 0 < val[label] < n
            assert len(train_s) + len(val_s) == sum(on_disk.values())


def test_copies_never_straddle_and_groups_are_reported(tmp_path, caplog):
    """Name-convention copies (Deer_7_2 of Deer_7) and content copies with unrelated names (a quarter
    turn, darker) land on one side; --groups names finds only the first, none neither."""
    import logging

    from animalclf.data.groups import find_groups

    rng = np.random.default_rng(0)
    for c in ("Cat", "Dog"):
        (tmp_path / c).mkdir()
        for i in range(6):
            im = Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).resize((96, 64))
            im.save(tmp_path / c / f"{c}_{i}.jpg", quality=95)
            if i < 2:  # the source's convention: a turned copy
                im.rotate(90, expand=True).save(tmp_path / c / f"{c}_{i}_1.jpg", quality=95)
            if i == 2:  # an unrelated name: darker
                im.point(lambda v: int(v * 0.7)).save(tmp_path / c / f"upload-{i}.jpg", quality=95)
    classes, samples = scan_folder(tmp_path)
    with caplog.at_level(logging.INFO, logger="animalclf.data.split"):
        split = open_source(str(tmp_path)).split(0.5, 0)
    assert ("18 files in 12 groups (4 files joined to another by name; 6 near-duplicate pairs by content, 2 of them "
            "across name groups, 0 across classes)") in caplog.text
    for seed in range(10):
        train, val = stratified_split(samples, 0.5, seed, split.groups)
        assert straddling(train, val, split.groups) == 0
    by_names, stats = find_groups(samples, "names")
    assert stats.groups == 14 and by_names[str(tmp_path / "Cat" / "Cat_1_1.jpg")] == by_names[str(tmp_path / "Cat" / "Cat_1.jpg")]
    assert find_groups(samples, "none")[1].groups == 18
    assert open_source(str(tmp_path)).split(0.5, 0, groups="none").groups == {}


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
