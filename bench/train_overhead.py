"""Ray Train overhead: the library's TorchTrainer (1 worker) against the same engine in a plain loop.

Same data (the shared photos, seeded 80:20 stratified split), same model (EfficientNet-Lite0 with
ImageNet weights, ``--unfreeze``), same batch, same sampler order, same transforms, same threads:

* ray: ``animalclf.train.worker.make_trainer(cfg, split)`` -> ``TorchTrainer.fit()`` on a private
  Ray head (``common.ray_head``); the worker's own per-epoch ``train_seconds`` / ``epoch_seconds``
  (train + validation) are read from the reported metrics, and a Train callback timestamps every
  ``ray.train.report`` so the full epoch period (including the checkpoint save and report) is known.
* plain: the body of ``train_loop_per_worker`` without Ray (``build_model``, ``frozen_modules``,
  channels-last, Adam, ``DistributedSampler(num_replicas=1)``, ``train_one_epoch`` + ``evaluate``),
  in this process.

The sides alternate (plain, ray, ray, plain, ...). Epoch 1 of each run is warm-up; the per-epoch
ratio is of the medians over epochs 2.. of all runs of a side (robust to a burst of load). The
worker gets ``--cpus-per-worker`` CPUs (Ray sets its OMP/torch threads to that number); the plain
loop uses the same number of torch threads. End-to-end wall time (Ray
head start-up + fit, against model build + epochs) is reported too.

    python bench/train_overhead.py --data ../shared/data/animals15 [--epochs 3] [--repeats 2]
    python bench/train_overhead.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from animalclf.config import TrainConfig
from animalclf.data.loaders import Shard
from animalclf.data.source import open_source
from animalclf.models.build import build_model, frozen_modules
from animalclf.train.engine import EpochSetup, evaluate, train_one_epoch
from animalclf.train.worker import preprocess_of
from common import base_parser, load_average, ray_head


def get_args_parser() -> argparse.ArgumentParser:
    p = base_parser(__doc__, image_size=160, epochs=3, unfreeze=2, epochs_help="epochs per run; epoch 1 is warm-up ")
    p.add_argument("--repeats", type=int, default=2, help="plain/ray alternations (default: 2)")
    p.add_argument("--cpus-per-worker", type=int, default=2, help="Ray worker CPUs = plain-loop torch threads (default: 2)")
    p.add_argument("--also-one-cpu", action="store_true",
                   help="also run the trainer once with the library default cpus_per_worker=1 (OMP_NUM_THREADS=1)")
    p.add_argument("--seed", type=int, default=42, help="(default: 42)")
    p.add_argument("--quick", action="store_true", help="seconds-long smoke run (64 px, 2 steps, 1 repeat)")
    return p


def plain_run(cfg: TrainConfig, split) -> dict:
    """The worker loop's body without Ray (same calls, same order)."""
    t_start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    device = torch.device("cpu")
    pre = preprocess_of(cfg)
    n_classes = len(split.classes)
    model = build_model(cfg.arch, n_classes, cfg.unfreeze, cfg.weights, cfg.dropout, cfg.rotation_pool)
    frozen = frozen_modules(model)
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    source = open_source(cfg.data)
    train_loader = source.train_loader(split, pre, Shard(cfg.batch_size, seed=cfg.seed))
    val_loader = source.val_loader(split, pre, Shard(cfg.batch_size))
    criterion = nn.CrossEntropyLoss()
    epochs = []
    for epoch in range(cfg.epochs):
        t0 = time.perf_counter()
        train_loader.set_epoch(epoch)
        tm = train_one_epoch(model, train_loader, optimizer,
                             EpochSetup(device, n_classes, criterion, frozen, max_steps=cfg.max_steps_per_epoch))
        vm, _ = evaluate(model, val_loader, EpochSetup(device, n_classes, criterion))
        epochs.append({**tm, **vm, "epoch": epoch + 1, "epoch_seconds": time.perf_counter() - t0})
    return {"epochs": epochs, "wall": time.perf_counter() - t_start, "period": [e["epoch_seconds"] for e in epochs]}


def _report_clock_callback(path: str):
    """A Train callback (runs in the controller) that appends the wall clock and rank 0's metrics of
    every report to ``path`` (``Result.metrics_dataframe`` only holds the kept checkpoints' rows)."""
    from ray.train.v2.api.callback import UserCallback

    class ReportClock(UserCallback):
        def after_report(self, run_context, metrics, checkpoint):
            row = {k: v for k, v in metrics[0].items() if isinstance(v, (int, float))}
            with open(path, "a") as f:
                f.write(json.dumps({"time": time.time(), **row}) + "\n")

    return ReportClock()


def ray_run(cfg: TrainConfig, split, tag: str) -> dict:
    from animalclf.train.worker import make_trainer

    clock = Path(cfg.resolved_storage()) / f"clock-{tag}.txt"
    clock.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    t0_wall = time.time()
    make_trainer(cfg, split, None, name=f"overhead-{tag}", callbacks=[_report_clock_callback(str(clock))]).fit()
    wall = time.perf_counter() - t0
    epochs = [json.loads(line) for line in clock.read_text().splitlines()]
    stamps = [e["time"] for e in epochs]
    period = [b - a for a, b in zip([t0_wall, *stamps[:-1]], stamps)] if stamps else []
    return {"epochs": epochs, "wall": wall, "period": period, "first_report_after": stamps[0] - t0_wall if stamps else None}


def _mean(xs):
    """The median: one disturbed epoch on this shared machine must not decide the ratio."""
    return statistics.median(xs) if xs else float("nan")


def main(args: argparse.Namespace) -> dict:
    cfg = TrainConfig(data=args.data, arch=args.arch, weights="imagenet", unfreeze=args.unfreeze, image_size=args.image_size,
                      batch_size=args.batch_size, epochs=args.epochs, patience=0, track=False, seed=args.seed,
                      num_workers=1, cpus_per_worker=args.cpus_per_worker, lr=1e-3, keep_checkpoints=1)
    if args.quick:
        cfg = cfg.replace(image_size=64, epochs=2, max_steps_per_epoch=2, batch_size=8)
        args.repeats, args.also_one_cpu = 1, False
    torch.set_num_threads(args.cpus_per_worker)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads in the plain loop, {os.cpu_count()} CPUs, {load_average()}")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    split = open_source(cfg.data).split(cfg.val_ratio, cfg.seed)
    print(f"data: {len(split.train)} train / {len(split.val)} val, {len(split.classes)} classes; {cfg.arch} unfreeze "
          f"{cfg.unfreeze}, {cfg.image_size} px, batch {cfg.batch_size}, {cfg.epochs} epochs per run", flush=True)
    storage = tempfile.mkdtemp(prefix="bench-overhead-")
    cfg = cfg.replace(storage_path=storage)
    runs: dict[str, list[dict]] = {"plain": [], "ray": [], "ray_1cpu": []}
    try:
        t_head = time.perf_counter()
        with ray_head(num_cpus=args.cpus_per_worker):
            head_s = time.perf_counter() - t_head
            import ray

            @ray.remote(num_cpus=args.cpus_per_worker)
            def threads():
                import torch as t
                return os.environ.get("OMP_NUM_THREADS"), t.get_num_threads()

            print(f"a {args.cpus_per_worker}-CPU Ray task sees OMP_NUM_THREADS, torch threads = {ray.get(threads.remote())}")
            for i in range(args.repeats):
                for side in ("plain", "ray") if i % 2 == 0 else ("ray", "plain"):
                    print(f"-- repeat {i + 1}: {side} ... {load_average()}", flush=True)
                    r = plain_run(cfg, split) if side == "plain" else ray_run(cfg, split, f"{i}")
                    runs[side].append(r)
                    print(f"   {side}: wall {r['wall']:.1f}s, epoch_seconds "
                          f"{[round(e['epoch_seconds'], 2) for e in r['epochs']]}, train_seconds "
                          f"{[round(e['train_seconds'], 2) for e in r['epochs']]}, report period "
                          f"{[round(p, 2) for p in r['period']]}, val_acc {r['epochs'][-1]['val_accuracy']:.3f}", flush=True)
            if args.also_one_cpu:
                print(f"-- library default cpus_per_worker=1 (Ray sets OMP_NUM_THREADS=1) ... {load_average()}", flush=True)
                r = ray_run(cfg.replace(cpus_per_worker=1), split, "1cpu")
                runs["ray_1cpu"].append(r)
                print(f"   ray 1 CPU: wall {r['wall']:.1f}s, epoch_seconds {[round(e['epoch_seconds'], 2) for e in r['epochs']]}", flush=True)
    finally:
        shutil.rmtree(storage, ignore_errors=True)

    skip = 0 if args.quick else 1  # epoch 1 is warm-up

    def per_epoch(side: str, key: str) -> float:
        return _mean([e[key] for r in runs[side] for e in r["epochs"][skip:]])

    out = {"head_start_s": head_s}
    print(f"\nper-epoch medians over epochs {skip + 1}..{cfg.epochs} of {args.repeats} run(s) per side ({load_average()}):")
    print(f"{'':>26} | {'plain':>8} | {'ray':>8} | ratio ray/plain")
    for key in ("train_seconds", "val_seconds", "epoch_seconds"):
        a, b = per_epoch("plain", key), per_epoch("ray", key)
        out[key] = (a, b, b / a)
        print(f"{key:>26} | {a:8.2f} | {b:8.2f} | {b / a:.3f}")
    a = _mean([p for r in runs["plain"] for p in r["period"][skip:]])
    b = _mean([p for r in runs["ray"] for p in r["period"][skip:]])
    out["period"] = (a, b, b / a)
    print(f"{'epoch period incl. report':>26} | {a:8.2f} | {b:8.2f} | {b / a:.3f}   (ray: train+val+checkpoint+report)")
    a, b = _mean([r["wall"] for r in runs["plain"]]), _mean([r["wall"] for r in runs["ray"]])
    out["wall"] = (a, b + head_s, (b + head_s) / a)
    print(f"{'end-to-end wall':>26} | {a:8.2f} | {b + head_s:8.2f} | {(b + head_s) / a:.3f}   (ray: head start {head_s:.1f}s + fit {b:.1f}s)")
    first = [r["first_report_after"] for r in runs["ray"] if r["first_report_after"]]
    print(f"ray fit start -> first report: {[round(x, 1) for x in first]} s (plain first epoch: "
          f"{[round(r['period'][0], 1) for r in runs['plain']]} s)")
    if runs["ray_1cpu"]:
        c = _mean([e["epoch_seconds"] for r in runs["ray_1cpu"] for e in r["epochs"][skip:]])
        out["ray_1cpu_epoch"] = c
        print(f"library default cpus_per_worker=1: epoch_seconds {c:.2f} = {c / per_epoch('plain', 'epoch_seconds'):.2f}x the plain loop")
    verdict = "MET" if out["epoch_seconds"][2] <= 1.05 else "MISSED"
    print(f"target per-epoch ray/plain <= 1.05: {out['epoch_seconds'][2]:.3f} {verdict}; {load_average()}")
    print(json.dumps({k: v for k, v in out.items()}, default=str))
    return out


if __name__ == "__main__":
    main(get_args_parser().parse_args())
