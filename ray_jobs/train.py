"""Fine-tune the classifier on Ray Train, tracked in MLflow.

    python ray_jobs/train.py --data DIR [--arch efficientnet_lite0] [--num-workers 2] ...
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python ray_jobs/train.py --data DIR
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout or a Ray working dir

from animalclf import tracking  # noqa: E402
from animalclf.runtime.cli import add_config_arg, run_main  # noqa: E402
from animalclf.config import add_train_args, config_from_args, smoke  # noqa: E402
from animalclf.train.run import run_training  # noqa: E402

log = logging.getLogger("animalclf.jobs.train")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Fine-tune EfficientNet on Ray Train", add_help=add_help)
    add_config_arg(parser)
    add_train_args(parser)
    parser.add_argument("--smoke-test", action="store_true", help="tiny images, 2 short epochs: seconds")
    return parser


def main(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    if args.smoke_test:
        cfg = smoke(cfg)
    out = run_training(cfg)
    if cfg.cv > 1:
        m = out.metrics
        log.info("%d-fold CV: val accuracy %.4f ± %.4f, macro F1 %.4f ± %.4f (fold means at epoch %d)", cfg.cv,
                 m["cv_val_accuracy"], m.get("cv_val_accuracy_std", 0.0), m["cv_val_f1"], m.get("cv_val_f1_std", 0.0),
                 out.epochs_run)
        if not out.checkpoint:  # --final none
            return 0
        log.info("Final model (--final %s, %d epoch(s)) saw every image: the figures below are the fold models' "
                 "out-of-fold predictions", cfg.final, out.epochs_run)
    log.info("Best checkpoint: %s", out.checkpoint)
    log.info("%s accuracy %.4f, macro F1 %.4f (best epoch %s of %d run)",
             "Out-of-fold" if "evaluated_on" in out.report else "Validation", out.report["accuracy"],
             out.report["macro_avg"]["f1"], out.metrics.get("epoch"), out.epochs_run)
    log.info("Report: %s", out.report_dir)
    if out.run_id:
        log.info("MLflow run %s%s: %s", out.run_id, f", registered {cfg.model_name} version {out.model_version}" if out.model_version else "",
                 tracking.run_link(out.run_id))
    if out.decision:
        log.info("%s", out.decision.reason)
        log.info("@champion of %s: version %s", cfg.model_name,
                 out.model_version if out.decision.promote else out.decision.champion_version)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, get_args_parser()))
