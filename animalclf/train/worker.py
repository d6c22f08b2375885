"""The Ray Train side: the per-worker loop around the engine, and the ``TorchTrainer`` that runs it.

Nothing else lives here: what to train on comes from :mod:`animalclf.data.source`, the epoch from
:mod:`animalclf.train.engine`, the checkpoint format from :mod:`animalclf.models.checkpoint`. The driver
(:mod:`animalclf.train.run`) and each Tune trial build the trainer with :func:`make_trainer`.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Any, Optional, Sequence

import torch
from torch import nn

from animalclf import tracking
from animalclf.config import TrainConfig
from animalclf.data import folds as cv
from animalclf.data.loaders import Shard
from animalclf.data.source import source_of
from animalclf.data.split import Split
from animalclf.models.build import Preprocess, preprocess_for
from animalclf.models.checkpoint import fold_dir, save_checkpoint, unwrap
from animalclf.models.predict import FlipAverage
from animalclf.runtime.logs import fmt_seconds, setup_logging
from animalclf.runtime.progress import ProgressLog
from animalclf.train.engine import Distill, EpochSetup, evaluate, lr_factor, set_lr, train_one_epoch
from animalclf.train.monitoring import TrainingMetrics
from animalclf.train.probe import init_head
from animalclf.train.state import Progress, build_for_training, emas, resume

log = logging.getLogger(__name__)

__all__ = ["checkpoint_meta", "preprocess_of", "train_loop_per_worker", "make_trainer"]


def checkpoint_meta(cfg: TrainConfig, classes: Sequence[str], metrics: dict[str, Any], epoch: int) -> dict[str, Any]:
    """The JSON that makes a checkpoint self-describing."""
    return {
        "format": 1, "arch": cfg.arch, "classes": list(classes), "unfreeze": cfg.unfreeze, "dropout": cfg.dropout,
        "preprocess": preprocess_of(cfg).to_dict(), "epoch": epoch, "tta_flip": cfg.tta_flip,
        "rotation_pool": cfg.rotation_pool,
        "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))}, "config": cfg.to_dict(),
    }


def preprocess_of(cfg: TrainConfig) -> Preprocess:
    """The eval preprocessing ``cfg`` trains, evaluates and serves with."""
    return preprocess_for(cfg.arch, cfg.image_size, cfg.autocontrast)


def _log_epoch(cfg: TrainConfig, metrics: dict[str, Any], epoch_times: list[float], stop: bool) -> None:
    epoch = metrics["epoch"]
    eta = 0 if stop else sum(epoch_times) / len(epoch_times) * (cfg.epochs - epoch)
    log.info(
        "epoch %d/%d  train loss %.4f acc %.4f f1 %.4f | val loss %.4f acc %.4f f1 %.4f | %.1f img/s | %s | ETA %s",
        epoch, cfg.epochs, metrics["train_loss"], metrics["train_accuracy"], metrics["train_f1"], metrics["val_loss"],
        metrics["val_accuracy"], metrics["val_f1"], metrics["train_images_per_sec"], fmt_seconds(metrics["epoch_seconds"]),
        fmt_seconds(eta),
    )
    if "folds" in metrics:
        log.info("epoch %d: %d-fold CV val acc %.4f ± %.4f, f1 %.4f ± %.4f", epoch, metrics["folds"], metrics["val_accuracy"],
                 metrics["val_accuracy_std"], metrics["val_f1"], metrics["val_f1_std"])


@dataclass
class _Worker:
    """This worker's place in the run and what every fold trains with."""

    cfg: TrainConfig
    split: Split
    rank: int
    world: int
    device: torch.device

    @property
    def n_classes(self) -> int:
        return len(self.split.classes)

    @property
    def amp(self) -> bool:
        return self.cfg.amp and self.device.type == "cuda"

    @property
    def shard(self) -> Shard:
        """What this worker reads: its share of the batch and of the data."""
        return Shard(max(1, self.cfg.batch_size // self.world), self.rank, self.world, self.cfg.seed,
                     self.cfg.loader_workers, self.device.type == "cuda")


@dataclass
class _Fold:
    """One model in training (one per CV fold; one without CV) and what it trains with."""

    split: Split
    model: nn.Module
    frozen: list[nn.Module]
    optimizer: torch.optim.Optimizer
    ema: Optional[Any] = None
    train_loader: Any = None
    val_loader: Any = None
    probed: Optional[dict[str, float]] = None  # what the linear probe's fit reports as training
    targets: Optional[dict[str, list[float]]] = None  # the teacher's answers (animalclf.train.distill), or None


def _progress(w: _Worker, what: str, images: int, max_steps: Optional[int] = None) -> ProgressLog:
    """Rank 0's progress lines for a pass over its share of ``images`` (at most ``max_steps`` batches)."""
    share = math.ceil(images / w.world)
    if max_steps is not None:
        share = min(share, max_steps * w.shard.batch_size)
    return ProgressLog(what + (f" (worker 0 of {w.world})" if w.world > 1 else ""), share, enabled=w.rank == 0)


def _fold_name(i: int, folds: Sequence[Any]) -> str:
    return f" fold {i + 1}/{len(folds)}" if len(folds) > 1 else ""


def _probe_heads(w: _Worker, folds: Sequence[_Fold]) -> None:
    """Fit each fold's head on frozen features before training (``--head-init probe``); before DDP
    wraps the model, which broadcasts rank 0's weights."""
    source = source_of(w.cfg)
    for i, f in enumerate(folds):
        loader = source.probe_loader(f.split, preprocess_of(w.cfg), w.shard)
        f.probed = init_head(f.model, loader, EpochSetup(w.device, w.n_classes, channels_last=w.cfg.channels_last, amp=w.amp),
                             progress=_progress(w, f"Linear probe features{_fold_name(i, folds)}", len(f.split.train)))
        if w.rank == 0:
            log.info("Linear probe%s: head fitted on the frozen features of %d training images in %s "
                     "(training accuracy %.4f)", f" (fold {i})" if len(folds) > 1 else "", f.probed["probe_images"],
                     fmt_seconds(f.probed["probe_seconds"]), f.probed["train_accuracy"])


def _fold_epoch(w: _Worker, f: _Fold, epoch: int, lr: float, criterion: nn.Module, fold: str = "") -> dict[str, Any]:
    """Train one fold's model for an epoch (the probe alone: its fit is the training) and score it;
    ``fold`` names it in progress lines."""
    cfg = w.cfg
    where = f"epoch {epoch + 1}/{cfg.epochs}{fold}"
    if cfg.lr == 0:  # the probe alone (validate() allows --lr 0 only so): its fit is the training, no idle pass
        seconds = f.probed["probe_seconds"]
        tm = {**f.probed, "train_seconds": seconds, "train_images_per_sec": f.probed["train_images"] / seconds}
    else:
        f.train_loader.set_epoch(epoch)
        set_lr(f.optimizer, lr)
        distill = Distill(cfg.kd_weight, cfg.kd_temperature) if f.targets is not None else None
        tm = train_one_epoch(f.model, f.train_loader, f.optimizer,
                             EpochSetup(w.device, w.n_classes, criterion, f.frozen, cfg.channels_last, w.amp,
                                        cfg.max_steps_per_epoch, f.ema, distill),
                             progress=_progress(w, f"{where} training", len(f.split.train), cfg.max_steps_per_epoch))
    scored = f.ema.module if f.ema is not None else unwrap(f.model)  # what is checkpointed and served
    if tm["train_images"] == 0:
        raise RuntimeError(f"No training image could be read on worker {w.rank} (e.g. {f.split.train[0][0]}): "
                           f"the data must be visible at the same path on every node (shared storage or s3://).")
    scoring = EpochSetup(w.device, w.n_classes, criterion, channels_last=cfg.channels_last, amp=w.amp)
    vm, _ = evaluate(scored, f.val_loader, scoring, progress=_progress(w, f"{where} validation", len(f.split.val)))
    if w.rank == 0 and vm["val_images"] < len(f.split.val):  # files that stopped decoding were dropped
        log.warning("Skipped %d unreadable validation image(s) of %d", len(f.split.val) - vm["val_images"], len(f.split.val))
    if cfg.cv > 1:  # CV also measures flip TTA on the same images (bench/quality.py)
        tta, _ = evaluate(FlipAverage(scored), f.val_loader, scoring,
                          progress=_progress(w, f"{where} validation (flip TTA)", len(f.split.val)))
        vm.update({"val_tta_accuracy": tta["val_accuracy"], "val_tta_f1": tta["val_f1"]})
    return {**tm, **vm}


def _report(w: _Worker, folds: Sequence[_Fold], progress: Progress, metrics: dict[str, Any]) -> None:
    """Report the epoch's metrics to Ray Train, with a checkpoint of every fold from rank 0."""
    import ray.train

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if w.rank == 0:
            meta = checkpoint_meta(w.cfg, w.split.classes, metrics, metrics["epoch"])
            for i, f in enumerate(folds):
                state = {**(asdict(progress) if i == 0 else {}), "optimizer": f.optimizer.state_dict()}
                if f.ema is not None:  # model.pt is the average; resume needs the trained weights too
                    state.update(model={k: v.detach().cpu() for k, v in unwrap(f.model).state_dict().items()},
                                 ema_steps=int(f.ema.n_averaged))
                save_checkpoint(fold_dir(tmp, i), f.ema.module if f.ema is not None else f.model, meta, state)
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=checkpoint)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train worker: build, resume, train, evaluate, report a checkpoint every epoch."""
    import ray.train
    import ray.train.torch

    setup_logging()
    cfg = TrainConfig.from_dict(config["cfg"])
    ctx = ray.train.get_context()
    w = _Worker(cfg, Split(**_fetch(config["split"])), ctx.get_world_rank(), ctx.get_world_size(), ray.train.torch.get_device())
    torch.manual_seed(cfg.seed)
    splits = cv.fold_splits(w.split, cfg.cv, cfg.seed) if cfg.cv > 1 else [w.split]  # CV: K models in lockstep
    folds = [_Fold(s, *build_for_training(cfg, w.n_classes, w.device)) for s in splits]
    for f, targets in zip(folds, _fold_targets(config.get("teacher"), len(folds))):
        f.targets = targets
    progress, states = resume([f.model for f in folds], [f.optimizer for f in folds], w.rank)
    if cfg.head_init == "probe" and progress.epoch == 0:
        _probe_heads(w, folds)
    source, pre = source_of(cfg), preprocess_of(cfg)
    for f in folds:
        f.model = ray.train.torch.prepare_model(f.model)
        f.train_loader = source.train_loader(f.split, pre, w.shard, augment=cfg.augment, targets=f.targets)
        f.val_loader = source.val_loader(f.split, pre, w.shard, targets=f.targets)
    for f, ema in zip(folds, emas(cfg, [f.model for f in folds], states)):
        f.ema = ema
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    tracker = None
    if w.rank == 0 and config.get("run_id"):
        tracking.configure(uri=config["tracking_uri"])  # credentials (DagsHub's too) from this env: inherited or the job's
        tracker = tracking.Tracker(config["run_id"])
    monitor = TrainingMetrics(config.get("run_name") or cfg.name) if w.rank == 0 else None
    if w.rank == 0 and len(folds) > 1:
        log.info("%d-fold CV: %s validation images per fold; each epoch trains every fold, scores are fold means",
                 len(folds), "/".join(str(len(f.split.val)) for f in folds))

    epoch_times: list[float] = []
    for epoch in range(progress.epoch, cfg.epochs):
        # the probe alone's fit (before DDP, above) is this epoch's training: its time counts too
        t0 = time.perf_counter() - (sum((f.probed or {}).get("probe_seconds", 0.0) for f in folds) if cfg.lr == 0 else 0.0)
        lr = cfg.lr * lr_factor(epoch, cfg.schedule_epochs or cfg.epochs, cfg.schedule, cfg.warmup_epochs)
        per_fold = [_fold_epoch(w, f, epoch, lr, criterion, _fold_name(i, folds)) for i, f in enumerate(folds)]
        metrics: dict[str, Any] = {**(cv.aggregate(per_fold) if len(folds) > 1 else per_fold[0]), "epoch": epoch + 1,
                                   "epoch_seconds": time.perf_counter() - t0, "lr": lr}
        stop = progress.record(cfg, metrics)
        epoch_times.append(metrics["epoch_seconds"])
        if w.rank == 0:
            monitor.record(metrics)
            _log_epoch(cfg, metrics, epoch_times, stop)
            if tracker:
                tracker.log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, step=epoch + 1)
        _report(w, folds, progress, metrics)
        if stop:
            if w.rank == 0:
                log.info("Early stop: %s did not improve for %d epochs (best %.4f)", cfg.metric, cfg.patience, progress.best)
            break


def _fold_targets(value: Any, folds: int) -> list[Optional[dict[str, list[float]]]]:
    """Each fold's teacher answers: one mapping for every fold (one teacher), a list with one per
    fold (a teacher per fold: bench/distill.py's fold-matched teachers), or none."""
    targets = _fetch(value)
    if isinstance(targets, list):
        if len(targets) != folds:
            raise ValueError(f"{len(targets)} teachers' answers for {folds} folds")
        return targets
    return [targets] * folds


def _fetch(value: Any) -> Any:
    """A value the driver put in Ray's object store (the sample list), or the value itself."""
    import ray

    return ray.get(value) if isinstance(value, ray.ObjectRef) else value


def make_trainer(cfg: TrainConfig, split: Split, run_id: Optional[str], *, name: Optional[str] = None,
                 callbacks: Sequence[Any] = (), tracking_uri: Optional[str] = None, targets: Any = None):
    """A ``TorchTrainer`` for ``cfg``: scaling, storage, best-k checkpoints, failure budget.
    ``targets``: the teacher's answers (:mod:`animalclf.train.distill`; a list: one per CV fold),
    or an object ref to them, sent to the workers by reference like the sample list."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    import ray

    inputs = source_of(cfg).trainer_inputs(split, preprocess_of(cfg), cfg.seed, cfg.num_workers)
    # The sample list (and its groups) goes through the object store, once per node: in
    # train_loop_config it would be copied into every worker's config and the controller's
    # (about 100 MB a worker at ImageNet's 1.28M names).
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": cfg.to_dict(), "split": ray.put(asdict(split)), "run_id": run_id, "tracking_uri": tracking_uri,
                           "run_name": name or cfg.name,
                           "teacher": targets if targets is None or isinstance(targets, ray.ObjectRef) else ray.put(targets)},
        **inputs,
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker={"CPU": cfg.cpus_per_worker, **cfg.worker_resources}),
        run_config=RunConfig(
            name=name or cfg.name,
            storage_path=cfg.resolved_storage(),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints, checkpoint_score_attribute=cfg.metric,
                                               checkpoint_score_order=cfg.mode),
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            callbacks=list(callbacks),
        ),
    )
