"""animalclf.evaluation: what the report and the promotion gate see is what the Predictor serves."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from animalclf.checkpoint import load_model, save_checkpoint
from animalclf.config import TrainConfig
from animalclf.errors import UserError
from animalclf.evaluation import evaluate_model, predict_samples
from animalclf.model import build_model
from animalclf.predict import Predictor
from animalclf.worker import checkpoint_meta


@pytest.fixture(scope="module")
def samples(tiny_folder):
    """(classes, [(path, label)]): every image of the tiny folder, in class order."""
    classes = sorted(d.name for d in tiny_folder.iterdir() if d.is_dir())
    return classes, [(str(p), i) for i, c in enumerate(classes) for p in sorted((tiny_folder / c).glob("*.jpg"))]


def checkpoint(tmp_path, classes, tta_flip: bool):
    cfg = TrainConfig(arch="efficientnet_lite0", weights="none", unfreeze=1, image_size=48, tta_flip=tta_flip)
    torch.manual_seed(0)
    model = build_model(cfg.arch, len(classes), cfg.unfreeze, cfg.weights)
    path = tmp_path / ("tta" if tta_flip else "plain")
    save_checkpoint(path, model, checkpoint_meta(cfg, classes, {}, 1))
    return path


@pytest.mark.parametrize("tta_flip", [False, True])
def test_probabilities_are_what_the_predictor_serves(tmp_path, samples, tta_flip):
    classes, items = samples
    path = checkpoint(tmp_path, classes, tta_flip)
    model, meta = load_model(path)
    probs, targets = predict_samples(model, meta, items, classes)
    assert targets.tolist() == [label for _, label in items]
    served = Predictor.load(str(path))
    assert served.tta_flip is tta_flip
    expected = served.predict_tensors(torch.stack([served.tensor(Image.open(p).convert("RGB")) for p, _ in items]))
    assert torch.allclose(probs, expected, atol=1e-5)


def test_flip_tta_changes_the_evaluation(tmp_path, samples):
    """The same weights with and without tta_flip give different probabilities (the flag is honoured)."""
    classes, items = samples
    plain, flip = (load_model(checkpoint(tmp_path, classes, t)) for t in (False, True))
    a, _ = predict_samples(*plain, items, classes)
    b, _ = predict_samples(*flip, items, classes)
    assert not torch.allclose(a, b, atol=1e-4)
    report = evaluate_model(*flip, items, classes)
    assert report["support"] == len(items) and len(report["confusion_matrix"]) == len(classes)


def test_class_mismatch_is_a_user_error(tmp_path, samples):
    classes, items = samples
    model, meta = load_model(checkpoint(tmp_path, classes, False))
    with pytest.raises(UserError, match="differ"):
        predict_samples(model, meta, items, list(reversed(classes)))
