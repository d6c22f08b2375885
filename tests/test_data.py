import logging
import shutil
from pathlib import Path

import pytest
from PIL import Image

from animalclf.data import load_split, scan_folder, stratified_split, to_rgb
from animalclf.errors import UserError
from conftest import make_image_folder


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


def test_shared_data_split_matches_original_ratio(shared_data):
    split = load_split(str(shared_data), None, None, 0.2, 42)
    assert len(split.classes) == 15 and split.classes[0] == "Bear" and split.classes[-1] == "Zebra"
    assert len(split.train) + len(split.val) == 269
    assert 0.18 < len(split.val) / 269 < 0.24


def test_corrupt_and_non_image_files_are_named_and_skipped(tmp_path, caplog):
    root = make_image_folder(tmp_path, per_class=4)
    good = next((root / "Red").glob("*.jpg")).read_bytes()
    (root / "Red" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "Red" / "notes.txt").write_text("hello")
    (root / "Blue" / "fake.jpg").write_bytes(b"not a jpeg at all")
    with caplog.at_level(logging.WARNING, logger="animalclf"):
        _, samples = scan_folder(root)
    assert len(samples) == 12
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


def test_explicit_train_and_val_dirs_must_share_classes(tmp_path):
    train = make_image_folder(tmp_path / "train", per_class=3)
    val = make_image_folder(tmp_path / "val", per_class=2)
    split = load_split(None, str(train), str(val), 0.2, 0)
    assert (len(split.train), len(split.val)) == (9, 6)
    shutil.rmtree(val / "Red")
    (val / "Pink").mkdir()
    Image.new("RGB", (8, 8)).save(val / "Pink" / "p.jpg")
    with pytest.raises(UserError, match="differ from training"):
        load_split(None, str(train), str(val), 0.2, 0)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "I;16", "LA", "1"])
def test_to_rgb_handles_modes(mode):
    im = Image.new("RGB", (10, 6), (120, 60, 30)).convert(mode) if mode != "I;16" else Image.new("I;16", (10, 6), 40000)
    out = to_rgb(im)
    assert out.mode == "RGB" and out.size == (10, 6)
    if mode == "I;16":
        assert 150 < out.getpixel((0, 0))[0] < 160  # 40000/65535*255 ~ 155, not clipped to 255


def test_to_rgb_applies_exif_rotation():
    im = Image.new("RGB", (20, 10))
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 CW on display
    import io

    buf = io.BytesIO()
    im.save(buf, "JPEG", exif=exif.tobytes())
    assert to_rgb(Image.open(buf)).size == (10, 20)


def test_relative_data_path_gives_absolute_samples(tmp_path, monkeypatch):
    make_image_folder(tmp_path / "rel", per_class=2)
    monkeypatch.chdir(tmp_path)
    _, samples = scan_folder("rel")
    assert all(Path(p).is_absolute() and Path(p).is_file() for p, _ in samples)
