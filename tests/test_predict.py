"""animalclf.models.predict: the Predictor's top-k on a real Lite0 model, what it decodes large and odd images to,
flip TTA stored in the checkpoint and applied, and registry versions loaded without unpickling."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from animalclf.models.checkpoint import save_checkpoint
from animalclf.config import TrainConfig
from animalclf.models.build import build_model
from animalclf.data.decode import MAX_ASPECT, bound_aspect, decode_image
from animalclf.models.predict import Predictor, class_probabilities
from test_decode import encode, photo
from animalclf.train.worker import checkpoint_meta

CLASSES = ["Bear", "Bird", "Cat", "Cow", "Deer", "Dog", "Dolphin", "Elephant", "Giraffe", "Horse",
           "Kangaroo", "Lion", "Panda", "Tiger", "Zebra"]


@pytest.fixture(scope="module")
def predictor(tmp_path_factory) -> Predictor:
    torch.manual_seed(0)
    cfg = TrainConfig(arch="efficientnet_lite0", weights="imagenet", unfreeze=0, image_size=64)
    d = save_checkpoint(tmp_path_factory.mktemp("pred") / "ck", build_model(cfg.arch, 15, 0, "imagenet"),
                        checkpoint_meta(cfg, CLASSES, {"val_accuracy": 0.5}, 1))
    return Predictor.load(str(d))


def test_predictor_top_k(predictor):
    ims = [photo(), photo(80, 80).convert("L").convert("RGB")]
    assert predictor.tensor(ims[0]).shape == (3, 64, 64)
    out = predictor.predict(ims, top_k=3)
    assert len(out) == 2 and all(len(o) == 3 for o in out)
    probs = predictor.predict_tensors(torch.stack([predictor.tensor(im) for im in ims]))
    assert probs.shape == (2, 15) and torch.allclose(probs.sum(1), torch.ones(2), atol=1e-5)
    order = probs[0].argsort(descending=True)[:3].tolist()
    assert [o["class"] for o in out[0]] == [CLASSES[i] for i in order]
    assert [o["probability"] for o in out[0]] == sorted((o["probability"] for o in out[0]), reverse=True)
    assert len(predictor.top_k(probs[0], 99)) == 15  # k clipped to the number of classes
    assert predictor.predict([]) == []
    meta = predictor.metadata()
    assert meta["classes"] == CLASSES and meta["arch"] == "efficientnet_lite0" and meta["preprocess"]["crop_size"] == 64
    assert predictor.version.startswith("checkpoint:")


def test_load_bad_ref_is_a_user_error(tmp_path):
    from animalclf.errors import UserError

    with pytest.raises(UserError, match="not an animalclf checkpoint"):
        Predictor.load(str(tmp_path))


# --- hostile but valid uploads stay cheap ------------------------------------------------------
def test_extreme_aspect_ratio_keeps_the_centre_and_is_fast(predictor):
    for size in [(16000, 1), (1, 16000), (3000, 20)]:
        data = encode(Image.new("RGB", size, (10, 200, 30)), "PNG")
        t0 = time.perf_counter()
        im = predictor.decode(data)
        x = predictor.tensor(im)
        assert time.perf_counter() - t0 < 0.1, size
        assert max(im.size) <= MAX_ASPECT * min(im.size) and x.shape == (3, 64, 64), (size, im.size)
    wide = photo(900, 100)  # red left, blue right: the centre column is where they meet
    assert bound_aspect(wide).size == (400, 100)
    assert predictor.tensor(wide).shape == (3, 64, 64)


def test_aspect_crop_barely_changes_the_prediction(predictor):
    rng = np.random.default_rng(3)
    # a smooth scene (like a photo at this scale); the crop moves the resampling grid by < 1 pixel
    im = Image.fromarray(rng.integers(0, 255, (8, 120, 3), np.uint8)).resize((1800, 120), Image.BICUBIC)
    full = predictor.transform(im)  # the transform on the whole strip
    assert (predictor.tensor(im) - full).abs().mean() < 0.05  # of a range of 2: about 1%
    p = predictor.predict_tensors(torch.stack([full, predictor.tensor(im)]))
    assert p[0].argmax() == p[1].argmax() and torch.allclose(p[0], p[1], atol=0.01)


def test_large_jpeg_is_decoded_at_reduced_size(predictor):
    big = encode(photo(4000, 3000), "JPEG", quality=85)
    im = predictor.decode(big)
    need = predictor.preprocess.resize_size
    assert need <= min(im.size) < 2 * need * 2 and im.size[0] > im.size[1], im.size  # draft: 1/8 scale
    assert decode_image(big).size == (4000, 3000)  # without a target: full size
    left, right = np.asarray(im)[im.size[1] // 2, 2].astype(int), np.asarray(im)[im.size[1] // 2, -3].astype(int)
    assert left[0] > left[2] + 80 and right[2] > right[0] + 80


def test_large_png_is_box_reduced(predictor):
    im = predictor.decode(encode(photo(3000, 2000), "PNG"))
    need = predictor.preprocess.resize_size
    assert 2 * need <= min(im.size) < 4 * need, im.size


def test_flip_tta_is_stored_in_the_checkpoint_and_used_by_the_predictor(tmp_path):
    torch.manual_seed(0)
    cfg = TrainConfig(arch="efficientnet_lite0", image_size=64, unfreeze=0, weights="none", tta_flip=True)
    model = build_model(cfg.arch, 3, 0, "none").eval()
    save_checkpoint(tmp_path, model, checkpoint_meta(cfg, ["a", "b", "c"], {}, 1))
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        plain, mirrored = model(x).softmax(1), model(x.flip(-1)).softmax(1)
        assert torch.allclose(class_probabilities(model, x, tta_flip=True), (plain + mirrored) / 2)
        assert not torch.allclose(plain, mirrored)  # the check means something
    on = Predictor.from_checkpoint(tmp_path)
    assert on.tta_flip and on.metadata()["tta_flip"] is True
    assert torch.allclose(on.predict_tensors(x), (plain + mirrored) / 2, atol=1e-5)
    off = Predictor(model, {**on.meta, "tta_flip": False}, "v")
    assert torch.allclose(off.predict_tensors(x), plain, atol=1e-5)


# --- registry versions load without unpickling ---------------------------------------------------
class _Payload:
    """Unpickling this creates ``path``: proof that a pickle was executed."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def register_version(name: str, classes=CLASSES, seed: int = 0) -> tuple[str, Predictor]:
    """Log a Lite0 (random weights) to the current MLflow store as a new version of ``name``."""
    import tempfile

    from animalclf.tracking import Tracker

    torch.manual_seed(seed)
    cfg = TrainConfig(arch="efficientnet_lite0", weights="none", unfreeze=0, image_size=64)
    model = build_model(cfg.arch, len(classes), 0, "none").eval()
    d = save_checkpoint(Path(tempfile.mkdtemp()) / "ck", model, checkpoint_meta(cfg, classes, {"val_accuracy": 0.5}, 1))
    tracker = Tracker.start("pickles", "run")
    version = tracker.log_model(d, name)
    tracker.end()
    return version, Predictor.from_checkpoint(d)


def test_registry_versions_load_without_unpickling(project, tmp_path, monkeypatch):
    import mlflow
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    version, local = register_version("pwn")
    client = MlflowClient()
    client.set_registered_model_alias("pwn", "champion", version)
    model_dir = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/pwn/{version}"))
    stored = Path(client.get_model_version_download_uri("pwn", version).removeprefix("file://"))
    assert (model_dir / "MLmodel").is_file()  # an MLflow model for MLflow users (tests/test_pyfunc.py) ...
    assert not list(stored.rglob("*.pkl")) + list(stored.rglob("*.pth")), "no pickled model or class is stored"
    weights = stored / "artifacts" / "animalclf" / "model.pt"
    assert weights.is_file(), sorted(str(p.relative_to(stored)) for p in stored.rglob("*") if "code" not in p.parts)

    x = torch.stack([local.tensor(photo(90, 70))])
    for ref in ("models:/pwn@champion", f"models:/pwn/{version}"):
        p = Predictor.load(ref)
        assert p.version == f"pwn/{version}" and p.classes == CLASSES
        assert torch.allclose(p.predict_tensors(x), local.predict_tensors(x), atol=1e-5)

    marker = tmp_path / "pwned"
    torch.save(_Payload(str(marker)), weights)  # the attacker overwrites the weights in the artifact store
    with pytest.raises(Exception, match="Weights only load failed|Unsupported global"):
        Predictor.load(f"models:/pwn/{version}")
    with pytest.raises(Exception, match="Weights only load failed|Unsupported global"):
        mlflow.pyfunc.load_model(f"models:/pwn/{version}")  # MLflow's own loader reads it the same way
    assert not marker.exists(), "loading ran the planted pickle"
    with open(weights, "rb") as f:  # ... and the payload is live: a plain torch.load would have run it
        torch.load(f, weights_only=False)
    assert marker.exists()


def test_unknown_alias_is_a_user_error(project, tmp_path, monkeypatch):
    import mlflow

    from animalclf.errors import UserError

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    with pytest.raises(UserError, match="Could not resolve models:/nothing@champion"):
        Predictor.load("models:/nothing@champion")
