"""Training metrics on Ray's Prometheus endpoint (``ray.util.metrics``), recorded once per epoch
by the rank-0 worker. Ray prefixes the names with ``ray_`` (and counters get ``_total``).

| Metric | Type |
|---|---|
| ``ray_animalclf_train_images_per_sec`` | gauge: training throughput of the last epoch, all workers |
| ``ray_animalclf_train_epoch_seconds`` | gauge: wall time of the last epoch (train + validation) |
| ``ray_animalclf_train_epoch`` | gauge: epochs completed by the run (survives resume) |
| ``ray_animalclf_train_epochs_total`` | counter: epochs completed by this worker process |
| ``ray_animalclf_train_images_total`` | counter: training images processed |

All carry the tag ``run`` (the Ray Train run name).
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["TrainingMetrics"]


class TrainingMetrics:
    """Gauges and counters for one run; :meth:`record` takes the worker loop's epoch metrics.

    Metrics must never stop training: if Ray's metrics cannot be created, this logs once and
    records nothing.
    """

    def __init__(self, run: str):
        self._m: dict[str, Any] = {}
        try:
            from ray.util.metrics import Counter, Gauge

            tags, keys = {"run": run}, ("run",)
            self._m = {
                "images_per_sec": Gauge("animalclf_train_images_per_sec", tag_keys=keys,
                                        description="Training images per second over all workers, last epoch."),
                "epoch_seconds": Gauge("animalclf_train_epoch_seconds", tag_keys=keys,
                                       description="Wall time of the last epoch (train + validation), seconds."),
                "epoch": Gauge("animalclf_train_epoch", tag_keys=keys, description="Epochs completed by the run."),
                "epochs": Counter("animalclf_train_epochs", tag_keys=keys, description="Epochs completed."),
                "images": Counter("animalclf_train_images", tag_keys=keys, description="Training images processed."),
            }
            for m in self._m.values():
                m.set_default_tags(tags)
        except Exception as e:  # no Ray worker context, or a metrics backend problem
            log.warning("Training metrics are off: %s", e)
            self._m = {}

    def record(self, metrics: dict[str, Any]) -> None:
        """Export one epoch: ``train_images_per_sec``, ``epoch_seconds``, ``epoch``, ``train_images``."""
        if not self._m:
            return
        try:
            self._m["images_per_sec"].set(float(metrics["train_images_per_sec"]))
            self._m["epoch_seconds"].set(float(metrics["epoch_seconds"]))
            self._m["epoch"].set(float(metrics["epoch"]))
            self._m["epochs"].inc(1)
            if metrics.get("train_images"):
                self._m["images"].inc(float(metrics["train_images"]))
        except Exception as e:
            log.warning("Could not record training metrics: %s", e)
