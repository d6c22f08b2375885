"""Finding copies of one photo (animalclf.data.groups): the name conventions, a perceptual hash that
survives the source's edits (quarter turns, mirror, darker, a small crop) and tells photos apart,
and the groups found on the shared photos (the name convention's 213 originals, which content
hashing confirms: every same-name pair is within the threshold, no other pair is)."""

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from animalclf.data.groups import HASH_THRESHOLD, find_groups, name_key, near_duplicate_pairs, orientation_hashes
from animalclf.errors import UserError


@pytest.mark.parametrize("path, key", [
    ("/d/Deer/Deer_7_2.jpg", "/d/Deer/Deer_7"), ("/d/Deer/Deer_7.jpeg", "/d/Deer/Deer_7"),
    ("/d/Deer/deer_12_4.jpg", "/d/Deer/deer_12"), ("/d/Cat/photo (1).jpg", "/d/Cat/photo"),
    ("/d/Cat/photo copy.png", "/d/Cat/photo"), ("/d/Cat/photo-copy2.jpg", "/d/Cat/photo"),
    ("/d/Cat/red_3.jpg", "/d/Cat/red_3"), ("s3://b/p/Cat/Cat_1_1.jpg", "s3://b/p/Cat/Cat_1"),
])
def test_name_conventions(path, key):
    assert name_key(path) == key


def test_other_folders_never_share_a_name_group():
    assert name_key("/d/Cat/x_1_1.jpg") != name_key("/d/Dog/x_1_1.jpg")


def _jpeg(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _distance(a: bytes, b: bytes) -> int:
    pairs = list(near_duplicate_pairs([orientation_hashes(a), orientation_hashes(b)], threshold=64))
    return pairs[0][2]


def test_hash_survives_the_sources_edits_and_tells_photos_apart(shared_data):
    photo = Image.open(sorted((shared_data / "Zebra").iterdir())[0]).convert("RGB")
    w, h = photo.size
    edits = {"turned": photo.rotate(90, expand=True), "mirrored": ImageOps.mirror(photo),
             "darker": photo.point(lambda v: int(v * 0.6)), "cropped": photo.crop((w // 20, h // 20, w, h)),
             "recompressed": Image.open(io.BytesIO(_jpeg(photo)))}
    original = _jpeg(photo)
    for name, im in edits.items():
        assert _distance(original, _jpeg(im)) <= HASH_THRESHOLD, name
    others = [sorted((shared_data / c).iterdir())[0] for c in ("Cat", "Lion", "Tiger", "Horse")]
    for p in others:
        assert _distance(original, p.read_bytes()) > HASH_THRESHOLD, p.name


def test_shared_photos_group_as_their_names_say(shared_data):
    from animalclf.data.folder import scan_folder

    _, samples = scan_folder(shared_data)
    by_content, stats = find_groups(samples, "auto", read=lambda p: Path(p).read_bytes())
    assert (stats.files, stats.groups, stats.by_name) == (269, 213, 56)
    assert stats.content_pairs >= 60 and stats.cross_pairs == 0 and stats.cross_label_pairs == 0
    by_names, _ = find_groups(samples, "names")
    assert len(set(by_names.values())) == 213
    deer = {p: g for p, g in by_content.items() if "/Deer/Deer_5" in p}
    assert len(deer) == 3 and len(set(deer.values())) == 1  # Deer_5_1, _2, _4: one photo


def test_content_groups_files_with_unrelated_names_and_skips_unreadable(tmp_path):
    rng = np.random.default_rng(1)
    a = Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).resize((80, 60))
    b = Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).resize((80, 60))
    files = {"x/one.jpg": _jpeg(a), "x/two.jpg": _jpeg(b), "x/upload-7.jpg": _jpeg(a.rotate(180)), "x/bad.jpg": b"junk"}
    samples = [(p, 0) for p in files]
    group, stats = find_groups(samples, "auto", read=files.__getitem__)
    assert group["x/one.jpg"] == group["x/upload-7.jpg"] != group["x/two.jpg"]
    assert group["x/bad.jpg"] == "x/bad.jpg" and stats.groups == 3 and stats.cross_pairs == 1
    with pytest.raises(UserError, match="--groups 'maybe'"):
        find_groups(samples, "maybe")
