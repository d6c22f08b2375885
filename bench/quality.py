"""Validation quality of a Lite0 fine-tune on the shared photos, through the real ``run_training``.

Seeded 80:20 stratified split of the class folders, EfficientNet-Lite0 with its offline ImageNet
weights, the library's own training path (Ray Train, 1 worker, on a private Ray head from
``bench/_ray_head.py``), outputs under a temporary ``ANIMALCLF_HOME``, MLflow off. Prints the best
checkpoint's validation accuracy and macro F1 (evaluated on the whole validation split by
``publish``), the per-epoch history and the per-class report.

    python bench/quality.py --data ../shared/data/animals15 [--epochs 8] [--unfreeze 3] [--image-size 224]
    python bench/quality.py --quick
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _ray_head import base_parser, load_average, ray_head  # noqa: E402  (sets RAY_AUTH_MODE before ray is imported)

def get_args_parser() -> argparse.ArgumentParser:
    p = base_parser(__doc__, image_size=224, epochs=8, unfreeze=3)
    p.add_argument("--patience", type=int, default=0, help="early stop, 0 = off (default: 0)")
    p.add_argument("--lr", type=float, default=1e-3, help="(default: 1e-3)")
    p.add_argument("--seed", type=int, default=42, help="split and init seed (default: 42)")
    p.add_argument("--cpus-per-worker", type=int, default=2, help="(default: 2, the whole machine)")
    p.add_argument("--quick", action="store_true", help="seconds-long smoke run (64 px, 2 epochs of 2 steps)")
    return p


def main(args: argparse.Namespace) -> dict:
    home = tempfile.mkdtemp(prefix="bench-quality-")
    os.environ["ANIMALCLF_HOME"] = home
    for k in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        os.environ.pop(k, None)
    from animalclf.config import TrainConfig
    from animalclf.logs import setup_logging
    from animalclf.report import format_table
    from animalclf.training import run_training

    setup_logging("WARNING")
    cfg = TrainConfig(data=args.data, arch=args.arch, weights="imagenet", unfreeze=args.unfreeze, image_size=args.image_size,
                      batch_size=args.batch_size, epochs=args.epochs, patience=args.patience, lr=args.lr, seed=args.seed,
                      num_workers=1, cpus_per_worker=args.cpus_per_worker, track=False, name="quality")
    if args.quick:
        cfg = cfg.replace(image_size=64, epochs=2, max_steps_per_epoch=2, batch_size=8)
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"config: {cfg.arch} weights={cfg.weights} unfreeze={cfg.unfreeze} image_size={cfg.image_size} "
          f"batch={cfg.batch_size} epochs={cfg.epochs} lr={cfg.lr} patience={cfg.patience} seed={cfg.seed} "
          f"val_ratio={cfg.val_ratio}; {load_average()}", flush=True)
    try:
        t0 = time.perf_counter()
        with ray_head(num_cpus=args.cpus_per_worker):
            out = run_training(cfg)
        wall = time.perf_counter() - t0
    finally:
        shutil.rmtree(home, ignore_errors=True)
    rep = out.report
    print("\nper-epoch history:")
    for h in rep.get("history", []):
        print(f"  epoch {h['epoch']:>2}: train loss {h['train_loss']:.3f} acc {h['train_accuracy']:.3f} | val loss "
              f"{h['val_loss']:.3f} acc {h['val_accuracy']:.3f} F1 {h['val_f1']:.3f} | {h['epoch_seconds']:.1f}s")
    print(f"\nbest checkpoint (epoch {out.metrics.get('epoch')}) on the {rep['support']}-image validation split:")
    print(format_table(rep))
    print(f"\nVALIDATION accuracy {rep['accuracy']:.4f}  macro F1 {rep['macro_avg']['f1']:.4f}  "
          f"(wall {wall:.0f}s incl. Ray start; {load_average()})")
    return {"accuracy": rep["accuracy"], "macro_f1": rep["macro_avg"]["f1"], "wall": wall, "report": rep}


if __name__ == "__main__":
    main(get_args_parser().parse_args())
