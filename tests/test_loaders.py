"""PyTorch loading of ``(path, label)`` samples (animalclf.data.loaders): images read from local
files or ``s3://`` URIs (moto's S3 server, fixtures in conftest.py), unreadable ones dropped from
their batch, and the rank sampler."""

import numpy as np
from PIL import Image

from animalclf.data.loaders import EpochLoader, ImageList, ShardSampler, make_loader, open_image
from animalclf.data.transforms import eval_transform, to_rgb
from animalclf.models.build import preprocess_for
from conftest import BUCKET, make_image_folder
from test_bucket import upload


def test_driver_reads_uris_and_skips_a_broken_object(s3, tmp_path):
    data = make_image_folder(tmp_path / "d", per_class=2)
    uri = upload(s3, data, "d")
    good = f"{uri}/Red/red_0.jpg"
    s3.put_object(Bucket=BUCKET, Key="d/Red/broken.jpg", Body=(data / "Red" / "red_0.jpg").read_bytes()[:200])
    with open_image(good) as a, Image.open(data / "Red" / "red_0.jpg") as b:
        assert np.array_equal(np.asarray(to_rgb(a)), np.asarray(to_rgb(b)))
    items = ImageList([(good, 2), (f"{uri}/Red/broken.jpg", 2)], eval_transform(preprocess_for("efficientnet_lite0", 32)))
    assert items[0][0].shape == (3, 32, 32) and items[0][1] == 2
    assert items[1] is None


def test_unreadable_files_are_dropped_from_their_batch_and_ranks_cover_every_sample_once(tmp_path):
    data = make_image_folder(tmp_path / "d", per_class=2, size=24)
    good = sorted(str(p) for p in data.rglob("*.jpg"))
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    samples = [(good[0], 0), (str(tmp_path / "broken.jpg"), 1), (good[1], 2), (str(tmp_path / "gone.jpg"), 1)]
    items = ImageList(samples, eval_transform(preprocess_for("efficientnet_lite0", 16)))
    batches = list(make_loader(items, 2))
    assert len(batches) == 2
    assert batches[0][1].tolist() == [0] and tuple(batches[0][0].shape) == (1, 3, 16, 16)  # broken.jpg dropped
    assert batches[1][1].tolist() == [2] and tuple(batches[1][0].shape) == (1, 3, 16, 16)  # gone.jpg dropped
    only_broken = ImageList(samples[3:], items.transform)
    assert list(make_loader(only_broken, 2)) == [None]  # a batch whose every image failed

    shards = [list(ShardSampler(7, rank, 3)) for rank in range(3)]
    assert shards == [[0, 3, 6], [1, 4], [2, 5]] and len(ShardSampler(7, 1, 3)) == 2

    class Seeded:
        epoch = None

        def set_epoch(self, epoch):
            self.epoch = epoch

    sampler = Seeded()
    loader = EpochLoader([1, 2], sampler)
    loader.set_epoch(4)
    assert sampler.epoch == 4 and list(loader) == [1, 2]
    EpochLoader([3]).set_epoch(1)  # a sampler without epochs: nothing to reseed


def test_teacher_targets_ride_as_the_third_element_of_each_batch(tmp_path):
    import torch

    root = make_image_folder(tmp_path / "d", per_class=2, size=16)
    samples = [(str(p), i) for i, d in enumerate(sorted(root.iterdir())) for p in sorted(d.iterdir())]
    targets = {path: [float(k), 0.0, -1.0] for k, (path, _) in enumerate(samples)}
    loader = make_loader(ImageList(samples, eval_transform(preprocess_for("efficientnet_lite0", 32)), targets), 4)
    batches = list(loader)
    assert all(len(b) == 3 and b[2].shape == (len(b[1]), 3) for b in batches)
    assert torch.cat([b[2][:, 0] for b in batches]).tolist() == [float(k) for k in range(len(samples))]
    plain = next(iter(make_loader(ImageList(samples, eval_transform(preprocess_for("efficientnet_lite0", 32))), 4)))
    assert len(plain) == 2
