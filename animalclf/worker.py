"""The Ray Train side: the per-worker loop around the engine, and the ``TorchTrainer`` that runs it.

Nothing else lives here: what to train on comes from :mod:`animalclf.datasource`, the epoch from
:mod:`animalclf.engine`, the checkpoint format from :mod:`animalclf.checkpoint`. The driver
(:mod:`animalclf.training`) and each Tune trial build the trainer with :func:`make_trainer`.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Sequence

import torch
from torch import nn

from animalclf import cv, tracking
from animalclf.checkpoint import fold_dir, load_train_state, save_checkpoint, unwrap
from animalclf.config import TrainConfig, better
from animalclf.datasource import source_of
from animalclf.engine import evaluate, lr_factor, make_ema, set_lr, train_one_epoch
from animalclf.logs import fmt_seconds, setup_logging
from animalclf.model import Preprocess, build_model, frozen_modules, preprocess_for
from animalclf.monitoring import TrainingMetrics
from animalclf.predict import FlipAverage
from animalclf.probe import init_head
from animalclf.split import Split

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


@dataclass
class _Progress:
    """What survives a restart: epochs done, metric history, early-stopping state."""

    epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    best: Optional[float] = None
    bad_epochs: int = 0

    def record(self, cfg: TrainConfig, metrics: dict[str, Any]) -> bool:
        """Add an epoch; return whether early stopping says stop."""
        value = metrics[cfg.metric]
        if better(value, self.best, cfg.mode):
            self.best, self.bad_epochs = value, 0
        else:
            self.bad_epochs += 1
        stop = cfg.patience > 0 and self.bad_epochs >= cfg.patience and metrics["epoch"] < cfg.epochs
        metrics[f"best_{cfg.metric}"] = self.best
        metrics["early_stopped"] = int(stop)
        self.epoch = metrics["epoch"]
        self.history.append({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        return stop


def _build(cfg: TrainConfig, n_classes: int, device: torch.device):
    """Model (on ``device`` before its optimizer exists, so a resumed optimizer's state lands there
    too), the modules kept in eval mode, and the optimizer."""
    model = build_model(cfg.arch, n_classes, cfg.unfreeze, cfg.weights, cfg.dropout, cfg.rotation_pool).to(device)
    frozen = frozen_modules(model, cfg.freeze_bn)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay)
    return model, frozen, optimizer


def _resume(models: Sequence[nn.Module], optimizers: Sequence[torch.optim.Optimizer],
            rank: int) -> tuple[_Progress, list[dict[str, Any]]]:
    """Ray Train's checkpoint after a restart (every fold's weights and optimizer, progress), or a
    fresh start. Also returns each fold's saved train state (empty on a fresh start); with
    ``--ema-decay``, ``model.pt`` holds the average (kept under ``"average"``) and the state the
    trained weights."""
    import ray.train

    resumed = ray.train.get_checkpoint()
    if not resumed:
        return _Progress(), []
    states = []
    with resumed.as_directory() as d:
        for i, (model, optimizer) in enumerate(zip(models, optimizers)):
            where = fold_dir(d, i)
            state = load_train_state(where)
            saved = torch.load(where / "model.pt", map_location="cpu", weights_only=True)
            model.load_state_dict(state["model"] if "model" in state else saved)
            optimizer.load_state_dict(state["optimizer"])
            states.append({**state, "average": saved} if "ema_steps" in state else state)
    progress = _Progress(**{k: states[0][k] for k in ("epoch", "history", "best", "bad_epochs")})
    if rank == 0:
        log.info("Resumed from checkpoint after epoch %d", progress.epoch)
    return progress, states


def _emas(cfg: TrainConfig, models: Sequence[nn.Module], states: Sequence[dict[str, Any]]) -> list[Optional[Any]]:
    """One weight average per model with ``--ema-decay`` (``None`` each without), resumed where a
    checkpoint holds one."""
    if not cfg.ema_decay:
        return [None] * len(models)
    emas = [make_ema(unwrap(model), cfg.ema_decay) for model in models]
    for ema, state in zip(emas, states):
        if "ema_steps" in state:
            ema.module.load_state_dict(state["average"])
            ema.n_averaged.fill_(state["ema_steps"])
    return emas


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


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train worker: build, resume, train, evaluate, report a checkpoint every epoch."""
    import ray.train
    import ray.train.torch

    setup_logging()
    cfg = TrainConfig.from_dict(config["cfg"])
    split = Split(**config["split"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(cfg.seed)
    device = ray.train.torch.get_device()
    pre = preprocess_of(cfg)
    n_classes = len(split.classes)

    folds = cv.fold_splits(split, cfg.cv, cfg.seed) if cfg.cv > 1 else [split]  # CV: K models in lockstep
    built = [_build(cfg, n_classes, device) for _ in folds]
    progress, states = _resume([b[0] for b in built], [b[2] for b in built], rank)
    per_worker = max(1, cfg.batch_size // world)
    source, pin = source_of(cfg), device.type == "cuda"
    probed: list[dict[str, float]] = []  # per fold: what the probe's fit reports as training
    if cfg.head_init == "probe" and progress.epoch == 0:  # before DDP wraps the model (it broadcasts rank 0's)
        for i, (fold, (model, _, _)) in enumerate(zip(folds, built)):
            loader = source.probe_loader(fold, pre, per_worker, rank=rank, world=world, seed=cfg.seed,
                                         workers=cfg.loader_workers, pin_memory=pin)
            probed.append(init_head(model, loader, device, n_classes, channels_last=cfg.channels_last,
                                    amp=cfg.amp and device.type == "cuda"))
            if rank == 0:
                log.info("Linear probe%s: head fitted on the frozen features of %d training images in %s "
                         "(training accuracy %.4f)", f" (fold {i})" if len(folds) > 1 else "", probed[-1]["probe_images"],
                         fmt_seconds(probed[-1]["probe_seconds"]), probed[-1]["train_accuracy"])
    models = [ray.train.torch.prepare_model(b[0]) for b in built]
    emas = _emas(cfg, models, states)

    loaders = [(source.train_loader(f, pre, per_worker, rank=rank, world=world, seed=cfg.seed, workers=cfg.loader_workers,
                                    pin_memory=pin),
                source.val_loader(f, pre, per_worker, rank=rank, world=world, workers=cfg.loader_workers, pin_memory=pin))
               for f in folds]
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    tracker = None
    if rank == 0 and config.get("run_id"):
        tracking.configure(uri=config["tracking_uri"])  # credentials (DagsHub's too) from this env: inherited or the job's
        tracker = tracking.Tracker(config["run_id"])
    monitor = TrainingMetrics(config.get("run_name") or cfg.name) if rank == 0 else None
    amp = cfg.amp and device.type == "cuda"
    if rank == 0 and len(folds) > 1:
        log.info("%d-fold CV: %s validation images per fold; each epoch trains every fold, scores are fold means",
                 len(folds), "/".join(str(len(f.val)) for f in folds))

    epoch_times: list[float] = []
    for epoch in range(progress.epoch, cfg.epochs):
        # the probe alone's fit (before DDP, above) is this epoch's training: its time counts too
        t0 = time.perf_counter() - (sum(p["probe_seconds"] for p in probed) if cfg.lr == 0 else 0.0)
        per_fold = []
        lr = cfg.lr * lr_factor(epoch, cfg.schedule_epochs or cfg.epochs, cfg.schedule, cfg.warmup_epochs)
        for i, (fold, model, ema, (_, frozen, optimizer), (train_loader, val_loader)) in enumerate(
                zip(folds, models, emas, built, loaders)):
            if cfg.lr == 0:  # the probe alone (validate() allows --lr 0 only so): its fit is the training, no idle pass
                seconds = probed[i]["probe_seconds"]
                tm = {**probed[i], "train_seconds": seconds, "train_images_per_sec": probed[i]["train_images"] / seconds}
            else:
                train_loader.set_epoch(epoch)
                set_lr(optimizer, lr)
                tm = train_one_epoch(model, train_loader, criterion, optimizer, device, n_classes, frozen=frozen,
                                     channels_last=cfg.channels_last, amp=amp, max_steps=cfg.max_steps_per_epoch, ema=ema)
            scored = ema.module if ema is not None else unwrap(model)  # what is checkpointed and served
            if tm["train_images"] == 0:
                raise RuntimeError(f"No training image could be read on worker {rank} (e.g. {fold.train[0][0]}): "
                                   f"the data must be visible at the same path on every node (shared storage or s3://).")
            vm, _ = evaluate(scored, val_loader, criterion, device, n_classes, channels_last=cfg.channels_last, amp=amp)
            if rank == 0 and vm["val_images"] < len(fold.val):  # files that stopped decoding were dropped
                log.warning("Skipped %d unreadable validation image(s) of %d", len(fold.val) - vm["val_images"], len(fold.val))
            if len(folds) > 1:  # CV also measures flip TTA on the same images (bench/quality.py)
                tta, _ = evaluate(FlipAverage(scored), val_loader, criterion, device, n_classes,
                                  channels_last=cfg.channels_last, amp=amp)
                vm.update({"val_tta_accuracy": tta["val_accuracy"], "val_tta_f1": tta["val_f1"]})
            per_fold.append({**tm, **vm})
        metrics: dict[str, Any] = {**(cv.aggregate(per_fold) if len(folds) > 1 else per_fold[0]), "epoch": epoch + 1,
                                   "epoch_seconds": time.perf_counter() - t0, "lr": lr}
        stop = progress.record(cfg, metrics)
        epoch_times.append(metrics["epoch_seconds"])
        if rank == 0:
            monitor.record(metrics)
            _log_epoch(cfg, metrics, epoch_times, stop)
            if tracker:
                tracker.log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, step=epoch + 1)
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if rank == 0:
                meta = checkpoint_meta(cfg, split.classes, metrics, epoch + 1)
                for i, (model, ema, (_, _, optimizer)) in enumerate(zip(models, emas, built)):
                    state = {**(asdict(progress) if i == 0 else {}), "optimizer": optimizer.state_dict()}
                    if ema is not None:  # model.pt is the average; resume needs the trained weights too
                        state.update(model={k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()},
                                     ema_steps=int(ema.n_averaged))
                    save_checkpoint(fold_dir(tmp, i), ema.module if ema is not None else model, meta, state)
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=checkpoint)
        if stop:
            if rank == 0:
                log.info("Early stop: %s did not improve for %d epochs (best %.4f)", cfg.metric, cfg.patience, progress.best)
            break


def make_trainer(cfg: TrainConfig, split: Split, run_id: Optional[str], *, name: Optional[str] = None,
                 callbacks: Sequence[Any] = (), tracking_uri: Optional[str] = None):
    """A ``TorchTrainer`` for ``cfg``: scaling, storage, best-k checkpoints, failure budget."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    inputs = source_of(cfg).trainer_inputs(split, preprocess_of(cfg), cfg.seed, cfg.num_workers)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": cfg.to_dict(), "split": asdict(split), "run_id": run_id, "tracking_uri": tracking_uri,
                           "run_name": name or cfg.name},
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
