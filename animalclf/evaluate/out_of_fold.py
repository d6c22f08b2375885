"""The K fold models of a cross-validation checkpoint, after the CV: their out-of-fold predictions,
and the ``--final ensemble`` export that serves them as one model.

Out-of-fold (OOF) predictions: each image predicted by the one fold model that did not train on
it. They are the honest evidence for whatever a CV run publishes: a model refit on every image, or
the ensemble of the fold models, has seen every image, so its own figures on any of them are not an
estimate. The published report is the OOF report over all images, and the promotion gate compares
the champion with the OOF predictions on the validation split's images (:func:`OutOfFold.evaluation`).
For a refit the OOF figures are a slightly cautious estimate (each fold model saw (K-1)/K of the
images); for an ensemble, a cautious one too (the ensemble averages K such models).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from animalclf.data import folds as cv
from animalclf.data.split import Sample, Split
from animalclf.evaluate.evaluation import predict_samples
from animalclf.evaluate.evidence import Evaluation
from animalclf.evaluate.report import build_report
from animalclf.models.build import Ensemble
from animalclf.models.checkpoint import MEMBERS, fold_dir, load_model, read_meta, save_checkpoint

log = logging.getLogger(__name__)

__all__ = ["OutOfFold", "out_of_fold", "export_ensemble"]


@dataclass
class OutOfFold:
    """Every image's class probabilities from the fold model that did not train on it."""

    samples: list[Sample]
    probs: torch.Tensor
    targets: torch.Tensor
    classes: list[str]

    def report(self) -> dict[str, Any]:
        """The evaluation report (accuracy, macro F1, confusion, PR/ROC) of the OOF predictions."""
        out = build_report(self.probs, self.targets, self.classes)
        out["evaluated_on"] = f"out-of-fold predictions on all {len(self.samples)} images"
        return out

    def evaluation(self, samples: Optional[Sequence[Sample]] = None) -> Evaluation:
        """The OOF predictions as the gate reads them: on ``samples`` (each one of this CV's images) in
        their order (the gate's candidate side), or on every image (what is stored beside the report)."""
        every = Evaluation.from_probabilities([p for p, _ in self.samples], self.targets.numpy(), self.probs.numpy())
        if samples is None:
            return every
        sub = every.subset(samples)
        if sub is None:
            raise ValueError(f"Some of the {len(samples)} gate images were not in the cross-validation (or had "
                             f"other labels there)")
        return sub


def out_of_fold(checkpoint_dir: str | Path, split: Split, k: int, seed: int) -> OutOfFold:
    """Predict every sample of ``split`` (train + validation) with the fold model of
    ``checkpoint_dir`` that validated on it (the folds of ``cv.fold_splits(split, k, seed)``, as trained)."""
    parts = cv.stratified_folds(cv.all_samples(split), k, seed, split.groups)
    samples: list[Sample] = []
    probs, targets = [], []
    for i, part in enumerate(parts):
        model, meta = load_model(fold_dir(checkpoint_dir, i))
        p, t = predict_samples(model, meta, part, split.classes)
        samples += [tuple(s) for s in part]
        probs.append(p)
        targets.append(t)
    oof = OutOfFold(samples, torch.cat(probs), torch.cat(targets), list(split.classes))
    log.info("Out-of-fold predictions of the %d fold models on %d images: accuracy %.4f", k, len(samples),
             float((oof.probs.argmax(1) == oof.targets).float().mean()))
    return oof


def export_ensemble(checkpoint_dir: str | Path, k: int, dst: str | Path) -> Path:
    """Write the K fold models of ``checkpoint_dir`` as one checkpoint at ``dst``: an
    :class:`~animalclf.models.build.Ensemble` state dict and the fold checkpoint's meta with ``members: K``."""
    members = [load_model(fold_dir(checkpoint_dir, i))[0] for i in range(k)]
    meta = {**read_meta(checkpoint_dir), MEMBERS: k}
    return save_checkpoint(dst, Ensemble(members), meta)
