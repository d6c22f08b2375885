"""Linear-probe head initialisation (``--head-init probe``, LP-FT).

A new head starts random, and with a few hundred photos a fine-tune takes only a few dozen optimizer
steps: the head is still far from fitted when training ends (bench/RESULTS.md, "Quality"). Before
the first epoch, :func:`init_head` fits the head alone, to convergence, on the frozen pretrained
features of the training images (one forward pass, then an L2-regularised multinomial logistic
regression by L-BFGS); fine-tuning then starts from that head. This is "LP-FT" (Kumar et al., ICLR
2022: "Fine-Tuning can Distort Pretrained Features and Underperform Out-of-Distribution").

Only a fresh start probes: a resumed run already has its head. With several workers, each extracts
the features of its own share and all ranks fit the same head on the gathered set.
"""

from __future__ import annotations

import time
from typing import Iterable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from animalclf.runtime.progress import ProgressLog
from animalclf.train.engine import EpochMetrics, EpochSetup, autocast_for, to_device

__all__ = ["PROBE_L2", "head_of", "extract_features", "fit_linear", "init_head"]

PROBE_L2 = 1e-3
"""L2 penalty (on the mean cross-entropy) of the probe: 1e-4 to 1e-2 scored within 0.3 points of
each other (5-fold CV on the shared photos, 3 seeds, Lite0 at 160 px), so it is a constant, not a flag."""


def head_of(model: nn.Module) -> nn.Linear:
    """The new head's linear layer (``model.classifier`` is dropout + linear, see :func:`build_model`)."""
    return model.classifier[-1]


@torch.no_grad()
def extract_features(model: nn.Module, loader: Iterable, device: torch.device, *, channels_last: bool = True,
                     amp: bool = False, progress: Optional[ProgressLog] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The pooled features the head sees (its input, caught by a forward pre-hook that runs after any
    :func:`~animalclf.models.build.pool_rotations` hook, so these are pooled too; the model in eval mode) and
    the labels, for every batch of ``loader``; float32 on CPU. ``progress`` counts the images."""
    was_training = model.training
    model.eval()
    feats, labels = [], []
    hook = model.classifier.register_forward_pre_hook(lambda module, args: feats.append(args[0].float().cpu()))
    try:
        for batch in loader:
            if batch is None:
                continue
            with autocast_for(device, amp):
                model(to_device(batch[0], device, channels_last))
            labels.append(torch.as_tensor(batch[1]).cpu())
            if progress is not None:
                progress.update(len(labels[-1]))
        if progress is not None:
            progress.done()
    finally:
        hook.remove()
        model.train(was_training)
    if not feats:
        return torch.empty(0, head_of(model).in_features), torch.empty(0, dtype=torch.long)
    return torch.cat(feats), torch.cat(labels).long()


def _gather(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every rank's features and labels, in rank order (unchanged without a process group)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, y
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, (x, y))
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def fit_linear(x: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float = PROBE_L2,
               max_iter: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression, ``mean CE + l2/2 |W|^2`` by L-BFGS in float64: the
    ``(weight, bias)`` of a ``Linear(x.shape[1], num_classes)``, as float32."""
    x64 = x.double()
    weight = torch.zeros(num_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], lr=1, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-9, tolerance_change=1e-12)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x64 @ weight.T + bias, y) + 0.5 * l2 * (weight * weight).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return weight.detach().float(), bias.detach().float()


def init_head(model: nn.Module, loader: Iterable, setup: EpochSetup, l2: float = PROBE_L2, *,
              progress: Optional[ProgressLog] = None) -> dict[str, float]:
    """Fit ``model``'s head on the frozen features of ``loader``'s images (gathered over ranks) and
    set it in place. Returns what an epoch of training reports for the fitted head on this worker's
    images (``train_loss/accuracy/f1/images``, over all workers) and ``probe_images`` (all ranks'),
    ``probe_seconds``: with ``--lr 0`` the probe is the training. ``progress`` counts the feature
    pass's images (the long part: the fit takes seconds)."""
    device, num_classes = setup.device, setup.num_classes
    start = time.perf_counter()
    x_local, y_local = extract_features(model, loader, device, channels_last=setup.channels_last, amp=setup.amp,
                                        progress=progress)
    x, y = _gather(x_local, y_local)
    if len(y) == 0:
        raise RuntimeError("The linear probe found no training image to fit the head on.")
    weight, bias = fit_linear(x, y, num_classes, l2)
    head = head_of(model)
    with torch.no_grad():
        head.weight.copy_(weight.to(head.weight.device))
        head.bias.copy_(bias.to(head.bias.device))
    metrics = EpochMetrics(num_classes, device)
    if len(y_local):
        logits = x_local @ weight.T + bias
        metrics.update(F.cross_entropy(logits, y_local).to(device), logits.to(device), y_local.to(device))
    return {**metrics.compute("train"), "probe_images": float(len(y)), "probe_seconds": time.perf_counter() - start}
