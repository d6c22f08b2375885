"""Publishing a run's best checkpoint: exported beside the runs, evaluated and reported, logged
and registered in MLflow, and put through the promotion gate; and the run's MLflow tracker."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence


from animalclf import tracking
from animalclf.config import TrainConfig, runs_dir
from animalclf.data import s3
from animalclf.data.split import Split
from animalclf.evaluate import registry
from animalclf.evaluate.evaluation import export_checkpoint, promote_candidate, report_and_gate_evaluation
from animalclf.evaluate.evidence import EVIDENCE_FILE, Decision
from animalclf.evaluate.out_of_fold import OutOfFold
from animalclf.evaluate.report import format_table, write_report
from animalclf.models.checkpoint import load_model
from animalclf.runtime.isolate import Runner, isolated

log = logging.getLogger(__name__)

__all__ = ["TrainOutcome", "Best", "CVEvidence", "publish", "start_tracker", "cv_figures"]


@dataclass
class TrainOutcome:
    """What a finished run produced and where it is."""

    checkpoint: str
    metrics: dict[str, Any]
    run_id: Optional[str]
    report_dir: str
    report: dict[str, Any] = field(repr=False)
    model_version: Optional[str] = None
    epochs_run: int = 0
    decision: Optional[Decision] = None


@dataclass(frozen=True)
class Best:
    """The checkpoint a run publishes and the metric history of the run that made it."""

    directory: str | Path
    history: Sequence[dict[str, Any]]


@dataclass(frozen=True)
class CVEvidence:
    """What a model published after cross-validation (which saw every image) is judged by: the fold
    models' out-of-fold predictions, and the CV figures tagged on its version before the gate."""

    out_of_fold: OutOfFold
    version_tags: dict[str, Any]


def report_dir_of(key: str) -> Path:
    """Where a run's report (and a search's own outputs, in ``search/``) goes: ``runs/reports/<key>``."""
    return runs_dir() / "reports" / key


def publish(cfg: TrainConfig, split: Split, best: Best, tracker: Optional["tracking.Tracker"], key: str,
            cv: Optional[CVEvidence] = None) -> TrainOutcome:
    """Export the best checkpoint, evaluate it on the whole validation split, write the report,
    and (when tracking) log report, checkpoint and model on ``tracker``'s run, register it and put
    it through the promotion gate (:func:`animalclf.evaluate.evaluation.promote_candidate`). With
    ``cv``, the report and the gate's candidate side are the out-of-fold predictions instead of the
    model's own, and its tags go on the registered version before the gate runs (so it is never
    champion without them). The passes over the validation split run in a Ray actor of their own
    (:func:`animalclf.runtime.isolate.isolated`), so that this driver's memory does not grow with it."""
    with isolated(env=s3.client_env()) as run:  # the validation images may be in a bucket
        return _publish(cfg, split, best, tracker, key, cv, run)


def _publish(cfg: TrainConfig, split: Split, best: Best, tracker: Optional["tracking.Tracker"], key: str,
             cv: Optional[CVEvidence], run: Runner) -> TrainOutcome:
    evidence, version_tags = (cv.out_of_fold, cv.version_tags) if cv else (None, None)
    checkpoint_dir, history = best.directory, best.history
    out_root = runs_dir()
    ckpt = export_checkpoint(checkpoint_dir, out_root / "models" / key)
    model, meta = load_model(ckpt)
    report, own = (evidence.report(), None) if evidence else \
        run(report_and_gate_evaluation, model, meta, split.val, split.classes)
    report["history"] = [dict(h) for h in history]
    report_dir = report_dir_of(key)
    write_report(report_dir, report)
    if evidence:  # what the gate reads when this version is the champion a later candidate meets
        (report_dir / EVIDENCE_FILE).write_text(json.dumps(evidence.evaluation().to_dict()))
    log.info("%s of the %s (epoch %s):\n%s", "Out-of-fold report" if evidence else "Validation report",
             "published model" if evidence else "best checkpoint", meta["epoch"], format_table(report))
    version = None
    if tracker:
        tracker.log_metrics({"best_val_accuracy": report["accuracy"], "best_val_f1": report["macro_avg"]["f1"],
                             "best_epoch": meta["epoch"]}, step=meta["epoch"])
        tracker.log_artifacts(report_dir, "report")
        tracker.log_artifacts(ckpt, "checkpoint")
        version = tracker.log_model(ckpt, cfg.model_name)
        tracker.set_tags({"animalclf.checkpoint": str(ckpt), "animalclf.model_version": version or ""})
        if version:
            registry.tag_version(cfg.model_name, version, split.classes,
                                 {"animalclf.run_id": tracker.run_id, **(version_tags or {})})
    out = TrainOutcome(checkpoint=str(ckpt), metrics=meta["metrics"], run_id=tracker.run_id if tracker else None,
                       report_dir=str(report_dir), report=report, model_version=version)
    if version:
        out.decision = promote_candidate(cfg, version, model, meta, split, run=run,
                                         candidate=evidence.evaluation(split.val) if evidence else own)
        tracker.set_tags({"animalclf.promoted": out.decision.promote, "animalclf.champion_version":
                          version if out.decision.promote else (out.decision.champion_version or "")})
    return out


def start_tracker(cfg: TrainConfig, split: Split, name: str, parent_run_id: Optional[str] = None,
                  tags: Optional[dict[str, str]] = None) -> Optional["tracking.Tracker"]:
    """An MLflow run with the config and data sizes as params (``None`` with ``track`` off)."""
    if not cfg.track:
        return None
    params = {**cfg.to_dict(), "num_classes": len(split.classes), "train_images": len(split.train), "val_images": len(split.val),
              "photo_groups": split.group_count()}
    tracker = tracking.Tracker.start(cfg.experiment, name, params, tags={"animalclf.kind": "train", **(tags or {})},
                                     parent_run_id=parent_run_id)
    log.info("MLflow run %s in experiment %r: %s", tracker.run_id, cfg.experiment, tracking.run_link(tracker.run_id))
    return tracker


def cv_figures(scores: dict[str, Any]) -> dict[str, float]:
    """The CV estimate of one epoch's fold means: ``cv_val_accuracy``, ``cv_val_accuracy_std``, ..."""
    return {f"cv_{k}": scores[k] for k in ("val_accuracy", "val_accuracy_std", "val_f1", "val_f1_std", "val_loss",
                                            "val_loss_std") if k in scores}
