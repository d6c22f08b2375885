"""The registry against real MLflow: a sqlite store, a real `mlflow server` (behind a loopback proxy
that can fail chosen calls), and loopback servers that answer 500/401 or nothing at all."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
import requests

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


def gate_tags(client, name: str, version: str) -> dict[str, str]:
    tags = client.get_model_version(name, version).tags
    return {k[len(registry.GATE_TAG) + 1:]: v for k, v in tags.items() if k.startswith(registry.GATE_TAG + ".")}


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A real sqlite MLflow store in tmp; returns a client bound to it."""
    import mlflow
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    yield MlflowClient(tracking_uri=uri, registry_uri=uri)
    mlflow.set_registry_uri("")


def promote(client, name, version, masks, eligible=True, **rules):
    rules.setdefault("timing", FAST)
    return promotion.promote(name, Candidate(version, evaluation(masks[version]), CLASSES, eligible), evaluator(masks),
                             GateRules(**rules), client=client)


# ---------------------------------------------------------------- facts

def test_refs():
    assert registry.champion_ref("animalclf") == "models:/animalclf@champion"
    assert registry.version_ref("animalclf", 7) == "models:/animalclf/7"
    assert registry.is_model_ref("models:/animalclf@champion") and registry.is_model_ref("runs:/abc/model")
    assert not registry.is_model_ref("runs/train/checkpoint") and not registry.is_model_ref("/tmp/models/x")


# ---------------------------------------------------------------- the gate on a sqlite store

def test_first_promotion_when_there_is_no_champion(store, tmp_path):
    assert registry.current_champion("clf", client=store) is None  # no registered model
    v1 = register(store, tmp_path, "clf")
    assert registry.current_champion("clf", client=store) is None  # a model without the alias
    calls: list = []
    d = promotion.promote("clf", Candidate(v1, evaluation(first(30)), CLASSES), evaluator({}, calls=calls), FAST_RULES,
                          client=store)
    assert d.promote and d.outcome == "first" and calls == []
    assert registry.current_champion("clf", client=store) == v1
    assert gate_tags(store, "clf", v1)["decision"] == "first"
    assert registry.LEASE_TAG not in store.get_registered_model("clf").tags  # released


def test_win(store, tmp_path):
    v1, v2 = register(store, tmp_path, "clf"), register(store, tmp_path, "clf")
    store.set_registered_model_alias("clf", registry.ALIAS, v1)
    d = promote(store, "clf", v2, {v1: first(35), v2: first(55)})
    assert d.promote and d.outcome == "promoted" and d.champion_version == v1
    assert d.delta == pytest.approx(20 / 60) and d.p_value < 1e-5 and d.ci_low > 0
    assert registry.current_champion("clf", client=store) == v2
    tags = gate_tags(store, "clf", v2)
    assert tags["decision"] == "promoted" and tags["champion_version"] == v1
    assert float(tags["delta"]) == pytest.approx(20 / 60, abs=1e-4) and float(tags["p_value"]) < 1e-5
    assert tags["ci"].startswith("[") and float(tags["min_improvement"]) == 0.01


def test_lose(store, tmp_path):
    v1, v2 = register(store, tmp_path, "clf"), register(store, tmp_path, "clf")
    store.set_registered_model_alias("clf", registry.ALIAS, v1)
    d = promote(store, "clf", v2, {v1: first(50), v2: first(40)})
    assert not d.promote and d.outcome == "kept" and d.delta < 0
    assert registry.current_champion("clf", client=store) == v1
    assert gate_tags(store, "clf", v2)["decision"] == "kept"


def test_tie_is_not_promoted(store, tmp_path):
    v1, v2 = register(store, tmp_path, "clf"), register(store, tmp_path, "clf")
    store.set_registered_model_alias("clf", registry.ALIAS, v1)
    champ = first(40)
    cand = [i < 34 or 40 <= i < 46 for i in range(N)]  # 6 images won each way
    d = promotion.promote("clf", Candidate(v2, evaluation(cand), CLASSES), evaluator({v1: champ}), FAST_RULES, client=store)
    assert not d.promote and d.delta == 0 and d.p_value > 0.5
    assert registry.current_champion("clf", client=store) == v1


def test_no_better_beyond_noise_is_not_promoted(store, tmp_path):
    """3 more photos right of 60 (+5 points, above --min-improvement) is noise: the gate wants significance."""
    v1, v2 = register(store, tmp_path, "clf"), register(store, tmp_path, "clf")
    store.set_registered_model_alias("clf", registry.ALIAS, v1)
    d = promote(store, "clf", v2, {v1: first(45), v2: first(48)})
    assert not d.promote and d.delta == pytest.approx(0.05) and d.p_value == pytest.approx(1 / 8)
    assert "not better beyond noise" in d.reason
    assert registry.current_champion("clf", client=store) == v1
    assert gate_tags(store, "clf", v2)["decision"] == "kept"


def test_only_eligible_candidates(store, tmp_path):
    v1, v2 = register(store, tmp_path, "clf"), register(store, tmp_path, "clf")
    store.set_registered_model_alias("clf", registry.ALIAS, v1)
    d = promote(store, "clf", v2, {v1: first(10), v2: first(60)}, eligible=False)
    assert not d.promote and d.outcome == "ineligible"
    assert registry.current_champion("clf", client=store) == v1


@pytest.mark.parametrize("tagged", [True, False], ids=["tag", "meta-file"])
def test_class_mismatch_names_model_name(store, tmp_path, tagged):
    v1 = register(store, tmp_path, "clf", classes=["Cat", "Dog", "Horse"], tag=tagged)
    v2 = register(store, tmp_path, "clf")
    store.set_registered_model_alias("clf", registry.ALIAS, v1)
    with pytest.raises(registry.ClassMismatch, match="--model-name") as e:
        promote(store, "clf", v2, {v1: first(10), v2: first(60)})
    assert "\n" not in str(e.value)
    assert registry.current_champion("clf", client=store) == v1
    assert gate_tags(store, "clf", v2)["decision"] == "refused-classes"


def test_untagged_champion_with_same_classes_is_compared(store, tmp_path):
    v1 = register(store, tmp_path, "clf", tag=False)  # registered before the tag existed
    v2 = register(store, tmp_path, "clf", tag=False)
    store.set_registered_model_alias("clf", registry.ALIAS, v1)
    assert promote(store, "clf", v2, {v1: first(30), v2: first(55)}).outcome == "promoted"
    assert store.get_model_version("clf", v2).tags[registry.CLASSES_TAG] == json.dumps(CLASSES, separators=(",", ":"))


def test_champion_that_cannot_be_evaluated_refuses_unless_forced(store, tmp_path):
    v1, v2 = register(store, tmp_path, "clf"), register(store, tmp_path, "clf")
    store.set_registered_model_alias("clf", registry.ALIAS, v1)

    def broken(version):
        raise FileNotFoundError(f"artifacts of v{version} are gone")

    with pytest.raises(registry.ChampionUnreadable, match="--force-promote") as e:
        promotion.promote("clf", Candidate(v2, evaluation(first(50)), CLASSES), broken, FAST_RULES, client=store)
    assert "\n" not in str(e.value) and "FileNotFoundError" in str(e.value)
    assert registry.current_champion("clf", client=store) == v1
    assert gate_tags(store, "clf", v2)["decision"] == "refused-unreadable"
    d = promotion.promote("clf", Candidate(v2, evaluation(first(50)), CLASSES), broken, GateRules(force=True, timing=FAST),
                          client=store)
    assert d.promote and d.outcome == "forced"
    assert registry.current_champion("clf", client=store) == v2


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


def race(client_for, name: str, champion: str, fast: str, slow: str, masks, delay: float):
    """Promote ``fast`` and ``slow`` at once from two threads; ``slow`` evaluates the champion for
    ``delay`` s, so without compare-and-set it would write last."""
    out: dict[str, registry.Decision] = {}
    barrier = threading.Barrier(2)

    def run(version: str, wait: float):
        c = client_for()
        barrier.wait()
        out[version] = promotion.promote(name, Candidate(version, evaluation(masks[version]), CLASSES), evaluator(masks, wait),
                                         GateRules(timing=registry.Lease(ttl_s=20, settle_s=0.2, wait_s=30)), client=c)

    run_threads(lambda: run(fast, 0.0), lambda: run(slow, delay))
    return out


@pytest.mark.parametrize("better_first", [True, False], ids=["better-finishes-first", "worse-finishes-first"])
def test_two_promotions_racing_the_better_one_wins(store, tmp_path, better_first):
    from mlflow import MlflowClient

    v1, better, worse = (register(store, tmp_path, "clf") for _ in range(3))
    store.set_registered_model_alias("clf", registry.ALIAS, v1)
    masks = {v1: first(20), worse: first(38), better: first(58)}  # both beat v1; better beats worse
    fast, slow = (better, worse) if better_first else (worse, better)
    out = race(lambda: MlflowClient(tracking_uri=store.tracking_uri, registry_uri=store.tracking_uri),
               "clf", v1, fast, slow, masks, delay=1.0)
    assert registry.current_champion("clf", client=store) == better
    # the slow one found the alias moved and was compared again, against the fast one
    assert out[slow].champion_version == fast
    assert out[worse].outcome == ("kept" if better_first else "promoted")
    assert gate_tags(store, "clf", better)["decision"] == "promoted"


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


class Server:
    """A real `mlflow server` on loopback and a proxy in front of it that answers 500 to the next
    ``failing[endpoint]`` calls of an endpoint (a transient server error at that moment)."""

    def __init__(self, root: Path):
        self.root, self.port = root, free_port()
        self.upstream = f"http://127.0.0.1:{self.port}"
        self.failing: dict[str, int] = {}
        self.lock = threading.Lock()
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'backend.db'}",
             "--artifacts-destination", str(root / "artifacts")],
            stdout=(root / "server.log").open("w"), stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not start:\n{(root / 'server.log').read_text()[-3000:]}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{self.upstream}/health", timeout=2).status_code == 200:
                    break
            time.sleep(0.5)
        server = self

        class Proxy(Answer):
            def _answer(self):
                endpoint = urlparse(self.path).path.rsplit("/api/2.0/mlflow/", 1)[-1]
                with server.lock:
                    fail = server.failing.get(endpoint, 0) > 0
                    if fail:
                        server.failing[endpoint] -= 1
                if fail:
                    return Answer._answer(self)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                r = requests.request(self.command, server.upstream + self.path, data=body, timeout=30,
                                     headers={"Content-Type": self.headers.get("Content-Type", "application/json")})
                self.send_response(r.status_code)
                self.send_header("Content-Type", r.headers.get("Content-Type", "application/json"))
                self.send_header("Content-Length", str(len(r.content)))
                self.end_headers()
                self.wfile.write(r.content)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _answer

        self._proxy = serving(Proxy)
        self.uri = self._proxy.__enter__()

    def client(self):
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    def stop(self):
        self._proxy.__exit__(None, None, None)
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("mlflow-server"))
    yield s
    s.stop()


@pytest.mark.slow
def test_remote_lookup_error_refuses_unless_forced(server, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    client = server.client()
    v1, v2 = register(client, tmp_path, "remote-force"), register(client, tmp_path, "remote-force")
    client.set_registered_model_alias("remote-force", registry.ALIAS, v1)
    assert registry.current_champion("remote-force", client=client) == v1  # aliases come back over REST
    server.failing = {"registered-models/get": 1}  # the champion lookup fails once
    with pytest.raises(registry.ChampionUnreadable, match="HTTP 500.*--force-promote"):
        promote(client, "remote-force", v2, {v1: first(10), v2: first(60)})
    assert server.failing["registered-models/get"] == 0
    assert registry.current_champion("remote-force", client=client) == v1
    assert gate_tags(client, "remote-force", v2)["decision"] == "refused-unreadable"
    server.failing = {"registered-models/get": 1}
    d = promote(client, "remote-force", v2, {v1: first(60), v2: first(10)}, force=True)  # worse, but forced
    assert d.promote and d.outcome == "forced"
    assert registry.current_champion("remote-force", client=client) == v2
    assert gate_tags(client, "remote-force", v2)["decision"] == "forced"


RACER = textwrap.dedent("""
    import json, sys, time
    import numpy as np
    from mlflow import MlflowClient
    from animalclf.evaluate import promotion, registry
    from animalclf.evaluate.evidence import Evaluation
    from animalclf.evaluate.promotion import Candidate, GateRules

    spec = json.loads(sys.argv[1])
    def evaluation(version):
        correct = np.asarray(spec["masks"][version], dtype=bool)
        labels = np.arange(len(correct)) % 3
        return Evaluation(tuple(f"img{i}.jpg" for i in range(len(correct))), labels, np.where(correct, labels, (labels + 1) % 3))
    def evaluate(version):
        time.sleep(spec["delay"])
        return evaluation(version)
    client = MlflowClient(tracking_uri=spec["uri"], registry_uri=spec["uri"])
    time.sleep(max(0.0, spec["start_at"] - time.time()))
    d = promotion.promote(spec["name"], Candidate(spec["version"], evaluation(spec["version"]), spec["classes"]), evaluate,
                          GateRules(timing=registry.Lease(ttl_s=30, settle_s=0.3, wait_s=60)), client=client)
    print(json.dumps({"outcome": d.outcome, "champion_version": d.champion_version}))
""")


@pytest.mark.slow
def test_two_processes_racing_on_a_remote_server(server, tmp_path):
    client = server.client()
    v1, better, worse = (register(client, tmp_path, "remote-race") for _ in range(3))
    client.set_registered_model_alias("remote-race", registry.ALIAS, v1)
    masks = {v1: first(20), worse: first(38), better: first(58)}
    start_at = time.time() + 8  # both processes are up and importing is done by then
    procs = {}
    for version, delay in ((better, 0.0), (worse, 2.0)):  # without compare-and-set, worse writes last
        spec = {"uri": server.uri, "name": "remote-race", "version": version, "masks": masks, "delay": delay,
                "start_at": start_at, "classes": CLASSES}
        procs[version] = subprocess.Popen([sys.executable, "-c", RACER, json.dumps(spec)], stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True)
    out = {}
    for version, p in procs.items():
        stdout, stderr = p.communicate(timeout=120)
        assert p.returncode == 0, stderr[-2000:]
        out[version] = json.loads(stdout.strip().splitlines()[-1])
    assert registry.current_champion("remote-race", client=client) == better
    assert out[better]["outcome"] == "promoted"
    assert out[worse] == {"outcome": "kept", "champion_version": better}
