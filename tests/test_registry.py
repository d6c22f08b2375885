"""The registry against real MLflow: model refs, the lease on a sqlite store, and lookup errors
from loopback servers that answer 500/401 or nothing at all. The promotion gate built on it is in
tests/test_promotion.py, which uses the helpers here."""

from __future__ import annotations

import contextlib
import http.server
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from animalclf.evaluate import promotion, registry
from animalclf.evaluate.promotion import Candidate, GateRules
from animalclf.evaluate.evidence import Evaluation
from animalclf.runtime.localray import free_port

CLASSES = ["Cat", "Dog", "Zebra"]
N = 60
FAST = registry.Lease(ttl_s=20, settle_s=0.05, wait_s=30)
FAST_RULES = GateRules(timing=FAST)


def evaluation(correct) -> Evaluation:
    """An evaluation on N fixed images where image i is right exactly when ``correct[i]``."""
    correct = np.asarray(correct, dtype=bool)
    labels = np.arange(len(correct)) % len(CLASSES)
    return Evaluation(tuple(f"img{i}.jpg" for i in range(len(correct))), labels,
                      np.where(correct, labels, (labels + 1) % len(CLASSES)))


def first(k: int) -> list[bool]:
    """The first ``k`` of the N images right: nested masks, so a larger k wins every disagreement."""
    return [i < k for i in range(N)]


def register(client, root: Path, name: str, classes=CLASSES, tag: bool = True) -> str:
    """A registered version whose artifacts are only ``extra_files/animalclf.json`` (as mlflow.pytorch lays it out)."""
    from mlflow.exceptions import MlflowException

    with contextlib.suppress(MlflowException):
        client.create_registered_model(name)
    src = Path(root) / f"{name}-{len(list(Path(root).glob(f'{name}-*')))}"
    (src / "extra_files").mkdir(parents=True)
    (src / "extra_files" / "animalclf.json").write_text(json.dumps({"classes": list(classes)}))
    run = client.create_run("0")
    client.log_artifacts(run.info.run_id, str(src), "model")
    client.set_terminated(run.info.run_id)
    version = str(client.create_model_version(name, f"{run.info.artifact_uri}/model", run_id=run.info.run_id).version)
    if tag:
        registry.tag_version(name, version, classes, client=client)
    return version


def evaluator(masks: dict[str, list[bool]], delay: float = 0.0, calls: list | None = None):
    def evaluate(version: str) -> Evaluation:
        if calls is not None:
            calls.append(version)
        time.sleep(delay)
        return evaluation(masks[version])
    return evaluate


# ---------------------------------------------------------------- facts

def test_refs():
    assert registry.champion_ref("animalclf") == "models:/animalclf@champion"
    assert registry.version_ref("animalclf", 7) == "models:/animalclf/7"
    assert registry.is_model_ref("models:/animalclf@champion") and registry.is_model_ref("runs:/abc/model")
    assert not registry.is_model_ref("runs/train/checkpoint") and not registry.is_model_ref("/tmp/models/x")


# ---------------------------------------------------------------- the lease on a sqlite store

def run_threads(*targets) -> None:
    """Run ``targets`` at once; re-raise the first exception any of them raised."""
    errors: list[BaseException] = []

    def wrap(fn):
        def run():
            try:
                fn()
            except BaseException as e:  # noqa: BLE001
                errors.append(e)
        return run

    threads = [threading.Thread(target=wrap(t)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert not any(t.is_alive() for t in threads)
    if errors:
        raise errors[0]


def test_lease_excludes(store, tmp_path):
    register(store, tmp_path, "clf")
    inside, most, lock = [0], [0], threading.Lock()

    def worker():
        from mlflow import MlflowClient

        c = MlflowClient(tracking_uri=store.tracking_uri, registry_uri=store.tracking_uri)
        for _ in range(3):
            with registry.lease("clf", FAST, client=c):
                with lock:
                    inside[0] += 1
                    most[0] = max(most[0], inside[0])
                time.sleep(0.05)
                with lock:
                    inside[0] -= 1

    run_threads(*[worker] * 4)
    assert most[0] == 1
    assert registry.LEASE_TAG not in store.get_registered_model("clf").tags


# ---------------------------------------------------------------- lookup errors over HTTP

class Answer(http.server.BaseHTTPRequestHandler):
    status = 500

    def _answer(self):
        body = b"<html>oops</html>"
        self.send_response(self.status)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _answer

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serving(handler):
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.mark.parametrize("status", [500, 401, None], ids=["http-500", "http-401", "stopped"])
def test_lookup_error_refuses_with_one_line(monkeypatch, status):
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    handler = type("Fixed", (Answer,), {"status": status or 500})
    with serving(handler) as uri:
        if status is None:
            uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        expect = {500: "HTTP 500", 401: "HTTP 401", None: "connection refused"}[status]
        with pytest.raises(registry.ChampionUnreadable) as e:
            registry.current_champion("clf", client=client)
        assert expect in str(e.value) and "--force-promote" in str(e.value) and "\n" not in str(e.value)
        with pytest.raises(registry.ChampionUnreadable) as e:
            promotion.promote("clf", Candidate("2", evaluation(first(50)), CLASSES), evaluator({}), FAST_RULES, client=client)
        assert expect in str(e.value) and "--force-promote" in str(e.value) and "\n" not in str(e.value)
        with pytest.raises(registry.RegistryError) as e:  # forced, but nothing can be written either
            promotion.promote("clf", Candidate("2", evaluation(first(50)), CLASSES), evaluator({}),
                              GateRules(force=True, timing=FAST), client=client)
        assert expect in str(e.value) and "\n" not in str(e.value)
