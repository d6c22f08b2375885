"""The training driver: validate inputs before any Ray work, run the TorchTrainer, publish the best
checkpoint (export, report, MLflow run, registered version, promotion gate).

``run_training`` is what ``ray_jobs/train.py`` calls; each Tune trial calls :func:`fit` and the
search's driver :func:`publish`.
"""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from animalclf import localray, registry, tracking
from animalclf.checkpoint import META_FILE, load_model, load_train_state
from animalclf.config import TrainConfig, check_runs_dir, runs_dir
from animalclf.datasource import source_of
from animalclf.errors import UserError
from animalclf.evaluation import evaluate_model, export_checkpoint, promote_candidate
from animalclf.evidence import Decision
from animalclf.model import build_model
from animalclf.report import format_table, write_report
from animalclf.split import Split
from animalclf.worker import make_trainer

log = logging.getLogger(__name__)

__all__ = ["TrainOutcome", "prepare", "start_tracker", "fit", "publish", "run_training"]


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


def prepare(cfg: TrainConfig) -> tuple[Split, Optional[str]]:
    """Everything that can fail on user input, before any Ray work: config, data, tracking."""
    cfg.validate()
    out = check_runs_dir()
    if cfg.weights not in ("imagenet", "none") and not Path(cfg.weights).is_file():
        raise UserError(f"--weights {cfg.weights!r} is not a file: pass imagenet, none, or a state-dict file path.")
    split = source_of(cfg).split(cfg.val_ratio, cfg.seed)
    if cfg.weights == "imagenet":
        build_model(cfg.arch, 2, 0, "imagenet")  # fail now, not on a worker, when weights can't be had
    uri = None
    if cfg.track:
        uri = tracking.configure()
        tracking.check_tracking(uri)
    log.info("Outputs (checkpoints, reports%s): %s", ", local MLflow store" if uri and uri.startswith("sqlite") else "", out)
    return split, uri


def fit(cfg: TrainConfig, split: Split, tracker: Optional["tracking.Tracker"], *, name: Optional[str] = None,
        callbacks: Sequence[Any] = ()):
    """Run the TorchTrainer; mark the MLflow run FAILED if training fails. Returns Ray's Result."""
    import mlflow

    localray.init_ray()
    log.info("Run %s: training %s (unfreeze %d) on %d workers: %d train / %d val images, %d classes", name or cfg.name,
             cfg.arch, cfg.unfreeze, cfg.num_workers, len(split.train), len(split.val), len(split.classes))
    trainer = make_trainer(cfg, split, tracker.run_id if tracker else None, name=name or cfg.name, callbacks=callbacks,
                           tracking_uri=mlflow.get_tracking_uri() if tracker else None)
    previous = signal.getsignal(signal.SIGINT)
    try:
        return trainer.fit()
    except SystemExit:  # Ray Train's SIGINT handler aborts the run, then exits 0: an interrupt, not success
        if tracker:
            tracker.end("KILLED")
        raise KeyboardInterrupt("SIGINT during training") from None
    except BaseException as e:
        if tracker:
            tracker.end("KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
        raise
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, previous)  # Train leaves its handler behind, swallowing later Ctrl-C


def publish(cfg: TrainConfig, split: Split, checkpoint_dir: str | Path, history: Sequence[dict[str, Any]],
            tracker: Optional["tracking.Tracker"], key: str, register: bool = True, promote: bool = True,
            eligible: bool = True) -> TrainOutcome:
    """Export the best checkpoint, evaluate it on the whole validation split, write the report,
    and (when tracking) log report, checkpoint and model on ``tracker``'s run, register it and put
    it through the promotion gate (:func:`animalclf.evaluation.promote_candidate`)."""
    out_root = runs_dir()
    ckpt = export_checkpoint(checkpoint_dir, out_root / "models" / key)
    model, meta = load_model(ckpt)
    report = evaluate_model(model, meta, split.val, split.classes)
    report["history"] = [dict(h) for h in history]
    report_dir = out_root / "reports" / key
    write_report(report_dir, report)
    log.info("Validation report of the best checkpoint (epoch %s):\n%s", meta["epoch"], format_table(report))
    version = None
    if tracker:
        tracker.log_metrics({"best_val_accuracy": report["accuracy"], "best_val_f1": report["macro_avg"]["f1"],
                             "best_epoch": meta["epoch"]}, step=meta["epoch"])
        tracker.log_artifacts(report_dir, "report")
        tracker.log_artifacts(ckpt, "checkpoint")
        size = meta["preprocess"]["crop_size"]
        name = cfg.model_name if register else None
        version = tracker.log_model(model, ckpt / META_FILE, torch.zeros(1, 3, size, size), name)
        tracker.set_tags({"animalclf.checkpoint": str(ckpt), "animalclf.model_version": version or ""})
        if version:
            registry.tag_version(cfg.model_name, version, split.classes, {"animalclf.run_id": tracker.run_id})
    out = TrainOutcome(checkpoint=str(ckpt), metrics=meta["metrics"], run_id=tracker.run_id if tracker else None,
                       report_dir=str(report_dir), report=report, model_version=version)
    if version and promote:
        out.decision = promote_candidate(cfg, version, model, meta, split, eligible=eligible)
        tracker.set_tags({"animalclf.promoted": out.decision.promote, "animalclf.champion_version":
                          version if out.decision.promote else (out.decision.champion_version or "")})
    return out


def start_tracker(cfg: TrainConfig, split: Split, name: str, parent_run_id: Optional[str] = None,
                  tags: Optional[dict[str, str]] = None) -> Optional["tracking.Tracker"]:
    """An MLflow run with the config and data sizes as params (``None`` with ``track`` off)."""
    if not cfg.track:
        return None
    params = {**cfg.to_dict(), "num_classes": len(split.classes), "train_images": len(split.train), "val_images": len(split.val)}
    tracker = tracking.Tracker.start(cfg.experiment, name, params, tags={"animalclf.kind": "train", **(tags or {})},
                                     parent_run_id=parent_run_id)
    log.info("MLflow run %s in experiment %r", tracker.run_id, cfg.experiment)
    return tracker


def run_training(cfg: TrainConfig, *, split: Optional[Split] = None) -> TrainOutcome:
    """Validate, train on Ray, evaluate the best checkpoint, track and register it."""
    if split is None:
        split, _ = prepare(cfg)
    tracker = start_tracker(cfg, split, cfg.name)
    result = fit(cfg, split, tracker)
    best = result.get_best_checkpoint(cfg.metric, cfg.mode) or result.checkpoint
    if best is None:
        raise RuntimeError("Training finished without a checkpoint")
    with (result.checkpoint or best).as_directory() as d:  # the latest holds the whole history
        history = (load_train_state(d) or {}).get("history", [])
    with best.as_directory() as d:
        out = publish(cfg, split, d, history, tracker, key=tracker.run_id if tracker else cfg.name)
    if tracker:
        tracker.end("FINISHED")
    out.epochs_run = int(result.metrics.get("epoch", 0))
    return out
