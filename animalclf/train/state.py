"""What a worker trains and what survives a restart: the model with its optimizer, the progress
(epochs done, history, early stopping), resuming from Ray Train's checkpoint, the weight averages."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch
from torch import nn

from animalclf.config import TrainConfig, better
from animalclf.models.build import build_model, frozen_modules
from animalclf.models.checkpoint import fold_dir, load_train_state, unwrap
from animalclf.train.engine import make_ema

log = logging.getLogger(__name__)

__all__ = ["Progress", "build_for_training", "resume", "emas"]


@dataclass
class Progress:
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


def build_for_training(cfg: TrainConfig, n_classes: int, device: torch.device):
    """Model (on ``device`` before its optimizer exists, so a resumed optimizer's state lands there
    too), the modules kept in eval mode, and the optimizer."""
    model = build_model(cfg.arch, n_classes, cfg.unfreeze, cfg.weights, cfg.dropout, cfg.rotation_pool).to(device)
    frozen = frozen_modules(model, cfg.freeze_bn)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay)
    return model, frozen, optimizer


def resume(models: Sequence[nn.Module], optimizers: Sequence[torch.optim.Optimizer],
            rank: int) -> tuple[Progress, list[dict[str, Any]]]:
    """Ray Train's checkpoint after a restart (every fold's weights and optimizer, progress), or a
    fresh start. Also returns each fold's saved train state (empty on a fresh start); with
    ``--ema-decay``, ``model.pt`` holds the average (kept under ``"average"``) and the state the
    trained weights."""
    import ray.train

    resumed = ray.train.get_checkpoint()
    if not resumed:
        return Progress(), []
    states = []
    with resumed.as_directory() as d:
        for i, (model, optimizer) in enumerate(zip(models, optimizers)):
            where = fold_dir(d, i)
            state = load_train_state(where)
            saved = torch.load(where / "model.pt", map_location="cpu", weights_only=True)
            model.load_state_dict(state["model"] if "model" in state else saved)
            optimizer.load_state_dict(state["optimizer"])
            states.append({**state, "average": saved} if "ema_steps" in state else state)
    progress = Progress(**{k: states[0][k] for k in ("epoch", "history", "best", "bad_epochs")})
    if rank == 0:
        log.info("Resumed from checkpoint after epoch %d", progress.epoch)
    return progress, states


def emas(cfg: TrainConfig, models: Sequence[nn.Module], states: Sequence[dict[str, Any]]) -> list[Optional[Any]]:
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
