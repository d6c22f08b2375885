"""Search learning rate and unfreeze depth (and more) with Ray Tune + Optuna + ASHA.

    python ray_jobs/tune.py --data DIR --arch efficientnet_lite0 --num-samples 8 --epochs 6
    python ray_jobs/tune.py ... --space lr=1e-4:3e-3 --space unfreeze=0:6 --space batch_size=32,64
    python ray_jobs/tune.py --config search.yaml        # flags and `space:` from YAML
    python ray_jobs/tune.py ... --resume                # continue an interrupted search
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml  # noqa: E402

from animalclf.cli import run_main  # noqa: E402
from animalclf.config import add_train_args, config_from_args, smoke  # noqa: E402
from animalclf.errors import UserError  # noqa: E402
from animalclf.tuning import TuneOptions, parse_space, run_search  # noqa: E402

log = logging.getLogger("animalclf.jobs.tune")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Tune the fine-tune with Ray Tune + Optuna + ASHA", add_help=add_help)
    parser.add_argument("-c", "--config", help="YAML of flag defaults (dest names) and a `space:` mapping")
    add_train_args(parser)
    g = parser.add_argument_group("Search")
    g.add_argument("--space", action="append", default=[], metavar="NAME=LOW:HIGH|V1,V2",
                   help="override a dimension (lr, unfreeze, weight_decay, batch_size, label_smoothing, dropout); NAME= drops it")
    g.add_argument("--num-samples", type=int, default=8, help="trials (default: 8)")
    g.add_argument("--time-budget-s", type=float, default=None, help="stop starting trials after this many seconds")
    g.add_argument("--max-concurrent", type=int, default=None, help="trials at once (default: what the cluster fits)")
    g.add_argument("--grace-period", type=int, default=1, help="ASHA: epochs before a trial can be stopped (default: 1)")
    g.add_argument("--reduction-factor", type=int, default=3, help="ASHA reduction factor (default: 3)")
    g.add_argument("--no-asha", dest="asha", action="store_false", help="run every trial to the full budget")
    g.add_argument("--points", default=None, help='JSON list of configs to try first, e.g. \'[{"lr": 0.001, "unfreeze": 2}]\'')
    g.add_argument("--resume", action="store_true", help="continue the experiment --name at --storage-path")
    g.add_argument("--no-resource-check", dest="check_resources", action="store_false",
                   help="do not check --max-concurrent against current resources (autoscaling clusters)")
    g.add_argument("--smoke-test", action="store_true", help="2 trials of tiny images and 2 short epochs")
    parser.set_defaults(name="animalclf-tune", epochs=6, patience=0)
    return parser


def main(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    if args.smoke_test:
        cfg = smoke(cfg)
        args.num_samples = min(args.num_samples, 2)
    file_space = args.config if args.config else None
    space = parse_space(args.space, file_space, cfg.arch)
    try:
        points = json.loads(args.points) if args.points else []
    except json.JSONDecodeError as e:
        raise UserError(f"--points is not valid JSON ({e.msg}): e.g. '[{{\"lr\": 0.001}}]'.") from None
    if not isinstance(points, list) or not all(isinstance(p, dict) for p in points):
        raise UserError("--points must be a JSON list of objects.")
    for name, value in (("--num-samples", args.num_samples), ("--grace-period", args.grace_period)):
        if value < 1:
            raise UserError(f"{name} must be at least 1, got {value}.")
    if args.reduction_factor < 2:
        raise UserError(f"--reduction-factor must be at least 2, got {args.reduction_factor}.")
    opts = TuneOptions(name=cfg.name, num_samples=args.num_samples, time_budget_s=args.time_budget_s,
                       max_concurrent=args.max_concurrent, grace_period=args.grace_period,
                       reduction_factor=args.reduction_factor, asha=args.asha, seed=cfg.seed, points=points,
                       resume=args.resume, check_resources=args.check_resources)
    out = run_search(cfg, space, opts)
    log.info("Best config %s: %s %.4f (epoch %d)", out.best_config, cfg.metric, out.best_metrics[cfg.metric], out.best_metrics["epoch"])
    log.info("Validation accuracy of the best model %.4f; report: %s", json.load(open(Path(out.report_dir) / "report.json"))["accuracy"], out.report_dir)
    log.info("Epochs run %d of a %d budget (ASHA saved %.0f%%); experiment at %s", out.epochs_run, out.epochs_budget,
             100 * (1 - out.epochs_run / max(out.epochs_budget, 1)), out.path)
    if out.parent_run_id:
        state = "promoted to @champion" if out.promoted and out.champion_version == out.model_version else f"champion stays v{out.champion_version}"
        log.info("MLflow parent run %s; registered %s v%s, %s", out.parent_run_id, cfg.model_name, out.model_version, state)
    return 0


def parse_with_config(argv=None) -> argparse.Namespace:
    """Apply ``--config`` YAML as parser defaults, then parse the command line over them."""
    parser = get_args_parser()
    pre, _ = parser.parse_known_args(argv)
    if pre.config:
        p = Path(pre.config)
        if not p.is_file():
            print(f"error: --config {pre.config!r} does not exist.", file=sys.stderr)
            sys.exit(2)
        data = yaml.safe_load(p.read_text()) or {}
        dests = {a.dest for a in parser._actions}
        unknown = set(data) - dests - {"space"}
        if unknown:
            print(f"error: unknown keys in {pre.config}: {sorted(unknown)}; use flag names with underscores.", file=sys.stderr)
            sys.exit(2)
        parser.set_defaults(**{k: v for k, v in data.items() if k != "space"})
    return parser


if __name__ == "__main__":
    sys.exit(run_main(main, parse_with_config()))
