"""The fold models of a CV checkpoint: out-of-fold predictions (each image by the model that did not
train on it) and the ensemble export, on tiny real images with hand-set heads (no Ray, no training)."""

import torch
from torch import nn

from animalclf.data import folds as cv
from animalclf.models.checkpoint import fold_dir, load_model, save_checkpoint
from animalclf.config import TrainConfig
from animalclf.data.source import source_of
from animalclf.evaluate.out_of_fold import export_ensemble, out_of_fold
from animalclf.models.build import Ensemble, build_model
from animalclf.models.predict import Predictor
from animalclf.train.worker import checkpoint_meta

K = 2


def _always(label: int, n_classes: int) -> nn.Module:
    """A model whose head answers ``label`` for every image."""
    model = build_model("efficientnet_lite0", n_classes, 0, "none").eval()
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(-10.0)
        head.bias[label] = 10.0
    return model


def _cv_checkpoint(root, tiny_folder):
    """A CV checkpoint as the worker writes it: fold i's model (here: always class i) under fold_dir(root, i)."""
    cfg = TrainConfig(data=str(tiny_folder), arch="efficientnet_lite0", image_size=64, weights="none", cv=K)
    split = source_of(cfg).split(cfg.val_ratio, cfg.seed)
    for i in range(K):
        save_checkpoint(fold_dir(root, i), _always(i, len(split.classes)), checkpoint_meta(cfg, split.classes, {}, 3))
    return cfg, split


def test_out_of_fold_predicts_each_image_with_the_model_that_did_not_train_on_it(tmp_path, tiny_folder):
    cfg, split = _cv_checkpoint(tmp_path, tiny_folder)
    oof = out_of_fold(tmp_path, split, K, cfg.seed)
    everything = cv.all_samples(split)
    assert sorted(oof.samples) == everything and len(oof.targets) == len(everything)
    validated_by = {s: i for i, f in enumerate(cv.fold_splits(split, K, cfg.seed)) for s in f.val}
    assert [int(p) for p in oof.probs.argmax(1)] == [validated_by[s] for s in oof.samples]
    assert [int(t) for t in oof.targets] == [label for _, label in oof.samples]

    gate = oof.evaluation(split.val)  # the gate's candidate side: in the validation split's order
    assert gate.ids == tuple(p for p, _ in split.val)
    assert list(gate.predicted) == [validated_by[s] for s in split.val] and list(gate.labels) == [l for _, l in split.val]
    report = oof.report()
    assert report["evaluated_on"] == f"out-of-fold predictions on all {len(everything)} images"
    expected = sum(validated_by[s] == s[1] for s in oof.samples) / len(everything)
    assert abs(report["accuracy"] - expected) < 1e-6


def test_ensemble_export_serves_the_mean_of_the_fold_models(tmp_path, tiny_folder):
    cfg, split = _cv_checkpoint(tmp_path / "cv", tiny_folder)
    export_ensemble(tmp_path / "cv", K, tmp_path / "ensemble")
    model, meta = load_model(tmp_path / "ensemble")
    assert isinstance(model, Ensemble) and len(model.members) == K and meta["members"] == K
    assert sorted((tmp_path / "ensemble").iterdir()) == [tmp_path / "ensemble" / "animalclf.json",
                                                         tmp_path / "ensemble" / "model.pt"]  # one artifact
    predictor = Predictor.from_checkpoint(tmp_path / "ensemble")
    assert predictor.metadata()["members"] == K
    probs = predictor.predict_tensors(torch.rand(3, 3, 64, 64))
    assert torch.allclose(probs[:, 0], torch.full((3,), 0.5), atol=1e-4)  # fold 0 says class 0, fold 1 class 1
    assert torch.allclose(probs[:, 1], torch.full((3,), 0.5), atol=1e-4)
    assert torch.allclose(probs.sum(1), torch.ones(3), atol=1e-5)
