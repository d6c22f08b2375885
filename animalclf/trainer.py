"""The Ray Train side: the per-worker loop around the engine, the TorchTrainer, and the driver
that validates inputs, tracks the run in MLflow and writes the final report.

``run_training`` is what ``ray_jobs/train.py`` calls and what each Tune trial calls.
"""

from __future__ import annotations

import logging
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import nn

from animalclf.checkpoint import META_FILE, load_model, load_train_state, save_checkpoint, unwrap
from animalclf.config import TrainConfig, check_runs_dir, runs_dir
from animalclf.data import ImageList, ShardSampler, Split, eval_transform, load_split, make_loader, train_transform
from animalclf.engine import evaluate, train_one_epoch
from animalclf.errors import UserError
from animalclf.logs import fmt_seconds, setup_logging
from animalclf.monitoring import TrainingMetrics
from animalclf.model import build_model, frozen_modules, preprocess_for
from animalclf.report import build_report, format_table, write_report
from animalclf import localray, remote_data, tracking

log = logging.getLogger(__name__)

__all__ = [
    "TrainOutcome", "train_loop_per_worker", "make_trainer", "fit", "publish", "prepare", "run_training",
    "start_tracker", "evaluate_checkpoint", "checkpoint_meta",
]


def _better(value: float, best: Optional[float], mode: str) -> bool:
    return best is None or (value > best if mode == "max" else value < best)


def checkpoint_meta(cfg: TrainConfig, classes: Sequence[str], metrics: dict[str, Any], epoch: int) -> dict[str, Any]:
    """The JSON that makes a checkpoint self-describing."""
    return {
        "format": 1, "arch": cfg.arch, "classes": list(classes), "unfreeze": cfg.unfreeze, "dropout": cfg.dropout,
        "preprocess": preprocess_for(cfg.arch, cfg.image_size).to_dict(), "epoch": epoch,
        "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))}, "config": cfg.to_dict(),
    }


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train worker: build, resume, train, evaluate, report a checkpoint every epoch."""
    import ray.train
    import ray.train.torch
    from torch.utils.data.distributed import DistributedSampler

    setup_logging()
    cfg = TrainConfig.from_dict(config["cfg"])
    split = Split(**config["split"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(cfg.seed)
    device = ray.train.torch.get_device()
    pre = preprocess_for(cfg.arch, cfg.image_size)
    n_classes = len(split.classes)

    model = build_model(cfg.arch, n_classes, cfg.unfreeze, cfg.weights, cfg.dropout)
    frozen = frozen_modules(model)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay)
    state: dict[str, Any] = {"epoch": 0, "history": [], "best": None, "bad_epochs": 0}
    resumed = ray.train.get_checkpoint()
    if resumed:
        with resumed.as_directory() as d:
            model.load_state_dict(torch.load(Path(d) / "model.pt", map_location="cpu", weights_only=True))
            saved = load_train_state(d)
        optimizer.load_state_dict(saved.pop("optimizer"))
        state.update(saved)
        if rank == 0:
            log.info("Resumed from checkpoint after epoch %d", state["epoch"])
    model = ray.train.torch.prepare_model(model)

    per_worker = max(1, cfg.batch_size // world)
    remote = remote_data.is_remote(split.train[0][0])
    if remote:  # Ray Data decodes on CPU workers; the trainer passed the datasets (see make_trainer)
        train_loader = remote_data.ShardBatches(ray.train.get_dataset_shard("train"), per_worker, shuffle_seed=cfg.seed + rank)
        val_loader = remote_data.ShardBatches(ray.train.get_dataset_shard("val"), per_worker)
        sampler = train_loader
    else:
        train_ds = ImageList(split.train, train_transform(pre))
        sampler = DistributedSampler(train_ds, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed)
        pin = device.type == "cuda"
        train_loader = make_loader(train_ds, per_worker, sampler=sampler, workers=cfg.loader_workers, seed=cfg.seed + rank, pin_memory=pin)
        val_loader = make_loader(ImageList(split.val, eval_transform(pre)), per_worker, sampler=ShardSampler(len(split.val), rank, world),
                                 workers=cfg.loader_workers, pin_memory=pin)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    tracker = None
    if rank == 0 and config.get("run_id"):
        tracking.configure(uri=config["tracking_uri"])  # credentials (DagsHub's too) from this env: inherited or the job's
        tracker = tracking.Tracker(config["run_id"])
    monitor = TrainingMetrics(config.get("run_name") or cfg.name) if rank == 0 else None
    amp = cfg.amp and device.type == "cuda"

    epoch_times: list[float] = []
    for epoch in range(state["epoch"], cfg.epochs):
        t0 = time.perf_counter()
        sampler.set_epoch(epoch)
        tm = train_one_epoch(model, train_loader, criterion, optimizer, device, n_classes, frozen=frozen,
                             channels_last=cfg.channels_last, amp=amp, max_steps=cfg.max_steps_per_epoch)
        if tm["train_images"] == 0:
            raise RuntimeError(f"No training image could be read on worker {rank} (e.g. {split.train[0][0]}): "
                               f"the data must be visible at the same path on every node (shared storage or s3://).")
        vm, _ = evaluate(unwrap(model), val_loader, criterion, device, n_classes, channels_last=cfg.channels_last, amp=amp)
        metrics: dict[str, Any] = {**tm, **vm, "epoch": epoch + 1, "epoch_seconds": time.perf_counter() - t0}
        value = metrics[cfg.metric]
        if _better(value, state["best"], cfg.mode):
            state["best"], state["bad_epochs"] = value, 0
        else:
            state["bad_epochs"] += 1
        stop = cfg.patience > 0 and state["bad_epochs"] >= cfg.patience and epoch + 1 < cfg.epochs
        metrics[f"best_{cfg.metric}"] = state["best"]
        metrics["early_stopped"] = int(stop)
        state["epoch"] = epoch + 1
        state["history"].append({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        epoch_times.append(metrics["epoch_seconds"])
        if rank == 0:
            monitor.record(metrics)
            if remote and vm["val_images"] < len(split.val):  # undecodable objects were dropped by Ray Data
                log.warning("Skipped %d unreadable validation image(s) of %d", len(split.val) - vm["val_images"], len(split.val))
            eta = sum(epoch_times) / len(epoch_times) * (cfg.epochs - epoch - 1)
            log.info(
                "epoch %d/%d  train loss %.4f acc %.4f f1 %.4f | val loss %.4f acc %.4f f1 %.4f | %.1f img/s | %s | ETA %s",
                epoch + 1, cfg.epochs, tm["train_loss"], tm["train_accuracy"], tm["train_f1"], vm["val_loss"],
                vm["val_accuracy"], vm["val_f1"], tm["train_images_per_sec"], fmt_seconds(metrics["epoch_seconds"]),
                fmt_seconds(0 if stop else eta),
            )
            if tracker:
                tracker.log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, step=epoch + 1)
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if rank == 0:
                train_state = {**state, "optimizer": optimizer.state_dict()}
                save_checkpoint(tmp, model, checkpoint_meta(cfg, split.classes, metrics, epoch + 1), train_state)
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=checkpoint)
        if stop:
            if rank == 0:
                log.info("Early stop: %s did not improve for %d epochs (best %.4f)", cfg.metric, cfg.patience, state["best"])
            break


def make_trainer(cfg: TrainConfig, split: Split, run_id: Optional[str], *, name: Optional[str] = None,
                 callbacks: Sequence[Any] = (), tracking_uri: Optional[str] = None):
    """A ``TorchTrainer`` for ``cfg``: scaling, storage, best-k checkpoints, failure budget."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    datasets = None
    if remote_data.is_remote(cfg.data or cfg.train_dir):
        datasets = remote_data.make_datasets(cfg.data, cfg.train_dir, cfg.val_dir, split,
                                             preprocess_for(cfg.arch, cfg.image_size), cfg.seed)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": cfg.to_dict(), "split": asdict(split), "run_id": run_id, "tracking_uri": tracking_uri,
                           "run_name": name or cfg.name},
        datasets=datasets,
        dataset_config=remote_data.WholeValDataConfig() if datasets else None,
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker={"CPU": cfg.cpus_per_worker}),
        run_config=RunConfig(
            name=name or cfg.name,
            storage_path=cfg.resolved_storage(),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints, checkpoint_score_attribute=cfg.metric,
                                               checkpoint_score_order=cfg.mode),
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            callbacks=list(callbacks),
        ),
    )


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


def evaluate_model(model: nn.Module, meta: dict[str, Any], samples, classes: Sequence[str], batch_size: int = 32,
                   device: str = "cpu") -> dict[str, Any]:
    """Evaluate a loaded model (with its checkpoint meta) on ``samples``; return the report dict."""
    if list(meta["classes"]) != list(classes):
        raise UserError(f"Model classes {meta['classes']} differ from the data's {list(classes)}.")
    from animalclf.model import Preprocess

    loader = make_loader(ImageList(samples, eval_transform(Preprocess.from_dict(meta["preprocess"]))), batch_size)
    _, collected = evaluate(model.to(device), loader, nn.CrossEntropyLoss(), torch.device(device), len(classes),
                            channels_last=False, collect=True)
    probs, targets = collected
    return build_report(probs, targets, classes)


def evaluate_checkpoint(checkpoint_dir: str | Path, samples, classes: Sequence[str], batch_size: int = 32,
                        device: str = "cpu") -> dict[str, Any]:
    """Evaluate a checkpoint on ``samples`` in this process; return the full report dict."""
    model, meta = load_model(checkpoint_dir, device)
    return evaluate_model(model, meta, samples, classes, batch_size, device)


def export_checkpoint(src: str | Path, dst: str | Path) -> Path:
    """Copy the inference part (weights + JSON) of a checkpoint to ``dst``."""
    dst = Path(dst)
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in ("model.pt", META_FILE):
        shutil.copy2(Path(src) / f, tmp / f)
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)
    return dst


def prepare(cfg: TrainConfig) -> tuple[Split, Optional[str]]:
    """Everything that can fail on user input, before any Ray work: config, data, tracking."""
    cfg.validate()
    log.info("Outputs (checkpoints, reports%s): %s", ", local MLflow store" if cfg.track else "", check_runs_dir())
    if cfg.weights not in ("imagenet", "none") and not Path(cfg.weights).is_file():
        raise UserError(f"--weights {cfg.weights!r} is not a file: pass imagenet, none, or a state-dict file path.")
    remote = remote_data.is_remote(cfg.data or cfg.train_dir)
    split = (remote_data.load_remote_split if remote else load_split)(cfg.data, cfg.train_dir, cfg.val_dir, cfg.val_ratio, cfg.seed)
    if cfg.weights == "imagenet":
        build_model(cfg.arch, 2, 0, "imagenet")  # fail now, not on a worker, when weights can't be had
    uri = None
    if cfg.track:
        uri = tracking.configure()
        tracking.check_tracking(uri)
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
            tracker: Optional["tracking.Tracker"], key: str, register: bool = True) -> TrainOutcome:
    """Export the best checkpoint, evaluate it on the whole validation split, write the report,
    and (when tracking) log report, checkpoint and model on ``tracker``'s run and register it."""
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
        version = tracker.log_model(model, ckpt / META_FILE, torch.zeros(1, 3, size, size), cfg.model_name if register else None)
        tracker.set_tags({"animalclf.checkpoint": str(ckpt), "animalclf.model_version": version or ""})
    return TrainOutcome(checkpoint=str(ckpt), metrics=meta["metrics"], run_id=tracker.run_id if tracker else None,
                        report_dir=str(report_dir), report=report, model_version=version)


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
