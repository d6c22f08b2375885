"""Distillation: which teacher a run learns from, and the teacher's answers it learns.

The teacher is any model the :class:`~animalclf.models.predict.Predictor` loads: a checkpoint
directory, ``models:/NAME/N``, or an alias (``--teacher`` alone: the model name's ``@champion``).
An alias is pinned to its version once, when the run starts, and the pinned reference is what the
run's config (and every checkpoint) records, so a resumed run keeps its teacher even after the
alias has moved.

The teacher's outputs are computed once per image, on the image as the teacher itself sees it
(its own eval preprocessing), in the driver, and reach the workers by reference beside the sample
list. One answer per image serves every augmentation of it when the teacher is invariant to that
augmentation: the demo's teacher pools quarter turns and autocontrasts each image, so the
student's quarter turns and brightness changes (``--augment invariant``) leave its answer as it is
(the random crop and flip nearly so). That costs one teacher pass per image per run, not per
step: the demo's teacher runs at ~0.1-0.2 s per photo here, four times a student's step.
The loss itself is :func:`animalclf.train.engine.distill_loss`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from animalclf.config import TEACHER_CHAMPION, TrainConfig
from animalclf.data.split import Sample, Split
from animalclf.errors import UserError
from animalclf.evaluate import registry

log = logging.getLogger(__name__)

__all__ = ["Targets", "pin_teacher", "resolve_teacher", "teacher_targets", "targets_for"]

Targets = dict[str, list[float]]
"""A teacher's log-probabilities by sample path (one row of class scores per image)."""


def pin_teacher(ref: str, model_name: Optional[str]) -> str:
    """The reference a run records for ``--teacher``: an alias (``champion`` = ``models:/NAME@champion``)
    pinned to its version now, a checkpoint directory made absolute, anything else as given."""
    from animalclf.models.predict import pin_version

    if ref == TEACHER_CHAMPION:
        if not model_name:
            raise UserError("--teacher without a REF means the @champion of --model-name, and there is no model name: "
                            "pass --teacher models:/NAME@champion or a checkpoint directory.")
        ref = registry.champion_ref(model_name)
    if ref.startswith("models:/"):
        return pin_version(ref)
    if registry.is_model_ref(ref):
        return ref
    path = Path(ref).expanduser()
    if not path.is_dir():
        raise UserError(f"--teacher {ref!r} is neither a models:/ or runs:/ URI nor a checkpoint directory: pass "
                        f"models:/NAME/VERSION, models:/NAME@champion or a folder with model.pt and animalclf.json.")
    return str(path.resolve())


def resolve_teacher(cfg: TrainConfig, saved: Optional[Mapping[str, Any]] = None) -> TrainConfig:
    """``cfg`` with its teacher pinned (:func:`pin_teacher`). ``saved``: the config of the run's
    latest checkpoint when it resumes; an unpinned ``--teacher`` (the champion) then means the
    teacher that run started with, not whatever is champion now."""
    if not cfg.teacher:
        return cfg
    before = (saved or {}).get("teacher")
    if before and cfg.teacher == TEACHER_CHAMPION:
        log.info("Resuming with the run's own teacher %s (the champion when it started)", before)
        return cfg.replace(teacher=before)
    return cfg.replace(teacher=pin_teacher(cfg.teacher, cfg.model_name))


def teacher_targets(ref: str, samples: Sequence[Sample], classes: Sequence[str], batch_size: int = 32) -> Targets:
    """The teacher's log-probabilities for every sample (its own preprocessing), by path. Raises
    :class:`UserError` when the teacher cannot be loaded or knows other classes."""
    from animalclf.evaluate.evaluation import predict_samples
    from animalclf.models.predict import Predictor

    teacher = Predictor.load(ref)
    if list(teacher.classes) != list(classes):
        raise UserError(f"Teacher {ref} knows other classes ({len(teacher.classes)}: {', '.join(teacher.classes[:5])}...) "
                        f"than this data ({len(classes)}): pick a teacher trained on these class folders.")
    start = time.perf_counter()
    probs, _ = predict_samples(teacher.model, teacher.meta, samples, classes, batch_size)
    logp = probs.clamp_min(1e-8).log()
    log.info("Teacher %s (%s) answered for %d images in %.1f s, once for the whole run", teacher.version,
             teacher.meta.get("arch"), len(samples), time.perf_counter() - start)
    return {path: row.tolist() for (path, _), row in zip(samples, logp)}


def targets_for(cfg: TrainConfig, split: Split) -> Optional[Targets]:
    """The teacher's answers for every image of ``split`` (training and validation, so CV folds
    and the validation's teacher agreement have theirs), or ``None`` without ``cfg.teacher``."""
    if not cfg.teacher:
        return None
    return teacher_targets(cfg.teacher, [*split.train, *split.val], split.classes)
