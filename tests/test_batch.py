"""Batch prediction (animalclf.models.batch, ray_jobs/predict.py) for real: Ray Data on the session's
Ray, a Lite0 checkpoint (64 px), shared photos plus a file that is not an image, Parquet and CSV
outputs, a registered model pinned by alias, and a bucket on the local S3 server (moto)."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from animalclf.config import TrainConfig
from animalclf.errors import UserError
from animalclf.models.batch import BatchOptions, list_images, predict_batch
from animalclf.models.build import build_model
from animalclf.models.checkpoint import save_checkpoint
from animalclf.models.predict import Predictor
from animalclf.train.worker import checkpoint_meta

pytestmark = [pytest.mark.slow, pytest.mark.ray]

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["Bear", "Bird", "Cat", "Cow", "Deer", "Dog", "Dolphin", "Elephant", "Giraffe", "Horse",
           "Kangaroo", "Lion", "Panda", "Tiger", "Zebra"]
BROKEN = b"this is not a JPEG" * 10


def make_checkpoint(d: Path, seed: int = 0) -> Path:
    import torch

    torch.manual_seed(seed)
    cfg = TrainConfig(arch="efficientnet_lite0", weights="none", unfreeze=0, image_size=64)
    model = build_model(cfg.arch, len(CLASSES), 0, "none")
    return save_checkpoint(d, model, checkpoint_meta(cfg, CLASSES, {"val_accuracy": 0.5}, 1))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("batch_ckpt") / "ck")


@pytest.fixture(scope="module")
def photos(shared_data) -> list[Path]:
    return [p for c in ("Cat", "Elephant", "Zebra") for p in sorted((shared_data / c).iterdir())[:2]]


@pytest.fixture
def folder(tmp_path, photos) -> Path:
    """Class folders of shared photos, one broken .jpg at the top, a text file and a hidden folder."""
    root = tmp_path / "photos"
    for p in photos:
        (root / p.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(p, root / p.parent.name / p.name)
    (root / "broken.jpg").write_bytes(BROKEN)
    (root / "notes.txt").write_text("not listed")
    (root / ".thumbs").mkdir()
    shutil.copy(photos[0], root / ".thumbs" / "x.jpg")
    return root


def expected(predictor: Predictor, path: Path, k: int = 5) -> list[dict]:
    return predictor.predict([predictor.decode(path.read_bytes())], top_k=k)[0]


def read_parquet(out: Path) -> dict[str, dict]:
    rows = pq.read_table(out).to_pylist()
    assert len(rows) == len({r["path"] for r in rows}), "a path written twice"
    return {r["path"]: r for r in rows}


def assert_rows_match(rows: dict[str, dict], predictor: Predictor, folder: Path, k: int = 5) -> None:
    for path, row in rows.items():
        if Path(path).name == "broken.jpg":
            continue
        want = expected(predictor, Path(path), k)
        assert row["error"] is None and row["class"] == want[0]["class"], (path, row)
        assert [t["class"] for t in row["top_k"]] == [w["class"] for w in want]
        assert all(abs(t["probability"] - w["probability"]) < 1e-4 for t, w in zip(row["top_k"], want))
        assert abs(row["probability"] - want[0]["probability"]) < 1e-4


def test_listing_takes_images_at_any_depth_and_leaves_out_the_rest(folder, tmp_path):
    found = list_images(str(folder))
    assert len(found) == 7 and all(Path(p).is_absolute() for p in found)
    assert not any(".thumbs" in p or p.endswith(".txt") for p in found)
    with pytest.raises(UserError, match="not a folder"):
        list_images(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="No images"):
        list_images(str(tmp_path / "empty"))


def test_rows_match_the_predictor_the_broken_file_is_an_error_row_and_a_rerun_skips(ray_session, checkpoint, folder,
                                                                                 tmp_path, photos):
    out = tmp_path / "preds"
    opts = BatchOptions(model=str(checkpoint), data=str(folder), out=str(out), top_k=3, batch_size=4, concurrency=2,
                        num_cpus=0.5, rows_per_file=4)
    first = predict_batch(opts)
    assert (first.listed, first.skipped, first.written, first.errors) == (7, 0, 7, 1)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in out.glob("part-*.parquet")) and len(list(out.iterdir())) == 2
    rows = read_parquet(out)
    predictor = Predictor.from_checkpoint(checkpoint)
    assert_rows_match(rows, predictor, folder, k=3)
    assert all(r["model_version"] == predictor.version for r in rows.values())
    assert all(len(r["top_k"]) == 3 for r in rows.values() if not r["error"])
    bad = rows[str(folder / "broken.jpg")]
    assert bad["class"] is None and bad["probability"] is None and bad["top_k"] == [] and bad["error"], bad

    # A rerun does only what is new; a part a killed run left half-written is removed, not trusted.
    extra = sorted((photos[0].parent).iterdir())[5]
    shutil.copy(extra, folder / "Cat" / extra.name)
    (out / ".part-killed-00000.parquet.tmp").write_bytes(b"PAR1 half")
    second = predict_batch(opts)
    assert (second.listed, second.skipped, second.written, second.errors) == (8, 7, 1, 0)
    assert not list(out.glob(".*.tmp"))
    rows = read_parquet(out)
    assert len(rows) == 8 and rows[str(folder / "Cat" / extra.name)]["class"] == expected(predictor, extra)[0]["class"]
    assert predict_batch(opts).written == 0

    # Another model's predictions are never mixed into this output.
    other = make_checkpoint(tmp_path / "other", seed=1)
    with pytest.raises(UserError, match="pass a new --out"):
        predict_batch(BatchOptions(model=str(other), data=str(folder), out=str(out)))


def test_csv_output_resumes_after_a_cut_off_line(ray_session, checkpoint, folder, tmp_path):
    out = tmp_path / "preds.csv"
    opts = BatchOptions(model=str(checkpoint), data=str(folder), out=str(out), batch_size=8, rows_per_file=3)
    assert predict_batch(opts).written == 7
    text = out.read_text()
    lines = text.splitlines()
    assert lines[0] == "path,class,probability,top_k,model_version,error" and len(lines) == 8
    # A kill in the middle of a write: the last row is cut off half-way.
    out.write_text(text[: text.rfind("\n", 0, len(text) - 1) + 1] + lines[-1][:20])
    again = predict_batch(opts)
    assert (again.skipped, again.written) == (6, 1)
    with open(out, newline="") as f:
        rows = {r["path"]: r for r in csv.DictReader(f)}
    assert len(rows) == 7
    predictor = Predictor.from_checkpoint(checkpoint)
    as_parquet = {p: {**r, "top_k": json.loads(r["top_k"]), "probability": float(r["probability"]) if r["probability"] else None,
                      "error": r["error"] or None} for p, r in rows.items()}
    assert_rows_match(as_parquet, predictor, folder)
    assert rows[str(folder / "broken.jpg")]["error"] and not rows[str(folder / "broken.jpg")]["class"]


def test_a_registered_alias_is_pinned_once_and_named_in_every_row(ray_session, project, store, folder, tmp_path,
                                                                  checkpoint):
    from animalclf.tracking import Tracker

    tracker = Tracker.start("batch", "run")
    version = tracker.log_model(checkpoint, "batchclf")
    tracker.end()
    store.set_registered_model_alias("batchclf", "champion", version)
    out = tmp_path / "preds"
    res = predict_batch(BatchOptions(model="models:/batchclf@champion", data=str(folder), out=str(out)))
    assert res.model_version == f"batchclf/{version}" and res.written == 7
    rows = read_parquet(out)
    assert {r["model_version"] for r in rows.values()} == {f"batchclf/{version}"}
    assert_rows_match(rows, Predictor.from_checkpoint(checkpoint), folder)
    with pytest.raises(UserError, match="not in the MLflow registry"):
        predict_batch(BatchOptions(model="models:/batchclf/99", data=str(folder), out=str(tmp_path / "p2")))


def test_a_bucket_in_and_parquet_out_on_the_local_s3_server(ray_session, s3, checkpoint, folder, tmp_path):
    from conftest import BUCKET

    for p in sorted(folder.rglob("*")):
        if p.is_file() and ".thumbs" not in p.parts:
            s3.put_object(Bucket=BUCKET, Key=f"in/{p.relative_to(folder).as_posix()}", Body=p.read_bytes())
    opts = BatchOptions(model=str(checkpoint), data=f"s3://{BUCKET}/in", out=f"s3://{BUCKET}/out", batch_size=4)
    res = predict_batch(opts)
    assert (res.listed, res.written, res.errors) == (7, 7, 1)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="out/")["Contents"]]
    assert keys and all(k.startswith("out/part-") and k.endswith(".parquet") for k in keys)
    local = tmp_path / "got"
    local.mkdir()
    for k in keys:
        (local / k.rsplit("/", 1)[-1]).write_bytes(s3.get_object(Bucket=BUCKET, Key=k)["Body"].read())
    rows = read_parquet(local)
    assert set(rows) == {f"s3://{BUCKET}/in/{p.relative_to(folder).as_posix()}" for p in folder.rglob("*.jpg")
                         if ".thumbs" not in p.parts}
    predictor = Predictor.from_checkpoint(checkpoint)
    for uri, row in rows.items():
        rel = uri[len(f"s3://{BUCKET}/in/"):]
        if rel == "broken.jpg":
            assert row["error"] and row["class"] is None
        else:
            assert row["class"] == expected(predictor, folder / rel)[0]["class"], uri
    assert predict_batch(opts).skipped == 7


def test_user_mistakes_are_one_line_and_exit_2(tmp_path, checkpoint):
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(ROOT / "ray_jobs" / "predict.py"), *args], capture_output=True,
                              text=True, timeout=60, cwd=tmp_path)

    one_image = tmp_path / "one"
    one_image.mkdir()
    Image.new("RGB", (8, 8)).save(one_image / "x.jpg")
    for args, words in [
        (["--model", str(checkpoint), "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o")], "is not a folder"),
        (["--model", str(checkpoint), "--data", str(tmp_path), "--out", "s3://b/p.csv"], "CSV output is one local file"),
        (["--model", str(checkpoint), "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--batch-size", "0"],
         "--batch-size must be at least 1"),
        (["--model", str(tmp_path / "nock"), "--data", str(one_image), "--out", str(tmp_path / "o")],
         "is not an animalclf checkpoint"),
    ]:
        r = run(*args)
        assert r.returncode == 2, r.stderr
        errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and words in errors[0] and "Traceback" not in r.stderr, r.stderr
