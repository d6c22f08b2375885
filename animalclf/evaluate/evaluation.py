"""The one evaluation every consumer uses: a model (or checkpoint, or registered version) on a list
of samples, as a report and as per-image predictions for the promotion gate; and the export of a
checkpoint's inference part. Runs in the calling process, without Ray; the gate's passes over
the validation split go through a runner (:mod:`animalclf.runtime.isolate`) when one is given.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

from animalclf.config import TrainConfig
from animalclf.data.loaders import ImageList, make_loader
from animalclf.data.split import Sample, Split
from animalclf.data.transforms import eval_transform
from animalclf.errors import UserError
from animalclf.evaluate import promotion, registry
from animalclf.data.source import source_of
from animalclf.evaluate.cost import measure
from animalclf.evaluate.evidence import EVIDENCE_FILE, Costs, Decision, Evaluation
from animalclf.evaluate.promotion import Candidate, GateRules
from animalclf.evaluate.report import build_report
from animalclf.models.build import Preprocess
from animalclf.models.checkpoint import META_FILE, MODEL_FILE, load_model
from animalclf.models.predict import FlipAverage, Predictor
from animalclf.runtime.isolate import Runner, here
from animalclf.runtime.progress import ProgressLog
from animalclf.train.engine import EpochSetup, evaluate

log = logging.getLogger(__name__)

__all__ = ["predict_samples", "evaluate_model", "evaluate_checkpoint", "gate_evaluation", "report_and_gate_evaluation",
           "champion_evaluation", "cost_per_photo",
           "export_checkpoint", "promote_candidate", "GATE_EVIDENCE_TAG"]

GATE_EVIDENCE_TAG = "animalclf.gate_evidence"  # "out-of-fold" on a version published after CV
COST_PHOTOS = 10  # validation photos each model answers, one at a time, per timing round


def predict_samples(model: nn.Module, meta: dict[str, Any], samples: Sequence[Sample], classes: Sequence[str],
                    batch_size: int = 32, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Class probabilities and targets of ``model`` on ``samples`` (in order), with the model's own
    eval preprocessing and, when its meta says ``tta_flip``, the flip TTA the Predictor serves with."""
    if list(meta["classes"]) != list(classes):
        raise UserError(f"Model classes {meta['classes']} differ from the data's {list(classes)}.")
    loader = make_loader(ImageList(samples, eval_transform(Preprocess.from_dict(meta["preprocess"]))), batch_size)
    if meta.get("tta_flip"):
        model = FlipAverage(model)
    _, (probs, targets) = evaluate(model.to(device), loader, EpochSetup(torch.device(device), len(classes),
                                                                       channels_last=False), collect=True,
                                   progress=ProgressLog("Evaluation", len(samples)))
    if len(targets) != len(samples):
        raise UserError(f"Only {len(targets)} of {len(samples)} images could be read for the evaluation: fix or remove "
                        f"the unreadable files named above.")
    return probs, targets


def evaluate_model(model: nn.Module, meta: dict[str, Any], samples: Sequence[Sample], classes: Sequence[str],
                   batch_size: int = 32, device: str = "cpu") -> dict[str, Any]:
    """Evaluate a loaded model (with its checkpoint meta) on ``samples``; return the report dict."""
    probs, targets = predict_samples(model, meta, samples, classes, batch_size, device)
    return build_report(probs, targets, classes)


def evaluate_checkpoint(checkpoint_dir: str | Path, samples: Sequence[Sample], classes: Sequence[str],
                        batch_size: int = 32, device: str = "cpu") -> dict[str, Any]:
    """Evaluate a checkpoint on ``samples`` in this process; return the full report dict."""
    model, meta = load_model(checkpoint_dir, device)
    return evaluate_model(model, meta, samples, classes, batch_size, device)


def gate_evaluation(model: nn.Module, meta: dict[str, Any], samples: Sequence[Sample], classes: Sequence[str]) -> Evaluation:
    """Per-image predictions on ``samples``: what the promotion gate compares."""
    return _as_evaluation(samples, *predict_samples(model, meta, samples, classes))


def _as_evaluation(samples: Sequence[Sample], probs: torch.Tensor, targets: torch.Tensor) -> Evaluation:
    return Evaluation.from_probabilities([p for p, _ in samples], targets.numpy(), probs.numpy())


def report_and_gate_evaluation(model: nn.Module, meta: dict[str, Any], samples: Sequence[Sample],
                               classes: Sequence[str]) -> tuple[dict[str, Any], Evaluation]:
    """:func:`evaluate_model`'s report and :func:`gate_evaluation`'s predictions from one pass."""
    probs, targets = predict_samples(model, meta, samples, classes)
    return build_report(probs, targets, classes), _as_evaluation(samples, probs, targets)


def champion_evaluation(model_name: str, version: str, samples: Sequence[Sample], classes: Sequence[str],
                        run: Runner = here, *, load: Optional[Callable[[str], Predictor]] = None) -> Evaluation:
    """The champion's side of the gate on ``samples``. A version published after CV trained on every
    image, so its own predictions are no evidence: its stored out-of-fold predictions are used when
    they cover ``samples`` (same images, same labels); otherwise (or for any other version) its own
    predictions, the model loaded from the registry without unpickling (here; ``load(version)`` when
    the caller has it already), its pass through ``run``."""
    stored = _stored_out_of_fold(model_name, version)
    if stored is not None:
        sub = stored.subset(samples)
        if sub is not None:
            log.info("Champion v%s is scored on its stored out-of-fold predictions", version)
            return sub
        log.warning("Champion v%s was published after CV, but its out-of-fold predictions do not cover these %d "
                    "images (other data?): comparing its own predictions, on images it may have trained on.",
                    version, len(samples))
    champ = load(version) if load else Predictor.from_mlflow(registry.version_ref(model_name, version))
    return run(gate_evaluation, champ.model, champ.meta, samples, classes)


def _stored_out_of_fold(model_name: str, version: str) -> Evaluation | None:
    """A CV-published version's out-of-fold predictions (``report/out_of_fold.json`` on its run), or ``None``."""
    import json

    import mlflow
    from mlflow import MlflowClient

    mv = MlflowClient().get_model_version(model_name, version)
    if mv.tags.get(GATE_EVIDENCE_TAG) != "out-of-fold" or not mv.run_id:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(run_id=mv.run_id, artifact_path=f"report/{EVIDENCE_FILE}",
                                                        dst_path=tmp)
        except Exception as e:  # the gate turns this into "champion cannot be read" (refused unless forced)
            raise RuntimeError(f"v{version} was published after CV but its run {mv.run_id} has no readable "
                               f"report/{EVIDENCE_FILE} ({type(e).__name__})") from None
        return Evaluation.from_dict(json.loads(Path(local).read_text()))


def export_checkpoint(src: str | Path, dst: str | Path) -> Path:
    """Copy the inference part (weights + JSON) of a checkpoint to ``dst``, replaced whole: the new
    copy is complete beside it before the two trade places in one step (Linux ``renameat2``), and
    only then is the old one removed; a crash at any point leaves ``dst`` old or new, never half."""
    dst = Path(dst)
    tmp = dst.with_name(f".{dst.name}.new-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for f in (MODEL_FILE, META_FILE):
            shutil.copy2(Path(src) / f, tmp / f)
            with open(tmp / f, "rb") as fh:
                os.fsync(fh.fileno())
        if not dst.exists():
            tmp.rename(dst)
            return dst
        if not _exchange(tmp, dst):  # no renameat2: a moment without dst, but both copies whole
            old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
            dst.rename(old)
            tmp.rename(dst)
            tmp = old
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # the old copy after a swap; a partial new one after a failure
    return dst


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (``renameat2(RENAME_EXCHANGE)``); ``False`` where unsupported."""
    import ctypes
    import ctypes.util

    try:
        renameat2 = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def cost_per_photo(models: Sequence[tuple[nn.Module, dict[str, Any], str]], photos: Sequence[bytes]) -> list[float]:
    """Each ``(model, meta, version)``'s ms per photo as a :class:`Predictor` (:func:`animalclf.evaluate.cost.measure`)."""
    return measure([Predictor(m, meta, version=v) for m, meta, v in models], photos)


def promote_candidate(cfg: TrainConfig, version: str, model: nn.Module, meta: dict[str, Any], split: Split, *,
                      candidate: Evaluation | None = None, run: Runner = here) -> Decision:
    """Put registered ``version`` through the evidence gate against the current champion, both
    evaluated on ``split.val`` (the champion loaded from the registry without unpickling), and
    both timed per photo on the first :data:`COST_PHOTOS` of them (:mod:`animalclf.evaluate.cost`).
    ``candidate``: the candidate's predictions on ``split.val`` when they are not the model's own
    (after CV: the out-of-fold predictions, see :mod:`animalclf.evaluate.out_of_fold`). The passes
    over ``split.val`` and the timing go through ``run`` (e.g. :func:`animalclf.runtime.isolate.isolated`'s:
    a process that does nothing else, where the driver's own threads cannot slow one model's
    Python-bound steps more than the other's)."""
    @functools.cache  # evaluated, then timed: loaded from the registry once
    def champion(champion_version: str) -> Predictor:
        return Predictor.from_mlflow(registry.version_ref(cfg.model_name, champion_version))

    def champion_eval(champion_version: str) -> Evaluation:
        return champion_evaluation(cfg.model_name, champion_version, split.val, split.classes, run, load=champion)

    def costs_of(champion_version: Optional[str]) -> Costs:
        photos = [source_of(cfg).read(path) for path, _ in split.val[:COST_PHOTOS]]
        mine = (model, meta, str(version))
        if champion_version is None:
            return Costs(run(cost_per_photo, [mine], photos)[0])
        theirs = champion(champion_version)
        cand_ms, champ_ms = run(cost_per_photo, [mine, (theirs.model, theirs.meta, champion_version)], photos)
        log.info("Cost per photo (Predictor, 1 thread, decode + preprocess included, %d photos): v%s %.1f ms, "
                 "champion v%s %.1f ms", len(photos), version, cand_ms, champion_version, champ_ms)
        return Costs(cand_ms, champ_ms)

    if candidate is None:
        candidate = run(gate_evaluation, model, meta, split.val, split.classes)
    rules = GateRules(min_improvement=cfg.min_improvement, margin=cfg.ni_margin, cheaper_by=cfg.cheaper_by,
                      max_ms_per_photo=cfg.max_ms_per_photo, force=cfg.force_promote)
    decision = promotion.promote(cfg.model_name, Candidate(str(version), candidate, split.classes), champion_eval,
                                 rules, costs_of=costs_of if split.val else None)
    log.info("Promotion of %s v%s: %s (%s)", cfg.model_name, version, "@champion" if decision.promote else "not promoted",
             decision.reason)
    return decision

