"""``--data s3://...``: listing and split rules against a real S3 API (moto's server on loopback),
Ray Data decoding against local decoding, and a whole training run from the bucket compared with
the same images read from a local folder. The moto server and the ``s3`` fixture are in conftest.py;
the AWS variables are tests/test_s3.py's, reading one object is tests/test_loaders.py's."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from animalclf.config import TrainConfig
from animalclf.data.source import open_source
from animalclf.errors import UserError
from animalclf.models.build import preprocess_for
from animalclf.data.bucket import Bucket, image_dataset, scan_bucket
from animalclf.data.transforms import eval_transform, to_rgb
from conftest import BUCKET, make_image_folder


def upload(client, folder: Path, prefix: str) -> str:
    for f in sorted(folder.rglob("*")):
        if f.is_file():
            client.upload_file(str(f), BUCKET, f"{prefix}/{f.relative_to(folder).as_posix()}")
    return f"s3://{BUCKET}/{prefix}"


def relative(samples, root) -> list[tuple[str, int]]:
    """Samples as (path below the root, label), for comparing a bucket split with a folder split."""
    root = str(root).rstrip("/") + "/"
    return sorted((p[len(root):], label) for p, label in samples)


def test_bucket_split_is_the_local_split(s3, tmp_path, caplog):
    data = make_image_folder(tmp_path / "data", per_class=7)
    (data / "Red" / "notes.txt").write_text("not an image")
    (data / "Green" / "empty.jpg").write_bytes(b"")
    (data / "Blue" / ".hidden.jpg").write_bytes((data / "Blue" / "blue_0.jpg").read_bytes())
    (data / "Blue" / "nested").mkdir()
    (data / "Blue" / "nested" / "deep.jpg").write_bytes((data / "Blue" / "blue_1.jpg").read_bytes())
    (data / ".cache").mkdir()
    (data / ".cache" / "x.jpg").write_bytes((data / "Blue" / "blue_1.jpg").read_bytes())
    (data / "README.md").write_text("not a class")
    uri = upload(s3, data, "photos")

    remote = open_source(uri + "/").split(0.3, seed=7)
    local = open_source(str(data)).split(0.3, seed=7)
    assert isinstance(open_source(uri), Bucket)
    assert remote.classes == local.classes == ["Blue", "Green", "Red"]
    assert relative(remote.val, uri) == relative(local.val, data) and len(remote.val) == 6
    assert relative(remote.train, uri) == relative(local.train, data) and len(remote.train) == 16
    assert all(p.startswith(f"{uri}/") for p, _ in remote.train + remote.val)
    assert caplog.text.count("Skipping 2 non-image or empty object(s)") == 1  # notes.txt, empty.jpg; named once
    other = open_source(uri).split(0.3, seed=8)
    assert relative(other.val, uri) != relative(remote.val, uri)  # the seed matters


def test_explicit_train_and_val_prefixes(s3, tmp_path):
    uri_t = upload(s3, make_image_folder(tmp_path / "t", per_class=3), "train")
    uri_v = upload(s3, make_image_folder(tmp_path / "v", per_class=2, seed=1), "val")
    split = open_source(None, uri_t, uri_v).split(0.2, 0)
    assert split.classes == ["Blue", "Green", "Red"] and len(split.train) == 9 and len(split.val) == 6
    with pytest.raises(UserError, match="both be local folders or both s3"):
        open_source(None, uri_t, str(tmp_path / "v"))
    upload(s3, make_image_folder(tmp_path / "v2", per_class=2, classes={"Red": (200, 0, 0), "Cyan": (0, 200, 200)}), "val2")
    with pytest.raises(UserError, match="differ from training's"):
        open_source(None, uri_t, f"s3://{BUCKET}/val2").split(0.2, 0)


@pytest.mark.parametrize("layout,uri,match", [
    ({}, "s3://animals/nothing", "No objects under 's3://animals/nothing'"),
    ({"Red/a.jpg": "img"}, "s3://animals/p", r"1 class folder\(s\): need at least 2"),
    ({"Red/a.jpg": "img", "Blue/b.jpg": "img", "Void/notes.txt": "txt"}, "s3://animals/p", "no image object .*: Void"),
    ({"Red/a.jpg": "img", "Blue/b.jpg": "", "Blue/c.png": ""}, "s3://animals/p", "no image object .*: Blue"),
    ({}, "s3://no-such-bucket-here/p", "No objects|Cannot list"),
    ({}, "s3://", "not an s3:// URI"),
])
def test_listing_errors_name_the_problem(s3, layout, uri, match):
    jpeg = _jpeg_bytes()
    for key, kind in layout.items():
        s3.put_object(Bucket=BUCKET, Key=f"p/{key}", Body=jpeg if kind == "img" else kind.encode())
    with pytest.raises(UserError, match=match):
        scan_bucket(uri)


def test_two_images_per_class_needed_to_split(s3):
    for key in ("Red/a.jpg", "Blue/b.jpg", "Blue/c.jpg"):
        s3.put_object(Bucket=BUCKET, Key=f"p/{key}", Body=_jpeg_bytes())
    with pytest.raises(UserError, match="has 1 image: need at least 2 images to split"):
        open_source(f"s3://{BUCKET}/p").split(0.2, 0, groups="none")
    with pytest.raises(UserError, match="all copies of one photo"):  # the same bytes three times: one photo
        open_source(f"s3://{BUCKET}/p").split(0.2, 0)


def _jpeg_bytes() -> bytes:
    import io

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 200, 30)).save(buf, "JPEG")
    return buf.getvalue()


@pytest.mark.slow
def test_ray_data_decodes_like_local_files_and_drops_broken_ones(ray_session, s3, tmp_path):
    data = make_image_folder(tmp_path / "d", per_class=3, size=40)
    Image.new("L", (50, 30), 128).save(data / "Green" / "gray.png")  # another mode, another aspect ratio
    uri = upload(s3, data, "d")
    s3.put_object(Bucket=BUCKET, Key="d/Blue/broken.jpg", Body=(data / "Blue" / "blue_0.jpg").read_bytes()[:300])
    split = open_source(uri).split(0.5, 0)
    pre = preprocess_for("efficientnet_lite0", 32)
    rows = image_dataset(split.train + split.val, uri, split.classes, pre, train=False).take_all()

    local = {}
    for path, label in split.train + split.val:
        if not path.endswith("broken.jpg"):
            with Image.open(data / path[len(uri) + 1:]) as im:
                local[label, path] = eval_transform(pre)(to_rgb(im)).numpy()
    assert len(rows) == len(local) == 10  # 11 listed, the broken one dropped
    decoded = sorted((int(r["label"]), r["image"].tobytes()) for r in rows)
    expected = sorted((label, x.astype(np.float32).tobytes()) for (label, _), x in local.items())
    assert decoded == expected  # bit-identical to local preprocessing


@pytest.mark.slow
def test_training_from_s3_matches_the_local_folder(ray_session, project, s3, tmp_path):
    data = make_image_folder(tmp_path / "data", per_class=10)
    uri = upload(s3, data, "animals15")
    # head only with a negligible learning rate: both runs keep the (seeded) initial model, so the
    # per-epoch validation metrics must agree however the training images were ordered or augmented
    base = TrainConfig(arch="efficientnet_lite0", unfreeze=0, image_size=64, batch_size=8, epochs=2, lr=1e-9,
                       patience=0, seed=3, track=False, channels_last=False)
    from animalclf.evaluate.evaluation import evaluate_checkpoint
    from animalclf.train.run import prepare, run_training

    s3_cfg = base.replace(data=uri, num_workers=2, name="s3run")
    local_cfg = base.replace(data=str(data), num_workers=1, name="localrun")
    s3_split, _ = prepare(s3_cfg)
    local_split, _ = prepare(local_cfg)
    assert relative(s3_split.val, uri) == relative(local_split.val, data) and len(s3_split.val) == 6

    out = run_training(s3_cfg, split=s3_split)
    ref = run_training(local_cfg, split=local_split)
    assert out.epochs_run == ref.epochs_run == 2

    assert len(out.report["history"]) == len(ref.report["history"]) == 2
    for h_s3, h_local in zip(out.report["history"], ref.report["history"], strict=True):
        assert h_s3["val_images"] == h_local["val_images"] == 6  # every val image once over unequal shards
        assert h_s3["train_images"] > 0
        assert math.isfinite(h_s3["val_loss"]) and h_s3["val_loss"] > 0
        assert h_s3["val_loss"] == pytest.approx(h_local["val_loss"], abs=1e-4)
        assert h_s3["val_accuracy"] == pytest.approx(h_local["val_accuracy"], abs=1e-6)

    # the same checkpoint, evaluated on the driver from the bucket (publish) and from local files
    from_local = evaluate_checkpoint(out.checkpoint, local_split.val, local_split.classes)
    assert out.report["support"] == from_local["support"] == 6
    assert out.report["confusion_matrix"] == from_local["confusion_matrix"]
    assert out.report["accuracy"] == pytest.approx(from_local["accuracy"], abs=1e-9)
    assert out.report["macro_avg"]["f1"] == pytest.approx(from_local["macro_avg"]["f1"], abs=1e-9)
    # ...and the workers' Ray Data validation of that epoch saw the same predictions
    assert out.metrics["val_accuracy"] == pytest.approx(out.report["accuracy"], abs=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["folder", "bucket"])
def test_the_worker_loaders_of_both_kinds_cover_the_split(ray_session, s3, tmp_path, kind):
    """The calls the Ray Train worker loop makes, on 2 real workers: the trainer only passes what
    ``trainer_inputs`` returns, each worker asks its source for loaders. Validation: every image
    exactly once over the workers (3 images on 2 ranks: unequal shares). Training: equal shards."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    folder = make_image_folder(tmp_path / "d", per_class=6, size=24)
    where = upload(s3, folder, "w") if kind == "bucket" else str(folder)
    source = open_source(where)
    split = source.split(0.2, 1)
    assert len(split.val) == 3 and len(split.train) == 15
    pre = preprocess_for("efficientnet_lite0", 16)
    out_dir = tmp_path / "seen"
    out_dir.mkdir()

    def loop(config):
        import json

        import ray.train

        from animalclf.data.loaders import Shard
        from animalclf.data.source import open_source as reopen

        ctx = ray.train.get_context()
        rank, world = ctx.get_world_rank(), ctx.get_world_size()
        src = reopen(config["where"])  # the worker rebuilds the source from the config: no I/O
        train = src.train_loader(config["split"], config["pre"], Shard(2, rank, world))
        val = src.val_loader(config["split"], config["pre"], Shard(2, rank, world))
        seen = {}
        for epoch in range(2):
            train.set_epoch(epoch)
            seen[f"train{epoch}"] = [int(y) for b in train if b is not None for y in b[1]]
            seen[f"val{epoch}"] = [int(y) for b in val if b is not None for y in b[1]]
        (config["out"] / f"{rank}.json").write_text(json.dumps(seen))

    TorchTrainer(
        loop, train_loop_config={"where": where, "split": split, "pre": pre, "out": out_dir},
        scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(name=f"loaders-{kind}", storage_path=str(tmp_path / "ray")),
        **source.trainer_inputs(split, pre, seed=0, num_workers=2),
    ).fit()

    import json
    from collections import Counter

    ranks = [json.loads((out_dir / f"{r}.json").read_text()) for r in range(2)]
    for epoch in range(2):
        val = Counter(ranks[0][f"val{epoch}"]) + Counter(ranks[1][f"val{epoch}"])
        assert val == Counter(y for _, y in split.val)  # whole validation set, each image once
        assert [len(r[f"val{epoch}"]) for r in ranks] == [2, 1]
        sizes = [len(r[f"train{epoch}"]) for r in ranks]
        assert sizes[0] == sizes[1] > 0  # equal shards: DDP workers step together
        assert abs(sum(sizes) - len(split.train)) <= 1  # folder pads one image, bucket drops one


def test_resume_with_another_setup_is_refused_on_s3_storage(s3, tmp_path):
    """A run whose checkpoints in an ``s3://`` storage have another autocontrast or rotation pool
    is refused before any training, as on local storage; the same setup, or another name, passes."""
    import json

    from animalclf.data.split import Split
    from animalclf.train.run import check_resumable

    cfg = TrainConfig(arch="efficientnet_lite0", storage_path=f"s3://{BUCKET}/ray")
    classes = ["Blue", "Green", "Red"]
    meta = {"classes": classes, "config": {k: getattr(cfg, k) for k in ("arch", "unfreeze", "cv", "rotation_pool",
                                                                        "autocontrast")}}
    for stamp in ("2026-12-01_10-00-00", "2026-12-01_11-00-00"):
        s3.put_object(Bucket=BUCKET, Key=f"ray/run1/checkpoint_{stamp}/animalclf.json", Body=json.dumps(meta).encode())
    s3.put_object(Bucket=BUCKET, Key="ray/run1/checkpoint_manager_snapshot.json", Body=b"{}")
    split = Split(classes=classes, train=[], val=[])
    check_resumable(cfg, split, "run1")  # the same setup resumes
    check_resumable(cfg.replace(autocontrast=True), split, "run2")  # nothing stored under another name
    for change, word in (({"autocontrast": True}, "autocontrast False -> True"),
                         ({"rotation_pool": True}, "rotation_pool False -> True")):
        with pytest.raises(UserError, match=rf"Run 'run1' in s3://{BUCKET}/ray .*{word}.*s3://{BUCKET}/ray/run1"):
            check_resumable(cfg.replace(**change), split, "run1")
