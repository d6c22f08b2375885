"""Train and evaluate one epoch. No Ray here: the Ray worker loop wraps these.

Metrics are torchmetrics objects, which all-reduce their state on ``compute()`` when a process
group is up, so every number is over the whole split, not one worker's shard.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence

import torch
import torch.nn.functional as F
import torchmetrics
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from animalclf.runtime.progress import ProgressLog

__all__ = ["Distill", "distill_loss", "EpochMetrics", "EpochSetup", "train_one_epoch", "evaluate", "autocast_for", "lr_factor", "set_lr", "to_device", "make_ema"]


def lr_factor(epoch: int, epochs: int, schedule: str = "constant", warmup: int = 0) -> float:
    """The multiple of the base learning rate for 0-based ``epoch`` of ``epochs``: 1 for
    ``constant``; for ``cosine``, a linear warm-up over ``warmup`` epochs ((e+1)/(warmup+1)), then a
    half cosine from 1 towards 0 over the remaining epochs. A function of the epoch alone, so a
    resumed run continues the same schedule without any scheduler state."""
    if schedule == "constant":
        return 1.0
    if schedule != "cosine":
        raise ValueError(f"unknown schedule {schedule!r}")
    if epoch < warmup:
        return (epoch + 1) / (warmup + 1)
    return 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup) / max(1, epochs - warmup)))


def make_ema(model: nn.Module, decay: float) -> AveragedModel:
    """An exponential moving average of ``model``'s parameters and buffers (BatchNorm statistics
    too): ``ema = decay * ema + (1 - decay) * weights`` after each step, ``ema.module`` the model."""
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every parameter group's learning rate."""
    for group in optimizer.param_groups:
        group["lr"] = lr


@dataclass(frozen=True)
class Distill:
    """How a student learns from its teacher: ``weight`` of the teacher's term in the loss, and the
    ``temperature`` that softens both distributions in it."""

    weight: float = 0.5
    temperature: float = 2.0


def distill_loss(logits: torch.Tensor, y: torch.Tensor, teacher: torch.Tensor, criterion: nn.Module,
                 distill: Distill) -> torch.Tensor:
    """``(1 - w) * criterion(logits, y) + w * T^2 * KL(teacher_T || student_T)`` (Hinton et al.),
    where ``teacher`` holds the teacher's log-probabilities (logits up to a constant) and ``_T``
    is the softmax at temperature ``T``; the ``T^2`` keeps the soft term's gradients on the scale
    of the hard one's."""
    w, t = distill.weight, distill.temperature
    hard = criterion(logits, y)
    if w == 0:
        return hard
    soft = F.kl_div(F.log_softmax(logits.float() / t, dim=1), F.log_softmax(teacher.float() / t, dim=1),
                    log_target=True, reduction="batchmean") * (t * t)
    return soft if w == 1 else (1 - w) * hard + w * soft


class EpochMetrics:
    """Loss, accuracy, macro F1 and the image count of one pass over a split; with a teacher's
    answers, also how often the model's top-1 agrees with the teacher's (``teacher_agreement``)."""

    def __init__(self, num_classes: int, device: torch.device):
        self.loss = torchmetrics.MeanMetric().to(device)
        self.acc = torchmetrics.classification.MulticlassAccuracy(num_classes, average="micro").to(device)
        self.f1 = torchmetrics.classification.MulticlassF1Score(num_classes, average="macro").to(device)
        self.images = torchmetrics.SumMetric().to(device)
        self.agreement = torchmetrics.MeanMetric().to(device)
        self.with_teacher = False

    def update(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor, teacher: Optional[torch.Tensor] = None) -> None:
        self.loss.update(loss.detach().float(), weight=y.numel())
        preds = logits.detach().argmax(dim=1)
        self.acc.update(preds, y)
        self.f1.update(preds, y)
        self.images.update(torch.tensor(float(y.numel()), device=y.device))
        if teacher is not None:
            self.with_teacher = True
            self.agreement.update((preds == teacher.argmax(dim=1)).float())

    def compute(self, prefix: str) -> dict[str, float]:
        out = {
            f"{prefix}_loss": self.loss.compute().item(),
            f"{prefix}_accuracy": self.acc.compute().item(),
            f"{prefix}_f1": self.f1.compute().item(),
            f"{prefix}_images": int(self.images.compute().item()),
        }
        if self.with_teacher:
            out[f"{prefix}_teacher_agreement"] = self.agreement.compute().item()
        return out


def autocast_for(device: torch.device, amp: bool):
    """bf16 autocast on CUDA when ``amp``; a no-op elsewhere (CPU autocast does not pay here)."""
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_device(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    """A batch on ``device``, channels-last when asked (the layout the model was converted to)."""
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@dataclass
class EpochSetup:
    """What a training epoch runs with besides the model, its data and its optimizer: the device,
    the class count and loss; ``frozen`` modules stay in eval mode; inputs channels-last; AMP;
    at most ``max_steps`` steps; an ``ema`` (see :func:`make_ema`) updated after every step;
    ``distill``: batches of ``(x, y, teacher)`` train on :func:`distill_loss`."""

    device: torch.device
    num_classes: int
    criterion: nn.Module = field(default_factory=nn.CrossEntropyLoss)
    frozen: Sequence[nn.Module] = ()
    channels_last: bool = True
    amp: bool = False
    max_steps: Optional[int] = None
    ema: Optional[AveragedModel] = None
    distill: Optional[Distill] = None


def _teacher(batch: Sequence, device: torch.device) -> Optional[torch.Tensor]:
    """A batch's teacher log-probabilities (its third element), on ``device``; ``None`` without."""
    return batch[2].to(device, non_blocking=True) if len(batch) > 2 else None


def train_one_epoch(model: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer,
                    setup: EpochSetup, *, progress: Optional[ProgressLog] = None) -> dict[str, float]:
    """One pass of training; returns ``train_loss/accuracy/f1/images``, ``train_seconds`` and
    ``train_images_per_sec`` (over all workers). ``progress`` counts this process's images."""
    device, criterion, channels_last, amp, ema = setup.device, setup.criterion, setup.channels_last, setup.amp, setup.ema
    frozen, max_steps, num_classes = setup.frozen, setup.max_steps, setup.num_classes
    model.train()
    for m in frozen:
        m.eval()
    metrics = EpochMetrics(num_classes, device)
    start = time.perf_counter()
    for step, batch in enumerate(loader):
        if max_steps is not None and step >= max_steps:
            break
        if batch is None:
            continue
        x, y = to_device(batch[0], device, channels_last), batch[1].to(device, non_blocking=True)
        teacher = _teacher(batch, device)
        with autocast_for(device, amp):
            logits = model(x)
            if setup.distill is not None and teacher is not None:
                loss = distill_loss(logits, y, teacher, criterion, setup.distill)
            else:
                loss = criterion(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if ema is not None:
            ema.update_parameters(getattr(model, "module", model))  # the weights inside DDP
        metrics.update(loss, logits, y, teacher)
        if progress is not None:
            progress.update(y.numel())
    if progress is not None:
        progress.done()
    out = metrics.compute("train")
    out["train_seconds"] = time.perf_counter() - start
    out["train_images_per_sec"] = out["train_images"] / max(out["train_seconds"], 1e-9)
    return out


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, setup: EpochSetup, collect: bool = False, *,
             progress: Optional[ProgressLog] = None) -> tuple[dict[str, float], Optional[tuple[torch.Tensor, torch.Tensor]]]:
    """One pass without gradients (``setup``'s device, classes, loss, layout and AMP); returns
    ``val_*`` metrics and, with ``collect``, this process's ``(probabilities, targets)`` on CPU.
    ``progress`` counts this process's images."""
    device, num_classes, criterion = setup.device, setup.num_classes, setup.criterion
    channels_last, amp = setup.channels_last, setup.amp
    model.eval()
    metrics = EpochMetrics(num_classes, device)
    probs, targets = [], []
    start = time.perf_counter()
    for batch in loader:
        if batch is None:
            continue
        x, y = to_device(batch[0], device, channels_last), batch[1].to(device, non_blocking=True)
        with autocast_for(device, amp):
            logits = model(x)
        logits = logits.float()
        metrics.update(criterion(logits, y), logits, y, _teacher(batch, device))
        if collect:
            probs.append(logits.softmax(dim=1).cpu())
            targets.append(y.cpu())
        if progress is not None:
            progress.update(y.numel())
    if progress is not None:
        progress.done()
    out = metrics.compute("val")
    out["val_seconds"] = time.perf_counter() - start
    collected = (torch.cat(probs), torch.cat(targets)) if collect and probs else None
    return out, collected
