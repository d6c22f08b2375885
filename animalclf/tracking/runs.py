"""One MLflow run addressed by id (so any process, driver or rank-0 worker, can log to it), its
params, metrics, tags, artifacts and the logged model."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Optional

from animalclf.tracking.settings import artifact_location

log = logging.getLogger(__name__)

__all__ = ["Tracker", "flatten_params"]


def flatten_params(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mapping to MLflow params (strings, max 6000 chars); ``None`` values dropped."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten_params(v, f"{key}."))
        elif v is not None:
            out[key] = str(v)[:6000]
    return out


class Tracker:
    """One MLflow run, addressed by id, so any process (driver or rank-0 worker) can log to it."""

    def __init__(self, run_id: str):
        from mlflow import MlflowClient

        self.run_id = run_id
        self.client = MlflowClient()

    @classmethod
    def start(cls, experiment: str, run_name: str, params: Mapping[str, Any] = (),
              tags: Optional[Mapping[str, str]] = None, parent_run_id: Optional[str] = None) -> "Tracker":
        """Create a run (nested under ``parent_run_id`` if given) and log ``params``."""
        from mlflow import MlflowClient
        from mlflow.entities import Param

        client = MlflowClient()
        exp = client.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp else client.create_experiment(experiment, artifact_location=artifact_location(experiment))
        all_tags = dict(tags or {})
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = client.create_run(exp_id, run_name=run_name, tags=all_tags)
        params = flatten_params(dict(params))
        if params:
            client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in params.items()])
        return cls(run.info.run_id)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        ms = [Metric(k, float(v), now, step) for k, v in metrics.items() if isinstance(v, (int, float))]
        self.client.log_batch(self.run_id, metrics=ms)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v))

    def log_artifacts(self, local_dir: str | Path, artifact_path: Optional[str] = None) -> None:
        self.client.log_artifacts(self.run_id, str(local_dir), artifact_path)

    def end(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status)

    def log_model(self, checkpoint: str | Path, registered_name: Optional[str]) -> Optional[str]:
        """Log the checkpoint as an MLflow image model (:mod:`animalclf.models.pyfunc`: photos in, class
        names and probabilities out) and register it as ``registered_name`` when given.

        Returns the registered version (as a string) or ``None`` when not registering.
        """
        import mlflow
        import PIL
        import timm
        import torch
        import torchvision

        from animalclf.models.pyfunc import log_image_model

        reqs = [f"torch=={torch.__version__.split('+')[0]}", f"torchvision=={torchvision.__version__.split('+')[0]}",
                f"timm=={timm.__version__}", f"pillow=={PIL.__version__}", f"mlflow=={mlflow.__version__}"]
        with mlflow.start_run(run_id=self.run_id):
            info = log_image_model(checkpoint, registered_name, reqs)
        version = getattr(info, "registered_model_version", None)
        return str(version) if version is not None else None
