import io
import logging
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
from PIL import Image

from animalclf.data.folder import LocalFolder, scan_folder
from animalclf.data.loaders import Shard
from animalclf.data.source import DataSource, open_source
from animalclf.errors import UserError
from animalclf.models.build import preprocess_for
from animalclf.data.bucket import Bucket
from animalclf.data.split import IMAGE_EXTENSIONS, stratified_split
from animalclf.data.transforms import to_rgb
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


def test_open_source_picks_the_kind_once(tmp_path):
    assert open_source("photos") == LocalFolder("photos")
    assert open_source("s3://b/p") == Bucket("s3://b/p")
    assert open_source(None, "s3://b/t", "s3://b/v") == Bucket(None, "s3://b/t", "s3://b/v")
    assert open_source(None, "t", "v") == LocalFolder(None, "t", "v")
    assert all(isinstance(s, DataSource) for s in (LocalFolder("x"), Bucket("s3://b/x")))
    with pytest.raises(UserError, match="both be local folders or both s3"):
        open_source(None, "s3://b/t", str(tmp_path))
    with pytest.raises(UserError, match="both be local folders or both s3"):
        open_source(None, str(tmp_path), "s3://b/v")
    with pytest.raises(UserError, match="No data given"):
        open_source(None, "t", None)
    assert LocalFolder("x").trainer_inputs(None, None, 0, 2) == {}  # workers read the files themselves


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
    buf = io.BytesIO()
    im.save(buf, "JPEG", exif=exif.tobytes())
    assert to_rgb(Image.open(buf)).size == (10, 20)


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
