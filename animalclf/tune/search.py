"""Hyperparameter search: Ray Tune + Optuna (TPE) + ASHA over the same Ray Train job, with an
MLflow parent run, one child run per trial, and promotion of the best model to ``@champion``.
The Optuna study is kept in ``runs/reports/<key>/search/optuna.db`` (:mod:`animalclf.tune.study`)
and logged with the search's plots on the parent run.

Each trial is a plain function that builds and fits a ``TorchTrainer`` (the Ray 2.6x way) whose
``TuneReportCallback`` forwards every epoch's metrics to Tune, so ASHA can stop it early.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

from animalclf import tracking
from animalclf.config import TrainConfig, better
from animalclf.data.split import Split
from animalclf.errors import UserError
from animalclf.evaluate.evidence import Decision
from animalclf.runtime import localray
from animalclf.train import distill
from animalclf.train.publish import Best, publish, report_dir_of
from animalclf.train.run import prepare, publish_cv
from animalclf.tune.results import mark_children, trial_rows, write_search_plots
from animalclf.tune.space import ParamSpec
from animalclf.tune.study import open_storage, storage_url, study_figures
from animalclf.tune.trial import run_trial

log = logging.getLogger(__name__)

__all__ = ["TuneOptions", "TuneOutcome", "run_search", "plan_concurrency", "ELIGIBLE"]

# Trials that ran their whole budget (or stopped by our own patience rule) may become the model;
# a trial ASHA stopped or that failed never does.
ELIGIBLE = ("COMPLETED", "EARLY_STOPPED")


@dataclass
class TuneOptions:
    """How to search: budget, scheduler, concurrency, resume."""

    name: str = "animalclf-tune"
    num_samples: int = 8
    time_budget_s: Optional[float] = None
    max_concurrent: Optional[int] = None
    grace_period: int = 1
    reduction_factor: int = 3
    asha: bool = True
    seed: int = 42
    points: list[dict[str, Any]] = field(default_factory=list)
    resume: bool = False
    check_resources: bool = True

    @staticmethod
    def parse_points(text: Optional[str]) -> list[dict[str, Any]]:
        """``--points``: a JSON list of configs to try first."""
        try:
            points = json.loads(text) if text else []
        except json.JSONDecodeError as e:
            raise UserError(f"--points is not valid JSON ({e.msg}): e.g. '[{{\"lr\": 0.001}}]'.") from None
        if not isinstance(points, list) or not all(isinstance(p, dict) for p in points):
            raise UserError("--points must be a JSON list of objects.")
        return points

    def validate(self) -> "TuneOptions":
        """Check values that need neither data nor Ray; raise :class:`UserError`."""
        for flag, value in (("--num-samples", self.num_samples), ("--grace-period", self.grace_period)):
            if value < 1:
                raise UserError(f"{flag} must be at least 1, got {value}.")
        if self.reduction_factor < 2:
            raise UserError(f"--reduction-factor must be at least 2, got {self.reduction_factor}.")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise UserError(f"--max-concurrent must be at least 1, got {self.max_concurrent}.")
        return self


@dataclass
class TuneOutcome:
    best_config: dict[str, Any]
    best_metrics: dict[str, Any]
    trials: list[dict[str, Any]]
    parent_run_id: Optional[str]
    checkpoint: str
    report_dir: str
    model_version: Optional[str]
    champion_version: Optional[str]
    promoted: bool
    epochs_run: int
    epochs_budget: int
    path: str
    decision: Optional[Decision] = None


# Where the cluster launcher writes the autoscaler's config on the head (cluster.yaml's
# head_start_ray_commands); ANIMALCLF_AUTOSCALING_CONFIG names another file.
AUTOSCALING_CONFIG = "~/ray_bootstrap_config.yaml"


def _autoscaling_config() -> Optional[dict[str, Any]]:
    """The autoscaler's config when this driver runs on an autoscaling cluster's head, else ``None``."""
    import yaml

    path = Path(os.path.expanduser(os.environ.get("ANIMALCLF_AUTOSCALING_CONFIG", AUTOSCALING_CONFIG)))
    return yaml.safe_load(path.read_text()) if path.is_file() else None


def plan_concurrency(cfg: TrainConfig, requested: Optional[int], resources: Mapping[str, float], check: bool = True,
                     autoscaling: Optional[Mapping[str, Any]] = None) -> int:
    """Trials that fit at once: workers per trial x (CPU, GPU, custom resources) per worker against
    the cluster's resources now, or, with ``autoscaling`` (the autoscaler's config), against the most
    the cluster can grow to: each node type's ``max_workers`` nodes, packed worker by worker, within
    the cluster's ``max_workers``."""
    need = {"CPU": cfg.cpus_per_worker, **({"GPU": 1.0} if cfg.use_gpu else {}), **cfg.worker_resources}
    cpu_per_trial = cfg.num_workers * cfg.cpus_per_worker + 0.01
    if autoscaling:
        def per_node(node_type: Mapping[str, Any]) -> int:
            have = node_type.get("resources") or {}
            return min(math.floor(have.get(k, 0) / v) for k, v in need.items() if v > 0)

        types = autoscaling["available_node_types"]
        head = autoscaling.get("head_node_type")
        workers = per_node(types[head]) if head in types else 0
        nodes_left = autoscaling.get("max_workers", math.inf)
        for fit, count in sorted(((per_node(t), t.get("max_workers", 0)) for n, t in types.items() if n != head), reverse=True):
            take = min(count, nodes_left)
            workers, nodes_left = workers + fit * take, nodes_left - take
        fits = workers // cfg.num_workers
        where = "the most this autoscaling cluster grows to (its autoscaler's available_node_types and max_workers)"
    else:
        fits = math.floor(resources.get("CPU", 0) / cpu_per_trial)
        for key, amount in need.items():
            if key != "CPU" and amount > 0:
                fits = min(fits, math.floor(resources.get(key, 0) / (amount * cfg.num_workers)))
        where = f"the cluster's {dict(resources)}"
    if requested is not None and requested < 1:
        raise UserError(f"--max-concurrent must be at least 1, got {requested}.")
    if check and fits < 1:
        extra = "".join(f"{v:g} {k} and " for k, v in need.items() if k != "CPU")
        raise UserError(f"One trial needs {cfg.num_workers} worker(s) of {extra}{cfg.cpus_per_worker:g} CPU (and 0.01 "
                        f"CPU for its driver), more than {where}: lower --num-workers/--cpus-per-worker or add nodes.")
    if check and requested is not None and requested > fits:
        raise UserError(f"--max-concurrent {requested} needs more than the cluster has: {fits} trial(s) of "
                        f"{cfg.num_workers} worker(s) fit in {where}; lower it or pass --no-resource-check.")
    return requested or max(1, fits)


def _parent_file(path: Path) -> Path:
    return path / "animalclf_parent.json"


def search_dir(key: str) -> Path:
    """The search's own outputs (trials, plots, the Optuna study), inside the report that
    :func:`animalclf.train.publish.publish` writes to ``runs/reports/<key>``."""
    return report_dir_of(key) / "search"


def run_search(cfg: TrainConfig, space: Mapping[str, ParamSpec], opts: TuneOptions) -> TuneOutcome:
    """Validate, search, log the lineage, publish the best trial and maybe promote it to champion."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the classic reporter takes our table columns
    for point in opts.points:
        unknown = set(point) - set(space)
        if unknown:
            raise UserError(f"--points names {sorted(unknown)} outside the search space {sorted(space)}.")
    if cfg.lr == 0 and "lr" not in space:
        raise UserError("--lr 0 (the linear probe alone) leaves nothing to train in a search: search lr "
                        "(--space lr=LOW:HIGH) or train the probe with ray_jobs/train.py.")
    if {"kd_weight", "kd_temperature"} & set(space) and not cfg.teacher:
        raise UserError("The search space has kd_weight/kd_temperature, which only act with a teacher: add --teacher "
                        "(the current @champion) or --teacher REF, or drop them from --space.")
    if cfg.cv > 1 and cfg.final == "none":
        raise UserError("A --cv search publishes its best config (--final refit or ensemble): drop --final none.")
    split, uri = prepare(cfg)
    cfg = cfg.replace(storage_path=cfg.resolved_storage())  # trials run in their own working dirs
    localray.init_ray()
    concurrency = plan_concurrency(cfg, opts.max_concurrent, ray.cluster_resources(), opts.check_resources,
                                   autoscaling=_autoscaling_config())
    storage = cfg.resolved_storage()
    path = Path(storage) / opts.name
    if opts.resume and not tune.Tuner.can_restore(str(path)):
        raise UserError(f"Nothing to resume at {path}: run without --resume first (same --name and --storage-path).")
    cfg = _keep_teacher(cfg, path, opts.resume)  # after every check: it writes the pinned teacher beside Tune's state
    targets = distill.targets_for(cfg, split)  # once for every trial

    parent = None
    if cfg.track:
        saved = _parent_file(path)
        if opts.resume and saved.is_file():
            parent = tracking.Tracker(json.loads(saved.read_text())["run_id"])
        else:
            params = {**{f"space.{k}": v.describe() for k, v in space.items()}, "num_samples": opts.num_samples,
                      "time_budget_s": opts.time_budget_s, "max_concurrent": concurrency, "asha": opts.asha,
                      "grace_period": opts.grace_period, "reduction_factor": opts.reduction_factor, "seed": opts.seed,
                      "base": {k: v for k, v in cfg.to_dict().items() if k not in space}}
            parent = tracking.Tracker.start(cfg.experiment, opts.name, params, tags={"animalclf.kind": "tune"})
        log.info("MLflow parent run %s: %s", parent.run_id, tracking.run_link(parent.run_id))

    key = parent.run_id if parent else opts.name  # what publish names the report after
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base=cfg.to_dict(), split=asdict(split), parent_run_id=parent.run_id if parent else None,
                             tracking_uri=tracking.shareable_uri(uri) if uri else None, experiment_name=opts.name,
                             targets=None if targets is None else ray.put(targets)),
        {"CPU": 0.01},  # the trial's driver only waits on its TorchTrainer; a 0 request is refused
    )
    if opts.resume:
        tuner = tune.Tuner.restore(str(path), trainable=trainable, resume_errored=True)
    else:
        # The study in an RDB storage outlives this driver; a resumed search gets Tune's pickled
        # searcher back, whose storage is the same file (a URL: nothing else travels in the pickle).
        study = open_storage(search_dir(key), fresh=True)
        log.info("Optuna study %r in %s", opts.name, storage_url(search_dir(key)))
        searcher = ConcurrencyLimiter(
            OptunaSearch(metric=cfg.metric, mode=cfg.mode, seed=opts.seed, points_to_evaluate=opts.points or None,
                         storage=study, study_name=opts.name),
            max_concurrent=concurrency)
        scheduler = (ASHAScheduler(time_attr="epoch", max_t=cfg.epochs, grace_period=opts.grace_period,
                                   reduction_factor=opts.reduction_factor) if opts.asha else FIFOScheduler())
        tuner = tune.Tuner(
            trainable,
            param_space={k: v.to_tune() for k, v in space.items()},
            tune_config=tune.TuneConfig(metric=cfg.metric, mode=cfg.mode, search_alg=searcher, scheduler=scheduler,
                                        num_samples=opts.num_samples, time_budget_s=opts.time_budget_s),
            run_config=tune.RunConfig(name=opts.name, storage_path=storage, progress_reporter=_reporter(space, cfg),
                                      verbose=1),
        )
        if parent:
            path.mkdir(parents=True, exist_ok=True)
            _parent_file(path).write_text(json.dumps({"run_id": parent.run_id}))
    results = tuner.fit()
    return _finish(cfg, space, opts, split, _Searched(results, parent, str(path), search_dir(key), targets))


def _teacher_file(path: Path) -> Path:
    return path / "animalclf_teacher.json"


def _keep_teacher(cfg: TrainConfig, path: Path, resume: bool) -> TrainConfig:
    """``cfg`` with its teacher pinned; a resumed search keeps the one it started with (kept in
    Tune's folder beside the search)."""
    if not cfg.teacher:
        return cfg
    saved = _teacher_file(path)
    before = json.loads(saved.read_text()) if resume and saved.is_file() else None
    cfg = distill.resolve_teacher(cfg, before)
    if not resume or before is None:
        path.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps({"teacher": cfg.teacher}))
    return cfg


def _reporter(space: Mapping[str, ParamSpec], cfg: TrainConfig):
    from ray.tune import CLIReporter

    return CLIReporter(parameter_columns=list(space), metric_columns=["epoch", "val_loss", "val_accuracy", "val_f1"]
                       + (["val_accuracy_std"] if cfg.cv > 1 else []),
                       max_report_frequency=15, sort_by_metric=True)


@dataclass(frozen=True)
class _Searched:
    """A finished search: Tune's results, the MLflow parent run (``None`` untracked), Tune's folder,
    and the search's own (trials, plots, the Optuna study)."""

    results: Any
    parent: Optional["tracking.Tracker"]
    path: str
    search_dir: Path
    targets: Any = None  # the teacher's answers, for a CV search's refit


def _finish(cfg: TrainConfig, space: Mapping[str, ParamSpec], opts: TuneOptions, split: Split,
            searched: _Searched) -> TuneOutcome:
    """Close the trials' runs, publish the best eligible trial, write the search's plots and outcome."""
    results, parent, path = searched.results, searched.parent, searched.path
    rows = trial_rows(results, cfg, space)
    scored = [t for t in rows if t["best"] is not None and t["best"].get("checkpoint_path")]
    eligible = [t for t in scored if t["status"] in ELIGIBLE]
    mark_children(parent, rows)
    if not eligible:
        if parent:
            parent.end("FAILED")
        raise RuntimeError("No trial completed with a checkpoint; nothing is published or promoted (see the trial errors above).")
    best = eligible[0]
    for t in eligible[1:]:
        if better(t["best"][cfg.metric], best["best"][cfg.metric], cfg.mode):
            best = t
    epochs_run = sum(t["epochs"] for t in rows)
    budget = len(rows) * cfg.epochs
    best_cfg = cfg.replace(**best["config"])
    log.info("Best completed trial %s: %s  %s=%.4f at epoch %d", best["trial_id"], best["config"], cfg.metric,
             best["best"][cfg.metric], best["best"]["epoch"])
    log.info("Trials: %s; epochs run %d of %d (%.0f%% saved by early stopping)",
             ", ".join(f"{t['trial_id']}={t['status']}" for t in rows), epochs_run, budget, 100 * (1 - epochs_run / max(budget, 1)))
    from ray.train import Result

    train_run = Result.from_path(f"{cfg.resolved_storage().rstrip('/')}/{opts.name}-{best['trial_id']}")
    best_ckpt = train_run.get_best_checkpoint(cfg.metric, cfg.mode) or train_run.checkpoint  # ties: what Ray kept
    with best_ckpt.as_directory() as d:
        if cfg.cv > 1:  # trials scored fold means; the model is the best config refit, or its fold models
            out = publish_cv(best_cfg.replace(name=f"{opts.name}-{best['trial_id']}"), split, d, best["history"], parent,
                             key=parent.run_id if parent else opts.name, targets=searched.targets)
        else:
            out = publish(best_cfg, split, Best(d, best["history"]), parent, parent.run_id if parent else opts.name)
    folder = searched.search_dir
    figs, notes = study_figures(folder, opts.name)
    write_search_plots(folder, rows, space, cfg, extra=figs, notes=notes)
    decision = out.decision
    if parent:
        parent.log_artifacts(folder, "search")  # trials, plots and the study (optuna.db)
        parent.log_metrics({"epochs_run": epochs_run, "epochs_budget": budget, "trials": len(rows),
                            f"best_{cfg.metric}": best["best"][cfg.metric]}, step=0)
        parent.set_tags({"animalclf.best_trial": best["trial_id"], "animalclf.best_config": json.dumps(best["config"])})
        parent.end("FINISHED")
    promoted = bool(decision and decision.promote)
    champion = out.model_version if promoted else (decision.champion_version if decision else None)
    return TuneOutcome(best_config=best["config"], best_metrics=best["best"], trials=rows,
                       parent_run_id=parent.run_id if parent else None, checkpoint=out.checkpoint,
                       report_dir=out.report_dir, model_version=out.model_version, champion_version=champion,
                       promoted=promoted, epochs_run=epochs_run, epochs_budget=budget, path=path, decision=decision)
