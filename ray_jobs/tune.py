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
import time
from typing import Optional
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))



from animalclf import tracking  # noqa: E402
from animalclf.runtime import localray
from animalclf.runtime.cli import add_config_arg, run_main  # noqa: E402
from animalclf.config import add_train_args, config_from_args, resources_arg, smoke  # noqa: E402
from animalclf.errors import UserError  # noqa: E402
from animalclf.evaluate.registry import champion_ref  # noqa: E402
from animalclf.tune.space import parse_space  # noqa: E402
from animalclf.tune.search import TuneOptions, run_search  # noqa: E402
from animalclf.tune.trial import trial_run_id  # noqa: E402

log = logging.getLogger("animalclf.jobs.tune")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Tune the fine-tune with Ray Tune + Optuna + ASHA", add_help=add_help)
    add_config_arg(parser)  # plus a `space:` mapping
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
    g.add_argument("--deploy", action="store_true",
                   help="then serve @champion on this Ray: start Ray Serve, or move the running one to the new champion")
    g.add_argument("--serve-port", type=int, default=None, help="HTTP port of the endpoint with --deploy (default: Serve's, 8000)")
    g.add_argument("--serve-resources", type=resources_arg, default=None, metavar="JSON",
                   help='custom Ray resources per replica when --deploy starts Serve, e.g. \'{"serving": 1}\' (cluster.yaml\'s '
                        "head has them, so replicas stay off GPU nodes and those can scale down); a running endpoint keeps its own")
    parser.set_defaults(name="animalclf-tune", epochs=6, patience=0)
    return parser


def main(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    if args.smoke_test:
        cfg = smoke(cfg)
        args.num_samples = min(args.num_samples, 2)
    space = parse_space(args.space, args.config, cfg.arch)
    opts = TuneOptions(name=cfg.name, num_samples=args.num_samples, time_budget_s=args.time_budget_s,
                       max_concurrent=args.max_concurrent, grace_period=args.grace_period,
                       reduction_factor=args.reduction_factor, asha=args.asha, seed=cfg.seed,
                       points=TuneOptions.parse_points(args.points), resume=args.resume,
                       check_resources=args.check_resources).validate()
    if args.deploy and not (cfg.track and cfg.model_name):
        raise UserError("--deploy serves the registered @champion: drop --no-track and keep a --model-name.")
    out = run_search(cfg, space, opts)
    log.info("Best config %s: %s %.4f (epoch %d)", out.best_config, cfg.metric, out.best_metrics[cfg.metric], out.best_metrics["epoch"])
    report = json.loads((Path(out.report_dir) / "report.json").read_text())
    log.info("%s accuracy of the best model %.4f; report: %s", "Out-of-fold" if "evaluated_on" in report else "Validation",
             report["accuracy"], out.report_dir)
    log.info("Epochs run %d of a %d budget (ASHA saved %.0f%%); experiment at %s", out.epochs_run, out.epochs_budget,
             100 * (1 - out.epochs_run / max(out.epochs_budget, 1)), out.path)
    if out.parent_run_id:
        state = "promoted to @champion" if out.promoted and out.champion_version == out.model_version else f"champion stays v{out.champion_version}"
        log.info("MLflow parent run %s; registered %s v%s, %s: %s", out.parent_run_id, cfg.model_name, out.model_version,
                 state, tracking.run_link(out.parent_run_id))
        best_run = trial_run_id(out.parent_run_id)
        if best_run:
            log.info("MLflow run of the best trial: %s", tracking.run_link(best_run))
    if args.deploy:
        serve_champion(cfg.model_name, args.serve_port, args.serve_resources)
    return 0


def serve_champion(model_name: str, port: Optional[int], resources: Optional[dict[str, float]] = None) -> None:
    """Make Ray Serve on this Ray serve ``@champion`` now: move a running endpoint in place, or start one."""
    from serve import deploy
    from serve.settings import ServeSettings

    ref = champion_ref(model_name)
    url = f"http://127.0.0.1:{port or ServeSettings().port}"
    try:
        health = deploy.refresh(url)
    except UserError:  # nothing answers there yet
        given = {k: v for k, v in {"port": port, "resources": resources}.items() if v}  # else ServeSettings' defaults
        url = deploy.start(ref, follow=False, **given)
        health = deploy.replica_status()
    log.info("Serving %s = %s at %s (POST %s/predict)", ref, health.get("model_version"), url, url)
    if localray.owns_head():  # this command's private Ray ends with it: keep serving until Ctrl-C
        log.info("The endpoint runs on this command's private Ray: Ctrl-C stops it (a `make head-start` head keeps it).")
        while True:
            time.sleep(3600)


if __name__ == "__main__":
    sys.exit(run_main(main, get_args_parser()))
