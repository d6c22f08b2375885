"""The registered model is an MLflow model for images: ``mlflow.pyfunc.load_model`` and ``mlflow
models serve`` answer class names and probabilities from photos, the same as the Predictor and as
our Ray Serve endpoint, and loading it unpickles nothing (tests/test_predict.py plants a payload)."""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
import requests

from animalclf.config import TrainConfig
from animalclf.models.build import build_model
from animalclf.models.checkpoint import save_checkpoint
from animalclf.models.predict import Predictor
from animalclf.models.pyfunc import INPUT_COLUMN
from animalclf.runtime.localray import free_port
from animalclf.train.worker import checkpoint_meta

CLASSES = ["Bear", "Bird", "Cat", "Cow", "Deer", "Dog", "Dolphin", "Elephant", "Giraffe", "Horse",
           "Kangaroo", "Lion", "Panda", "Tiger", "Zebra"]


def register(name: str, image_size: int = 64) -> tuple[str, Path]:
    """An ImageNet Lite0 with a seeded random head, logged and registered as training does it, as ``@champion``."""
    import torch
    from mlflow import MlflowClient

    from animalclf.tracking import Tracker

    torch.manual_seed(0)
    cfg = TrainConfig(arch="efficientnet_lite0", weights="imagenet", unfreeze=0, image_size=image_size)
    model = build_model(cfg.arch, len(CLASSES), 0, "imagenet")
    ckpt = save_checkpoint(Path(tempfile.mkdtemp()) / "ck", model, checkpoint_meta(cfg, CLASSES, {"val_accuracy": 0.5}, 1))
    tracker = Tracker.start("pyfunc", "run")
    version = tracker.log_model(ckpt, name)
    tracker.end()
    MlflowClient().set_registered_model_alias(name, "champion", version)
    return version, ckpt


def one_per_class(shared_data: Path) -> list[Path]:
    return [sorted((shared_data / c).iterdir())[0] for c in CLASSES]


def close(a: list[dict], b: list[dict], tol: float = 1e-4) -> bool:
    return [x["class"] for x in a] == [x["class"] for x in b] and all(
        abs(x["probability"] - y["probability"]) <= tol for x, y in zip(a, b))


def test_pyfunc_classifies_photos_like_the_predictor(store, shared_data):
    import mlflow

    version, ckpt = register("pf")
    model = mlflow.pyfunc.load_model("models:/pf@champion")
    photos = one_per_class(shared_data)
    frame = pd.DataFrame({INPUT_COLUMN: [p.read_bytes() for p in photos] + [b"not an image"]})
    out = model.predict(frame, params={"top_k": 3})
    local = Predictor.from_checkpoint(ckpt)
    assert len(out) == len(photos) + 1
    for row, path in zip(out, photos):
        want = local.predict([local.decode(path.read_bytes())], 3)[0]
        assert row["error"] is None and len(row["top_k"]) == 3 and close(row["top_k"], want)
        assert (row["class"], row["probability"]) == (row["top_k"][0]["class"], row["top_k"][0]["probability"])
    assert out[-1]["class"] is None and out[-1]["top_k"] == [] and "not an image" in out[-1]["error"]
    assert len(model.predict(frame.iloc[:2])[0]["top_k"]) == 5  # default top_k

    meta = model.metadata  # what MLflow users read: a signature that says what goes in and comes out
    assert meta.signature.inputs.input_names() == [INPUT_COLUMN]
    assert meta.signature.inputs.to_dict()[0]["type"] == "binary"
    assert meta.signature.outputs.input_names() == ["class", "probability", "top_k", "error"]
    assert meta.signature.params.to_dict()[0] == {"name": "top_k", "type": "long", "default": 5, "shape": None}
    local_dir = mlflow.artifacts.download_artifacts(f"models:/pf/{version}")
    example, params = meta.load_input_example(local_dir), meta.load_input_example_params(local_dir)
    assert list(example.columns) == [INPUT_COLUMN] and params == {"top_k": 3}
    assert len(model.predict(example, params=params)[0]["top_k"]) == 3  # the stored example runs
    with pytest.raises(Exception, match="image bytes"):
        model.predict(pd.DataFrame({INPUT_COLUMN: ["a path, not bytes"]}))



def mlflow_models_serve(ref: str, port: int, log: Path) -> subprocess.Popen:
    """``mlflow models serve`` as a user runs it in this environment (its uvicorn on PATH)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", ref, "--env-manager", "local",
                             "-h", "127.0.0.1", "-p", str(port)], env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)  # its uvicorn child too: stopped as a group


def wait_ready(url: str, proc: subprocess.Popen, log: Path, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            if requests.get(f"{url}/ping", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"mlflow models serve not ready in {seconds} s: {log.read_text()[-3000:]}")


@pytest.mark.slow
@pytest.mark.ray
def test_mlflow_models_serve_answers_like_ray_serve(store, shared_data, ray_session, tmp_path):
    """Every shared photo through ``mlflow models serve -m models:/NAME@champion`` and through our
    Ray Serve endpoint on the same alias: the same top-1 and top-5 probabilities (to 1e-4)."""
    from serve import deploy

    register("pfserve")
    photos = sorted(p for p in shared_data.rglob("*") if p.is_file())
    assert len(photos) > 200
    port, log = free_port(), tmp_path / "mlflow-serve.log"
    proc = mlflow_models_serve("models:/pfserve@champion", port, log)
    url = deploy.start("models:/pfserve@champion", port=free_port())
    try:
        wait_ready(f"http://127.0.0.1:{port}", proc, log)
        body = {"dataframe_split": {"columns": [INPUT_COLUMN], "data": [[base64.b64encode(p.read_bytes()).decode()]
                                                                        for p in photos]}, "params": {"top_k": 5}}
        r = requests.post(f"http://127.0.0.1:{port}/invocations", json=body, timeout=300)
        assert r.status_code == 200, r.text[:500]
        theirs = r.json()["predictions"]
        ours = []
        for i in range(0, len(photos), 16):
            files = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in photos[i:i + 16]]
            got = requests.post(f"{url}/predict/batch", files=files, params={"top_k": 5}, timeout=120)
            assert got.status_code == 200, got.text[:300]
            ours += [res["predictions"] for res in got.json()["results"]]
        assert len(theirs) == len(ours) == len(photos)
        differ = [p.name for p, a, b in zip(photos, theirs, ours) if not close(a["top_k"], b)]
        assert not differ, differ[:5]
        assert len({a["class"] for a in theirs}) > 1  # a real comparison: the answers vary
    finally:
        deploy.stop()
        with contextlib.suppress(ProcessLookupError):  # a server that already ended: its log is the failure
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
