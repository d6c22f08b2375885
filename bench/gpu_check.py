"""GPU check, for a machine with CUDA (exits 2 on a machine without one).

Proves the GPU path end to end and measures throughput, in one short run:
1. the engine's train step on CUDA: fp32 NCHW vs channels-last + bf16 autocast (images/s, ratio);
2. a 1-epoch Ray Train run with ``use_gpu=True`` (NCCL process group, AMP on) on the given data.

    python bench/gpu_check.py --data ../shared/data/animals15
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from animalclf.config import TrainConfig
from animalclf.models.build import build_model, frozen_modules
from animalclf.train.engine import EpochSetup, train_one_epoch


def step_speed(channels_last: bool, amp: bool, batch: int, steps: int) -> float:
    device = torch.device("cuda")
    model = build_model("efficientnet_b0", 15, 18, "none").to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.randn(batch, 3, 224, 224), torch.randint(0, 15, (batch,))
    loader = [(x, y)] * steps
    train_one_epoch(model, loader[:3], opt, EpochSetup(device, 15, channels_last=channels_last, amp=amp))
    torch.cuda.synchronize()
    out = train_one_epoch(model, loader, opt, EpochSetup(device, 15, frozen=frozen_modules(model),
                                                         channels_last=channels_last, amp=amp))
    torch.cuda.synchronize()
    return out["train_images_per_sec"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=30)
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check", file=sys.stderr)
        return 2
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, NCCL {torch.cuda.nccl.version()}")
    base = step_speed(False, False, args.batch, args.steps)
    fast = step_speed(True, True, args.batch, args.steps)
    print(f"B0 full fine-tune train step: fp32 NCHW {base:.0f} img/s, channels-last+bf16 {fast:.0f} img/s, ratio {fast / base:.2f}")
    from animalclf.runtime.localray import start_head
    from animalclf.train.run import run_training

    head = start_head()
    try:
        t0 = time.perf_counter()
        cfg = TrainConfig(data=args.data, arch="efficientnet_lite0", unfreeze=18, epochs=1, batch_size=64, use_gpu=True,
                          num_workers=torch.cuda.device_count(), track=False, name="gpu-check", patience=0)
        out = run_training(cfg)
        print(f"Ray Train on GPU (NCCL, AMP): 1 epoch in {time.perf_counter() - t0:.1f} s, "
              f"val accuracy {out.report['accuracy']:.3f}, train {out.metrics.get('train_images_per_sec', 0):.0f} img/s")
    finally:
        head.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
