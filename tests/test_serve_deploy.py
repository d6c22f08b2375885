"""serve.deploy follows @champion: a real Serve app (two replicas) on a real sqlite MLflow
registry; the alias moves under traffic and the app rolls to the new version in place with no
failed request, both replicas agree, and every answer and /metadata name the version."""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

import pytest
import requests
import torch

from animalclf.models.checkpoint import save_checkpoint
from animalclf.config import TrainConfig
from animalclf.runtime.localray import free_port
from animalclf.models.build import build_model
from animalclf.models.predict import Predictor
from animalclf.train.worker import checkpoint_meta

pytestmark = [pytest.mark.slow, pytest.mark.ray]

CLASSES = ["Bear", "Bird", "Cat", "Cow", "Deer", "Dog", "Dolphin", "Elephant", "Giraffe", "Horse",
           "Kangaroo", "Lion", "Panda", "Tiger", "Zebra"]


def register(name: str, seed: int) -> tuple[str, Predictor]:
    """A Lite0 with a seeded random head logged and registered like training does it."""
    from animalclf.tracking import Tracker

    torch.manual_seed(seed)
    cfg = TrainConfig(arch="efficientnet_lite0", weights="none", unfreeze=0, image_size=64)
    model = build_model(cfg.arch, len(CLASSES), 0, "none").eval()
    d = save_checkpoint(Path(tempfile.mkdtemp()) / "ck", model, checkpoint_meta(cfg, CLASSES, {"val_accuracy": 0.5}, 1))
    tracker = Tracker.start("follow", f"v{seed}")
    version = tracker.log_model(d, name)
    tracker.end()
    return version, Predictor.from_checkpoint(d)


def same(a: list[dict], b: list[dict]) -> bool:
    return [x["class"] for x in a] == [x["class"] for x in b] and all(
        abs(x["probability"] - y["probability"]) < 1e-4 for x, y in zip(a, b))


KEY = "follow-key-" + "q" * 24
AUTH = {"Authorization": f"Bearer {KEY}"}


def replicas_on(url: str, want: str, seconds: float = 60) -> dict[str, str]:
    """/metadata (with the API key: it names the replica) until two distinct replicas both report
    ``want``; {replica: version} seen last."""
    seen: dict[str, str] = {}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert requests.get(f"{url}/healthz", timeout=10).json() == {"status": "ready"}
        h = requests.get(f"{url}/metadata", headers=AUTH, timeout=10).json()
        seen[h["replica"]] = h["model_version"]
        if len(seen) >= 2 and set(seen.values()) == {want}:
            return seen
        time.sleep(0.1)
    pytest.fail(f"replicas did not all reach {want}: {seen}")


def test_serve_follows_champion_under_traffic(ray_session, project, tmp_path, monkeypatch, shared_data):
    import mlflow
    from mlflow import MlflowClient

    from serve import deploy

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    (v1, p1), (v2, p2) = register("follow", 1), register("follow", 2)
    local = {f"follow/{v1}": p1, f"follow/{v2}": p2}
    client = MlflowClient()
    client.set_registered_model_alias("follow", "champion", v1)
    photo = sorted((shared_data / "Zebra").iterdir())[0].read_bytes()

    monkeypatch.setenv("ANIMALCLF_API_KEY", KEY)  # an endpoint with a key, as a shared machine has
    url = deploy.start("models:/follow@champion", port=free_port(), poll_s=1.0, num_replicas=2, num_cpus=0.5,
                       max_batch_size=4, batch_wait_timeout_s=0.002)
    try:
        replicas_on(url, f"follow/{v1}")
        results: list[tuple[int, str, bool]] = []
        stop = threading.Event()

        def traffic() -> None:
            s = requests.Session()
            s.headers.update(AUTH)
            while not stop.is_set():
                r = s.post(f"{url}/predict", data=photo, timeout=30)
                body = r.json()
                v = body.get("model_version", body.get("error", ""))
                ok = r.status_code == 200 and same(body["predictions"], local[v].predict([local[v].decode(photo)], 5)[0])
                results.append((r.status_code, v, ok))

        t = threading.Thread(target=traffic)
        t.start()
        try:
            time.sleep(1.0)
            client.set_registered_model_alias("follow", "champion", v2)  # a promotion; nobody tells Serve
            t0 = time.monotonic()
            replicas_on(url, f"follow/{v2}")  # the launcher's poll (1 s) noticed and rolled both replicas
            moved_s = time.monotonic() - t0
            time.sleep(1.0)
            client.set_registered_model_alias("follow", "champion", v1)  # ... and the promoting job tells Serve
            h = deploy.refresh(url)  # as another process would: settings read from Serve on this Ray
            assert h["model_version"] == f"follow/{v1}" and h["model_ref"] == f"models:/follow/{v1}"
            replicas_on(url, f"follow/{v1}", seconds=10)
            time.sleep(1.0)
        finally:
            stop.set()
            t.join()
        assert results and all(code == 200 and ok for code, _, ok in results), [r for r in results if r[0] != 200 or not r[2]][:5]
        assert {v for _, v, _ in results} == {f"follow/{v1}", f"follow/{v2}"}
        assert moved_s < 30, moved_s
        meta = requests.get(f"{url}/metadata", timeout=10).json()
        assert meta["model_version"] == f"follow/{v1}"
        assert deploy._deployed_settings().model_ref == "models:/follow@champion"  # what it follows
        assert deploy.refresh(url)["model_version"] == f"follow/{v1}"  # no move: a no-op
    finally:
        deploy.stop()


HAPROXY_SCRIPT = """
import json, sys
import psutil
import requests
from animalclf.runtime.localray import start_head
from serve import deploy

head = start_head(num_cpus=2)
try:
    url = deploy.start(sys.argv[1], port=int(sys.argv[2]))
    r = requests.post(url + "/predict", data=open(sys.argv[3], "rb").read(), timeout=60)
    haproxy = [p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == "haproxy"]
    print("HAPROXY", len(haproxy))
    print("RESULT", r.status_code, json.dumps(r.json()))
finally:
    deploy.stop()
    head.stop()
"""


def test_haproxy_ingress_answers_like_the_python_proxy(tmp_path, tiny_folder):
    """Ray's HAProxy ingress (RAY_SERVE_ENABLE_HA_PROXY=1 where the head starts; the faster one in
    bench/serve_latency.py) serves the same app: the same answer as the in-process Predictor."""
    import json
    import os
    import subprocess
    import sys

    torch.manual_seed(0)
    cfg = TrainConfig(arch="efficientnet_lite0", weights="none", unfreeze=0, image_size=64)
    ck = save_checkpoint(tmp_path / "ck", build_model(cfg.arch, len(CLASSES), 0, "none").eval(),
                         checkpoint_meta(cfg, CLASSES, {}, 1))
    photo = next(iter(sorted(tiny_folder.rglob("*.jpg"))))
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME=str(home), RAY_SERVE_ENABLE_HA_PROXY="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    r = subprocess.run([sys.executable, "-c", HAPROXY_SCRIPT, str(ck), str(free_port()), str(photo)], env=env,
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    lines = [line for line in r.stdout.splitlines() if line.startswith("RESULT ")]
    assert r.returncode == 0 and lines, (r.stdout + r.stderr)[-3000:]
    assert "HAPROXY 0" not in r.stdout, "no haproxy process: the HAProxy ingress was not used"
    _, status, body = lines[0].split(" ", 2)
    answer = json.loads(body)
    assert status == "200" and answer["model_version"] == f"checkpoint:{ck.resolve()}", body
    local = Predictor.from_checkpoint(ck)
    assert same(answer["predictions"], local.predict([local.decode(photo.read_bytes())], 5)[0])
