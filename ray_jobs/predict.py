"""Batch prediction with Ray Data: every image of a folder or a bucket, one row each (path, top-k
classes and probabilities, model version) as Parquet parts or one CSV; a rerun skips what is written.

    python ray_jobs/predict.py --model models:/animalclf@champion --data DIR --out runs/predictions
    python ray_jobs/predict.py --model runs/.../checkpoint --data s3://bucket/photos --out preds.csv
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python ray_jobs/predict.py --model ... --data DIR --out DIR
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout or a Ray working dir

from animalclf.config import resources_arg  # noqa: E402
from animalclf.models.batch import FORMATS, BatchOptions, predict_batch  # noqa: E402
from animalclf.runtime import localray  # noqa: E402
from animalclf.runtime.cli import add_config_arg, run_main  # noqa: E402

log = logging.getLogger("animalclf.jobs.predict")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Batch prediction over a folder or a bucket with Ray Data", add_help=add_help)
    add_config_arg(parser)
    parser.add_argument("--model", required=True,
                        help="models:/NAME@ALIAS, models:/NAME/N or a checkpoint folder (an alias is pinned once, at start)")
    parser.add_argument("--data", required=True, help="a folder or s3:// prefix of images (class folders or flat, any depth)")
    parser.add_argument("--out", required=True,
                        help="a folder (or s3:// prefix) of Parquet parts, or a .csv file; what it holds is skipped")
    parser.add_argument("--format", choices=FORMATS, default=None, help="default: csv when --out ends in .csv, else parquet")
    parser.add_argument("--top-k", type=int, default=5, help="classes per row (default: 5)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per model call (default: 32)")
    parser.add_argument("--concurrency", type=int, default=1, help="predictor actors (default: 1)")
    parser.add_argument("--num-cpus", type=float, default=1.0, help="CPUs per actor, its torch threads too (default: 1)")
    parser.add_argument("--gpus", type=float, default=0.0, help="GPUs per actor; > 0 predicts on CUDA (default: 0)")
    parser.add_argument("--resources", type=resources_arg, default={}, metavar="JSON",
                        help='custom Ray resources per actor, e.g. \'{"a10g": 1}\'')
    parser.add_argument("--rows-per-file", type=int, default=1000,
                        help="rows per Parquet part or CSV append: the most a killed run loses (default: 1000)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N images still to do")
    parser.add_argument("--smoke-test", action="store_true", help="only 16 images")
    return parser


def main(args: argparse.Namespace) -> int:
    opts = BatchOptions(model=args.model, data=args.data, out=args.out, format=args.format, top_k=args.top_k,
                        batch_size=args.batch_size, concurrency=args.concurrency, num_cpus=args.num_cpus,
                        num_gpus=args.gpus, resources=args.resources, rows_per_file=args.rows_per_file,
                        limit=16 if args.smoke_test else args.limit).validate()
    out = predict_batch(opts, connect=localray.init_ray)
    log.info("%d row(s) written to %s (%d error row(s)), %d already there; model %s", out.written, out.out, out.errors,
             out.skipped, out.model_version)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, get_args_parser()))
