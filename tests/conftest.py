"""Shared fixtures: tiny real ImageFolders, one in-process Ray for the session, a per-test
project directory (so MLflow's sqlite store and run outputs land in tmp), a sqlite MLflow store
(the registry and promotion tests) and an S3 API on loopback (the bucket and loader tests)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("RAY_AUTH_MODE", "token")  # read when ray is imported; local heads use token auth

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "animals15"
COLOURS = {"Red": (200, 40, 40), "Green": (40, 180, 60), "Blue": (40, 60, 200)}


def make_image_folder(root: Path, per_class: int = 8, size: int = 48, seed: int = 0, classes=COLOURS) -> Path:
    """Class folders of noisy solid-colour JPEGs: learnable in an epoch or two."""
    rng = np.random.default_rng(seed)
    for name, rgb in classes.items():
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = np.clip(np.array(rgb)[None, None, :] + rng.normal(0, 25, (size, size, 3)), 0, 255).astype("uint8")
            Image.fromarray(arr).save(d / f"{name.lower()}_{i}.jpg", quality=90)
    return root


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(autouse=True)
def _tracking_env_restored(monkeypatch):
    """``mlflow.set_tracking_uri``/``set_registry_uri`` export MLFLOW_* variables for child
    processes and never take them back: monkeypatch restores them after each test, so a later
    test's job does not register its models in an earlier test's store."""
    from animalclf.tracking import TRACKING_VARS

    for k in TRACKING_VARS:
        if k in os.environ:
            monkeypatch.setenv(k, os.environ[k])
        else:
            monkeypatch.delenv(k, raising=False)


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """A fresh project dir: outputs under it, local sqlite MLflow, no remote tracking vars."""
    from animalclf.tracking import TRACKING_VARS

    monkeypatch.setenv("ANIMALCLF_HOME", str(tmp_path))
    for k in TRACKING_VARS:
        monkeypatch.delenv(k, raising=False)
    return tmp_path


@pytest.fixture(scope="session")
def ray_session():
    """One Ray head for the whole test session, started like a user's `ray start --head`; every
    subprocess a test runs inherits ``RAY_ADDRESS`` and joins it (see animalclf.runtime.localray)."""
    import ray

    from animalclf.runtime.localray import start_head

    # Metrics pushed every second (Ray's default: 10 s), so the metrics tests wait seconds, not tens;
    # the head's processes inherit it at start, nothing started later does.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_metrics_report_interval_ms", "1000")
        head = start_head(num_cpus=4)
    yield ray
    head.stop()


def pytest_terminal_summary(terminalreporter):
    """The figures the multi-node tests measured (tests/fakecluster.py), in every run's summary."""
    import json
    import sys

    cluster = sys.modules.get("fakecluster")
    if cluster is not None and cluster.FIGURES:
        terminalreporter.write_line("multinode figures (s): " + json.dumps({k: round(v, 1) for k, v in cluster.FIGURES.items()}))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A real sqlite MLflow store in tmp; returns a client bound to it (tests/test_registry.py,
    tests/test_promotion.py)."""
    import mlflow
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", uri)  # set_registry_uri exports it too: undone after the test
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    yield MlflowClient(tracking_uri=uri, registry_uri=uri)
    mlflow.set_registry_uri("")


BUCKET = "animals"  # the bucket the ``s3`` fixture creates


@pytest.fixture(scope="module")
def moto_endpoint():
    """moto's S3-compatible server on loopback, one per test module."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3(moto_endpoint, monkeypatch):
    """A boto3 client on a fresh bucket; the AWS variables name the moto server and fake keys."""
    import boto3

    for k in ("AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_REGION"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    client = boto3.client("s3")
    client.create_bucket(Bucket=BUCKET)
    yield client
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for obj in page.get("Contents", []):
            client.delete_object(Bucket=BUCKET, Key=obj["Key"])
    client.delete_bucket(Bucket=BUCKET)
