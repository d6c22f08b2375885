"""Images/second of the engine's train step against the original notebook's plain loop, same model.

Both sides train torchvision EfficientNet-B0 (random init, ``weights="none"``: no ImageNet B0
weights offline; speed does not depend on the weight values) with a new 15-class dropout+linear
head, Adam lr 1e-3 over the trainable parameters, fp32, on the same pre-built batch of 224 px
tensors (so image decoding is not measured), at the same unfreeze depth:

* engine: ``animalclf.train.engine.train_one_epoch`` exactly as the Ray worker calls it: channels-last
  model and input, frozen feature layers kept in eval mode (frozen BatchNorm), and no autograd
  graph through frozen layers (their parameters do not require grad), torchmetrics updated per step.
* notebook: NCHW, ``model.train()`` on the whole model (BatchNorm of frozen layers still computes
  batch statistics and updates running stats), ``zero_grad / forward / loss / backward / step``.

Both at unfreeze 18 (full fine-tune) and at the default unfreeze 10. The two sides alternate
(A B A B ...) after one warm-up step each, so machine noise hits both; the ratio of the summed
times is printed with the per-round ratios and the load average.

    python bench/train_speed.py [--batch-size 32] [--steps 3] [--rounds 4] [--unfreeze 18 10]
    python bench/train_speed.py --quick
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

from animalclf.models.build import build_model, frozen_modules
from animalclf.train.engine import EpochSetup, train_one_epoch
from common import load_average

NUM_CLASSES = 15


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=32, help="images per step (default: 32)")
    p.add_argument("--image-size", type=int, default=224, help="(default: 224)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per side per round (default: 3)")
    p.add_argument("--rounds", type=int, default=4, help="A/B alternations per unfreeze depth (default: 4)")
    p.add_argument("--unfreeze", type=int, nargs="+", default=[18, 10], help="depths to measure (default: 18 10)")
    p.add_argument("--arch", default="efficientnet_b0", help="(default: efficientnet_b0, the notebook's model)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    p.add_argument("--quick", action="store_true", help="seconds-long smoke run (tiny images, 1 step, 1 round)")
    return p


def make_batch(batch_size: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, 3, size, size, generator=g)
    y = torch.randint(0, NUM_CLASSES, (batch_size,), generator=g)
    return x, y


class EngineSide:
    """The library's train step: ``train_one_epoch`` over ``steps`` copies of the batch."""

    name = "engine (channels-last, frozen BN)"

    def __init__(self, arch: str, unfreeze: int):
        torch.manual_seed(0)
        model = build_model(arch, NUM_CLASSES, unfreeze, "none")
        self.frozen = frozen_modules(model)
        self.model = model.to(memory_format=torch.channels_last)
        self.opt = torch.optim.Adam([p for p in self.model.parameters() if p.requires_grad], lr=1e-3)
        self.criterion = nn.CrossEntropyLoss()

    def run(self, batch, steps: int) -> float:
        t0 = time.perf_counter()
        train_one_epoch(self.model, [batch] * steps, self.opt,
                        EpochSetup(torch.device("cpu"), NUM_CLASSES, self.criterion, self.frozen))
        return time.perf_counter() - t0


class NotebookSide:
    """The notebook's loop: NCHW fp32, whole model in train mode, plain Adam step."""

    name = "notebook (NCHW fp32, all BN in train mode)"

    def __init__(self, arch: str, unfreeze: int):
        torch.manual_seed(0)
        self.model = build_model(arch, NUM_CLASSES, unfreeze, "none")  # same model, same requires_grad
        self.opt = torch.optim.Adam([p for p in self.model.parameters() if p.requires_grad], lr=1e-3)
        self.criterion = nn.CrossEntropyLoss()

    def run(self, batch, steps: int) -> float:
        x, y = batch
        self.model.train()
        t0 = time.perf_counter()
        for _ in range(steps):
            self.opt.zero_grad()
            loss = self.criterion(self.model(x), y)
            loss.backward()
            self.opt.step()
        return time.perf_counter() - t0


def measure(arch: str, unfreeze: int, batch, steps: int, rounds: int) -> dict:
    eng, nb = EngineSide(arch, unfreeze), NotebookSide(arch, unfreeze)
    trainable = sum(p.numel() for p in eng.model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in eng.model.parameters())
    print(f"\n== unfreeze {unfreeze}: {trainable:,} of {total:,} parameters trainable; batch {batch[0].shape[0]} "
          f"x {batch[0].shape[-1]} px; {steps} steps/side/round, {rounds} rounds; {load_average()}", flush=True)
    for _ in range(2):  # warm-up (allocator, kernels) not timed
        eng.run(batch, 1)
        nb.run(batch, 1)
    times = {"engine": [], "notebook": []}
    n_img = steps * batch[0].shape[0]
    for r in range(rounds):
        order = [("notebook", nb), ("engine", eng)] if r % 2 == 0 else [("engine", eng), ("notebook", nb)]
        for key, side in order:
            times[key].append(side.run(batch, steps))
        ratio = times["notebook"][-1] / times["engine"][-1]
        print(f"  round {r + 1}: notebook {n_img / times['notebook'][-1]:6.2f} img/s | engine "
              f"{n_img / times['engine'][-1]:6.2f} img/s | speed-up {ratio:.2f}x | {load_average()}", flush=True)
    ips_nb = n_img * rounds / sum(times["notebook"])
    ips_eng = n_img * rounds / sum(times["engine"])
    per_round = [a / b for a, b in zip(times["notebook"], times["engine"])]
    return {"unfreeze": unfreeze, "notebook_ips": ips_nb, "engine_ips": ips_eng, "ratio_of_sums": ips_eng / ips_nb,
            "ratio": statistics.median(per_round),
            "ratio_min": min(per_round), "ratio_max": max(per_round), "ratio_median": statistics.median(per_round)}


def main(args: argparse.Namespace) -> list[dict]:
    if args.quick:
        args.batch_size, args.image_size, args.steps, args.rounds = 4, 64, 1, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, {load_average()}")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    batch = make_batch(args.batch_size, args.image_size)
    results = [measure(args.arch, u, batch, args.steps, args.rounds) for u in args.unfreeze]
    print("\nratio = median of the per-round speed-ups (robust to one disturbed round); sums = total images / total time")
    print(f"{'unfreeze':>8} | {'notebook img/s':>14} | {'engine img/s':>12} | {'sums':>6} | {'median':>6} | per-round min..max | target >= 1.5")
    for r in results:
        print(f"{r['unfreeze']:>8} | {r['notebook_ips']:>14.2f} | {r['engine_ips']:>12.2f} | {r['ratio_of_sums']:>5.2f}x | "
              f"{r['ratio']:>5.2f}x | {r['ratio_min']:.2f}..{r['ratio_max']:.2f}x        | {'MET' if r['ratio'] >= 1.5 else 'MISSED'}")
    print(load_average())
    return results


if __name__ == "__main__":
    main(get_args_parser().parse_args())
