"""The training driver: validate inputs before any Ray work, run the TorchTrainer, publish the best
checkpoint (export, report, MLflow run, registered version, promotion gate).

``run_training`` is what ``ray_jobs/train.py`` calls; each Tune trial calls :func:`fit` and the
search's driver :func:`publish`.
"""

from __future__ import annotations

import json
import logging
import signal
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from animalclf import tracking
from animalclf.config import TrainConfig, check_runs_dir
from animalclf.data import folds as cv
from animalclf.data.bucket import check_training_options
from animalclf.data.source import source_of
from animalclf.data.split import Split
from animalclf.errors import UserError
from animalclf.evaluate.evaluation import GATE_EVIDENCE_TAG
from animalclf.evaluate.out_of_fold import export_ensemble, out_of_fold
from animalclf.models.build import build_model
from animalclf.models.checkpoint import META_FILE, load_train_state, ray_checkpoints, read_meta
from animalclf.runtime import localray
from animalclf.runtime.isolate import isolated
from animalclf.train import distill
from animalclf.train.publish import Best, CVEvidence, TrainOutcome, cv_figures, publish, start_tracker
from animalclf.train.worker import make_trainer

log = logging.getLogger(__name__)

__all__ = ["prepare", "check_resumable", "fit", "failure_status", "publish_cv", "pin_teacher", "run_training"]


def prepare(cfg: TrainConfig) -> tuple[Split, Optional[str]]:
    """Everything that can fail on user input, before any Ray work: config, data, tracking."""
    cfg.validate()
    out = check_runs_dir()
    if cfg.weights not in ("imagenet", "none") and not Path(cfg.weights).is_file():
        raise UserError(f"--weights {cfg.weights!r} is not a file: pass imagenet, none, or a state-dict file path.")
    source = source_of(cfg)
    if source.kind == "bucket":
        check_training_options(cfg.augment, bool(cfg.teacher))
    split = source.split(cfg.val_ratio, cfg.seed, cfg.groups)
    if cfg.cv > 1:
        if source.kind != "folder":
            raise UserError(f"--cv needs a local (or shared) folder of class folders, not a {source.kind}: "
                            f"copy the data locally or drop --cv.")
        cv.fold_splits(split, cfg.cv, cfg.seed)  # a class with fewer than K images fails here, not on a worker
    if cfg.weights == "imagenet":
        build_model(cfg.arch, 2, 0, "imagenet")  # fail now, not on a worker, when weights can't be had
    uri = None
    if cfg.track:
        uri = tracking.configure()
        tracking.check_tracking(uri)
    log.info("Outputs (checkpoints, reports%s): %s", ", local MLflow store" if uri and uri.startswith("sqlite") else "", out)
    return split, uri


# What a checkpoint's weights and optimizer state are shaped by (resuming under other values fails
# deep inside the worker, e.g. an optimizer group of another size) and what its model computes (a
# resumed run would mix two models' epochs), so the driver refuses first.
RESUME_KEYS = ("arch", "unfreeze", "cv", "rotation_pool", "autocontrast", "teacher")


def check_resumable(cfg: TrainConfig, split: Split, name: str) -> None:
    """Raise :class:`UserError` when run ``name`` already has a checkpoint, in local or ``s3://``
    storage, that this config cannot resume (another arch, ``unfreeze``, fold count, rotation pool,
    autocontrast or class list)."""
    storage = cfg.resolved_storage()
    meta = _latest_checkpoint_meta(storage, name)
    if meta is None:
        return
    defaults = TrainConfig()  # a key an older checkpoint lacks had its default
    saved = {k: meta.get("config", {}).get(k, getattr(defaults, k)) for k in RESUME_KEYS}
    changed = [f"{k} {saved[k]} -> {getattr(cfg, k)}" for k in RESUME_KEYS if saved[k] != getattr(cfg, k)]
    if meta.get("classes") != list(split.classes):
        changed.append(f"classes {len(meta.get('classes') or [])} -> {len(split.classes)}")
    if changed:
        where = f"{storage.rstrip('/')}/{name}"
        raise UserError(f"Run {name!r} in {storage} has checkpoints of another setup ({', '.join(changed)}), so it cannot "
                        f"resume: pass another --name to start afresh, or delete {where}.")


def _latest_checkpoint_meta(storage: str, name: str) -> Optional[dict[str, Any]]:
    """The ``animalclf.json`` of run ``name``'s newest checkpoint in ``storage`` (a folder or an
    ``s3://`` prefix), or ``None`` when it has none."""
    from animalclf.data import s3

    if not s3.is_remote(storage):
        ckpts = ray_checkpoints(Path(storage) / name)
        return read_meta(ckpts[-1]) if ckpts else None
    from pyarrow import fs

    fsys, base = s3.s3_filesystem(), f"{s3.strip(storage)}/{name}"
    try:
        found = fsys.get_file_info(fs.FileSelector(base, allow_not_found=True))
    except OSError as e:
        raise UserError(f"Cannot list {storage}/{name} ({e}): check the bucket and the AWS variables.") from None
    for d in sorted((i.path for i in found if i.type == fs.FileType.Directory and i.base_name.startswith("checkpoint_")),
                    reverse=True):
        meta = fsys.get_file_info(f"{d}/{META_FILE}")
        if meta.type == fs.FileType.File:
            return json.loads(s3.read_bytes(f"{s3.SCHEME}{d}/{META_FILE}"))
    return None


def failure_status(error: BaseException, stopped: Optional[Callable[[], bool]] = None) -> str:
    """The MLflow status of a run that ``error`` ended: KILLED for an interrupt or when ``stopped()``
    says the caller stopped it (Tune's ASHA: its trial fails as it is torn down), else FAILED."""
    return "KILLED" if isinstance(error, KeyboardInterrupt) or (stopped is not None and stopped()) else "FAILED"


def _kill_on_sigint(controller: Any) -> None:
    """Ray Train's SIGINT handler, replaced on a Ray this process started and stops: a Ctrl-C kills
    the run's controller (its workers go with it) and raises KeyboardInterrupt at once.

    Train's own handler waits for the controller to abort gracefully, up to 5 s for each worker:
    measured from Ctrl-C to ``make demo``'s exit mid fine-tune, 18 s on an idle machine and 31 s in
    CI, against 5 s this way. On a Ray of others' (a cluster, a `make head-start` head) its graceful
    abort stays."""
    import ray

    def on_sigint(signum, frame):
        try:
            ray.kill(controller, no_restart=True)
        except Exception as e:  # a lost head: nothing left to stop
            log.debug("ray.kill(TrainController): %s", e)
        raise KeyboardInterrupt("SIGINT during training")

    signal.signal(signal.SIGINT, on_sigint)


def fit(cfg: TrainConfig, split: Split, tracker: Optional["tracking.Tracker"], *, name: Optional[str] = None,
        callbacks: Sequence[Any] = (), targets: Any = None, stopped: Optional[Callable[[], bool]] = None):
    """Run the TorchTrainer; mark the MLflow run FAILED if training fails (KILLED if interrupted, or
    if ``stopped()`` is then true). Returns Ray's Result. ``targets``: the teacher's answers when
    ``cfg.teacher`` is set (:mod:`animalclf.train.distill`)."""
    import mlflow

    localray.init_ray()
    log.info("Run %s: training %s (unfreeze %d) on %d workers: %d train / %d val images, %d classes", name or cfg.name,
             cfg.arch, cfg.unfreeze, cfg.num_workers, len(split.train), len(split.val), len(split.classes))
    if cfg.teacher:
        log.info("Distilling from %s: loss = %.2f x labels + %.2f x teacher at temperature %g; augmentation %s",
                 cfg.teacher, 1 - cfg.kd_weight, cfg.kd_weight, cfg.kd_temperature, cfg.augment)
    trainer = make_trainer(cfg, split, tracker.run_id if tracker else None, name=name or cfg.name, callbacks=callbacks,
                           tracking_uri=tracking.shareable_uri(mlflow.get_tracking_uri()) if tracker else None,
                           targets=targets)
    previous = signal.getsignal(signal.SIGINT)
    if localray.drives_own_head():  # Ray Train registers its handler with the run's controller, in fit()
        trainer._register_sigint_handler = _kill_on_sigint
    try:
        return trainer.fit()
    except SystemExit:  # Ray Train's SIGINT handler aborts the run, then exits 0: an interrupt, not success
        if tracker:
            tracker.end("KILLED")
        raise KeyboardInterrupt("SIGINT during training") from None
    except BaseException as e:
        if tracker:
            tracker.end(failure_status(e, stopped))
        raise
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, previous)  # Train leaves its handler behind, swallowing later Ctrl-C


def _history(result) -> list[dict[str, Any]]:
    """The metric history held by a run's latest checkpoint."""
    with result.checkpoint.as_directory() as d:
        return (load_train_state(d) or {}).get("history", [])


def publish_cv(cfg: TrainConfig, split: Split, checkpoint_dir: str | Path, history: Sequence[dict[str, Any]],
               parent: Optional["tracking.Tracker"], key: str, targets: Any = None) -> TrainOutcome:
    """After CV, publish ``cfg.final`` in a child run of ``parent``. ``checkpoint_dir`` is the CV
    run's checkpoint of the epoch with the best fold mean (all K fold models): ``refit`` trains
    ``cfg`` on every image for that many epochs; ``ensemble`` serves those K models as one. Either
    way the report and the promotion gate use the fold models' out-of-fold predictions
    (:mod:`animalclf.evaluate.out_of_fold`), and the registered version carries the CV figures as
    ``animalclf.cv_*`` tags. ``targets``: the teacher's answers, for a refit that distils."""
    epoch = int(read_meta(checkpoint_dir)["epoch"])
    scores = next(h for h in history if int(h["epoch"]) == epoch)
    figures = cv_figures(scores)
    log.info("%d-fold CV chose %d epoch(s): val accuracy %.4f ± %.4f, macro F1 %.4f ± %.4f; final model: %s",
             cfg.cv, epoch, scores["val_accuracy"], scores.get("val_accuracy_std", 0.0), scores["val_f1"],
             scores.get("val_f1_std", 0.0), cfg.final)
    with isolated() as run:  # every image once more: in a process that ends with it, not the driver (--cv: a folder)
        evidence = run(out_of_fold, checkpoint_dir, split, cfg.cv, cfg.seed)
    everything = cv.refit_split(split)
    tags = {"animalclf.final": cfg.final, "animalclf.cv_folds": cfg.cv, "animalclf.cv_epoch": epoch,
            GATE_EVIDENCE_TAG: "out-of-fold", **{f"animalclf.{k}": f"{v:.4f}" for k, v in figures.items()}}
    if cfg.final == "ensemble":  # the fold models as they are
        final_cfg = cfg.replace(name=f"{cfg.name}-ensemble")
    else:  # the same schedule as the folds had, stopped at the chosen epoch
        final_cfg = cfg.replace(cv=0, epochs=epoch, schedule_epochs=cfg.schedule_epochs or cfg.epochs, patience=0,
                                name=f"{cfg.name}-refit")
    tracker = start_tracker(final_cfg, everything, final_cfg.name, parent.run_id if parent else None,
                            tags={"animalclf.kind": cfg.final, **{k: str(v) for k, v in tags.items()}})
    if tracker:
        tracker.log_metrics({**figures, "cv_epoch": epoch}, step=epoch)
    if cfg.final == "ensemble":
        with tempfile.TemporaryDirectory() as tmp:
            export_ensemble(checkpoint_dir, cfg.cv, tmp)
            out = publish(final_cfg, everything, Best(tmp, history), tracker, key, CVEvidence(evidence, tags))
    else:
        result = fit(final_cfg, everything, tracker, targets=targets)
        with result.checkpoint.as_directory() as d:  # the last epoch: the count CV chose
            out = publish(final_cfg, everything, Best(d, _history(result)), tracker, key, CVEvidence(evidence, tags))
    if tracker:
        tracker.end("FINISHED")
    out.epochs_run = epoch
    out.metrics.update(figures)
    return out


def _run_cv(cfg: TrainConfig, split: Split, targets: Any = None) -> TrainOutcome:
    """``--cv K``: the K fold models in lockstep (one run, fold means per epoch), then ``--final``
    from the checkpoint of the best fold-mean epoch."""
    tracker = start_tracker(cfg, split, cfg.name, tags={"animalclf.kind": "cv"})
    result = fit(cfg, split, tracker, targets=targets)
    history = _history(result)
    best = result.get_best_checkpoint(cfg.metric, cfg.mode) or result.checkpoint  # ties: what Ray kept
    if best is None:
        raise RuntimeError("Cross-validation finished without a checkpoint")
    with best.as_directory() as d:
        epoch = int(read_meta(d)["epoch"])
        if tracker:
            tracker.log_metrics({"cv_epoch": epoch}, step=0)
        if cfg.final != "none":
            out = publish_cv(cfg, split, d, history, tracker, key=tracker.run_id if tracker else cfg.name, targets=targets)
        else:
            scores = next(h for h in history if int(h["epoch"]) == epoch)
            out = TrainOutcome(checkpoint="", metrics={**scores, **cv_figures(scores)}, run_id=tracker.run_id if tracker else None,
                               report_dir="", report={"history": history}, epochs_run=epoch)
    if tracker:
        tracker.end("FINISHED")
    return out


def pin_teacher(cfg: TrainConfig, name: str) -> TrainConfig:
    """``cfg`` with its teacher pinned; a resumed run ``name`` keeps the one it started with."""
    if not cfg.teacher:
        return cfg
    saved = _latest_checkpoint_meta(cfg.resolved_storage(), name)
    return distill.resolve_teacher(cfg, (saved or {}).get("config"))


def run_training(cfg: TrainConfig, *, split: Optional[Split] = None, targets: Any = None) -> TrainOutcome:
    """Validate, train on Ray, evaluate the best checkpoint, track and register it (``cfg.cv``:
    cross-validate, then publish ``cfg.final``). ``targets``: the teacher's answers when the caller
    has them (one per CV fold, for fold-matched teachers), else computed here for ``--teacher``."""
    if split is None:
        split, _ = prepare(cfg)
    if targets is None:
        cfg = pin_teacher(cfg, cfg.name)
    check_resumable(cfg, split, cfg.name)  # before any MLflow run exists, and before the teacher's pass
    if targets is None:
        targets = distill.targets_for(cfg, split)
    if cfg.cv > 1:
        return _run_cv(cfg, split, targets)
    tracker = start_tracker(cfg, split, cfg.name)
    result = fit(cfg, split, tracker, targets=targets)
    best = result.get_best_checkpoint(cfg.metric, cfg.mode) or result.checkpoint
    if best is None:
        raise RuntimeError("Training finished without a checkpoint")
    with (result.checkpoint or best).as_directory() as d:  # the latest holds the whole history
        history = (load_train_state(d) or {}).get("history", [])
    with best.as_directory() as d:
        out = publish(cfg, split, Best(d, history), tracker, tracker.run_id if tracker else cfg.name)
    if tracker:
        tracker.end("FINISHED")
    out.epochs_run = int(result.metrics.get("epoch", 0))
    return out
