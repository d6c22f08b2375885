"""One trial of the search: the same training as ``ray_jobs/train.py`` in a ``TorchTrainer``
whose ``TuneReportCallback`` forwards every epoch's metrics to Tune (so ASHA can stop it), with its
own MLflow child run under the search's parent run."""

from __future__ import annotations

from typing import Any, Callable, Optional

from animalclf import tracking
from animalclf.config import TrainConfig
from animalclf.data.split import Split
from animalclf.train.publish import start_tracker
from animalclf.train.run import fit

__all__ = ["run_trial", "child_run", "trial_run_id", "stop_flag"]


def run_trial(config: dict[str, Any], *, base: dict[str, Any], split: dict[str, Any], parent_run_id: Optional[str],
              tracking_uri: Optional[str], experiment_name: str, targets: Any = None) -> None:
    """One trial: the same training as ``ray_jobs/train.py``, reporting to Tune every epoch;
    ``targets``: the teacher's answers (an object ref), computed once by the search's driver."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from animalclf.runtime.logs import setup_logging

    setup_logging()
    cfg = TrainConfig.from_dict({**base, **config}).validate()  # a sampled config is checked like a flag
    the_split = Split(**split)
    trial_id = tune.get_context().get_trial_id()
    tracker = None
    if parent_run_id:  # tracked: the URI given, or this process's own (when the URI carries a password)
        tracking.configure(uri=tracking_uri)  # credentials from this process's env (a job's env, or inherited)
        tracker = child_run(cfg, the_split, trial_id, parent_run_id)
    fit(cfg, the_split, tracker, name=f"{experiment_name}-{trial_id}", callbacks=[TuneReportCallback()], targets=targets,
        stopped=stop_flag())
    if tracker:
        tracker.end("FINISHED")


def stop_flag() -> Callable[[], bool]:
    """Whether Tune has stopped this trial (ASHA): its session's stop event, taken now because a
    stopped trial's training fails while Tune tears it down, possibly after the search has closed
    the trial's run KILLED, which that failure must not turn into FAILED. Outside Tune: never."""
    from ray.train._internal.session import get_session

    session = get_session()
    return session.stop_event.is_set if session is not None else (lambda: False)


def trial_run_id(parent_run_id: str, trial_id: Optional[str] = None) -> Optional[str]:
    """The MLflow run of trial ``trial_id`` (default: the search's best, its parent's
    ``animalclf.best_trial`` tag) under search run ``parent_run_id``, or ``None``."""
    from mlflow import MlflowClient

    client = MlflowClient()
    parent = client.get_run(parent_run_id)
    trial_id = trial_id or parent.data.tags.get("animalclf.best_trial")
    if not trial_id:
        return None
    found = client.search_runs([parent.info.experiment_id],
                               f"tags.`animalclf.trial_id` = '{trial_id}' and tags.`mlflow.parentRunId` = '{parent_run_id}'")
    return found[0].info.run_id if found else None


def child_run(cfg: TrainConfig, split: Split, trial_id: str, parent_run_id: str) -> "tracking.Tracker":
    """The trial's MLflow child run; a resumed trial continues the run it had."""
    found = trial_run_id(parent_run_id, trial_id)
    if found:
        return tracking.Tracker(found)
    return start_tracker(cfg, split, f"trial-{trial_id}", parent_run_id, tags={"animalclf.kind": "trial", "animalclf.trial_id": trial_id})
