"""Training throughput and epoch metrics reach Ray's Prometheus endpoint while a run trains."""

from __future__ import annotations

import re
import threading
import time
import uuid

import pytest
import requests

from animalclf.config import TrainConfig
from animalclf.train.run import run_training


@pytest.mark.slow
def test_training_metrics_on_prometheus_endpoint(ray_session, project, tiny_folder):
    run = f"mon-{uuid.uuid4().hex[:8]}"
    port = ray_session.nodes()[0]["MetricsExportPort"]
    want = {
        name: re.compile(rf'^ray_animalclf_train_{name}\{{[^}}]*run="{run}"[^}}]*\}} ([0-9.e+-]+)$', re.M)
        for name in ("images_per_sec", "epoch_seconds", "epoch", "epochs_total", "images_total")
    }
    seen: dict[str, float] = {}
    done = threading.Event()

    def scrape() -> None:  # from the start: a finished worker's metrics may not outlive it for long
        while not done.is_set():
            try:
                text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
            except requests.RequestException:
                text = ""
            for name, rx in want.items():
                m = rx.search(text)
                if m:
                    seen[name] = max(seen.get(name, 0.0), float(m.group(1)))
            if len(seen) == len(want) and seen["epoch"] >= 2:
                return
            time.sleep(1)

    poller = threading.Thread(target=scrape, daemon=True)
    poller.start()
    cfg = TrainConfig(data=str(tiny_folder), arch="efficientnet_lite0", unfreeze=0, image_size=32, batch_size=8,
                      epochs=2, patience=0, track=False, name=run)
    out = run_training(cfg)
    assert out.epochs_run == 2
    poller.join(timeout=45)  # Ray's agent exports every few seconds
    done.set()
    assert set(seen) == set(want), f"missing on :{port}/metrics: {sorted(set(want) - set(seen))}"
    assert seen["epoch"] == 2 and seen["epochs_total"] >= 2
    assert seen["images_per_sec"] > 0 and seen["epoch_seconds"] > 0
    assert seen["images_total"] >= 2 * 18  # two epochs of the 18 training images
