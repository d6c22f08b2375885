"""The promotion gate (animalclf.evaluate.promotion) against real MLflow: ``promote()`` on a sqlite
store (first, win, lose, tie, noise, eligibility, class lists, an unreadable champion), two
promotions racing in threads, and a real `mlflow server` behind a loopback proxy that can fail
chosen calls (a lookup that fails once, two processes racing). The helpers and the loopback HTTP
servers are tests/test_registry.py's; the ``store`` fixture is in conftest.py."""

from __future__ import annotations

import contextlib
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

import pytest
import requests

from animalclf.evaluate import promotion, registry
from animalclf.evaluate.promotion import Candidate, GateRules
from animalclf.runtime.localray import free_port
from test_registry import (CLASSES, FAST, FAST_RULES, N, Answer, evaluation, evaluator, first, register, run_threads,
                           serving)


def gate_tags(client, name: str, version: str) -> dict[str, str]:
    tags = client.get_model_version(name, version).tags
    return {k[len(registry.GATE_TAG) + 1:]: v for k, v in tags.items() if k.startswith(registry.GATE_TAG + ".")}


def promote(client, name, version, masks, eligible=True, **rules):
    rules.setdefault("timing", FAST)
    return promotion.promote(name, Candidate(version, evaluation(masks[version]), CLASSES, eligible), evaluator(masks),
                             GateRules(**rules), client=client)


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


# ---------------------------------------------------------------- on a real mlflow server

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


# ---------------------------------------------------------------- cost: the cheaper-model rule and the budget

def test_a_cheaper_candidate_no_worse_is_promoted_and_its_costs_tagged(store, tmp_path):
    """Level with the champion on 60 images, 10x cheaper: at a 5-point margin non-inferiority is shown
    (p=0.038) and the cheaper-model rule promotes it; the decision, margin, p-value and both costs
    are on its version. At one point (the default) 60 images cannot show it, so it is kept."""
    v1, v2, v3 = (register(store, tmp_path, "clf") for _ in range(3))
    store.set_registered_model_alias("clf", registry.ALIAS, v1)
    masks = {v1: first(55), v2: first(55), v3: first(55)}
    asked: list = []

    def costs(champion):
        asked.append(champion)
        return promotion.Costs(15.0, 150.0)

    d = promotion.promote("clf", Candidate(v2, evaluation(masks[v2]), CLASSES), evaluator(masks),
                          GateRules(timing=FAST, margin=0.01), client=store, costs_of=costs)
    assert not d.promote and "non-inferiority by 0.0100 not shown" in d.reason and asked == [v1]
    d = promotion.promote("clf", Candidate(v3, evaluation(masks[v3]), CLASSES), evaluator(masks),
                          GateRules(timing=FAST, margin=0.05), client=store, costs_of=costs)
    assert d.promote and d.outcome == "promoted-cheaper"
    assert registry.current_champion("clf", client=store) == v3
    tags = gate_tags(store, "clf", v3)
    assert tags["decision"] == "promoted-cheaper" and float(tags["ni_margin"]) == 0.05
    assert float(tags["ni_p_value"]) == pytest.approx(0.0378, abs=1e-3) and float(tags["p_value"]) == 1.0
    assert float(tags["candidate_ms_per_photo"]) == 15.0 and float(tags["champion_ms_per_photo"]) == 150.0
    assert float(tags["speedup"]) == 10.0 and float(tags["cheaper_by"]) == 3.0


def test_a_candidate_over_the_cost_budget_never_becomes_champion(store, tmp_path):
    v1, v2 = register(store, tmp_path, "clf"), register(store, tmp_path, "clf")
    over = GateRules(timing=FAST, max_ms_per_photo=50)
    d = promotion.promote("clf", Candidate(v1, evaluation(first(30)), CLASSES), evaluator({}), over, client=store,
                          costs_of=lambda champion: promotion.Costs(80.0))
    assert not d.promote and d.outcome == "over-budget" and "80.0 ms per photo > --max-ms-per-photo 50" in d.reason
    assert registry.current_champion("clf", client=store) is None  # not even the first version
    store.set_registered_model_alias("clf", registry.ALIAS, v1)
    d = promotion.promote("clf", Candidate(v2, evaluation(first(60)), CLASSES), evaluator({v1: first(30)}), over,
                          client=store, costs_of=lambda champion: promotion.Costs(80.0, 90.0))
    assert not d.promote and d.outcome == "over-budget"  # much better, but over the budget
    assert gate_tags(store, "clf", v2)["max_ms_per_photo"] == "50"
    d = promotion.promote("clf", Candidate(v2, evaluation(first(60)), CLASSES), evaluator({v1: first(30)}), over,
                          client=store, costs_of=lambda champion: promotion.Costs(40.0, 90.0))
    assert d.promote and d.outcome == "promoted"
