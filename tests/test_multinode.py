"""The jobs on a real multi-node, autoscaling Ray: cluster.yaml's node types, scaled down to this
machine by tests/fakecluster.py (each GPU becomes a ``fake_gpu`` resource that training workers ask
for with ``--worker-resources``; ``use_gpu`` stays off, there is no CUDA here).

Every node is its own raylet started by Ray's own autoscaler, so "a node" goes away as a machine
would: its raylet and everything under it die. These tests own port-free, private heads and run in
their own pytest process (``make test`` runs ``-m multinode`` separately); figures they measure are
printed (``-s``) and quoted in the README's cluster guide.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fakecluster import FAKE_GPU, FIGURES, FakeCluster, fake_node_types, load_cluster_yaml
from probewheel import probe_project

# method="thread": a test blocked inside ray.get (a placement group that never places) never returns
# to Python, so the default signal method cannot end it; this one dumps the stacks and fails the run.
pytestmark = [pytest.mark.slow, pytest.mark.multinode, pytest.mark.timeout(420, method="thread")]

ROOT = Path(__file__).resolve().parents[1]
WORKER = {FAKE_GPU: 1}  # one "GPU" per Train worker, like --use-gpu on the real cluster


@pytest.fixture(scope="module")
def cluster():
    import ray

    c = FakeCluster(fake_node_types(load_cluster_yaml(), max_per_type=2)).start()
    previous = os.environ.get("RAY_ADDRESS")
    os.environ["RAY_ADDRESS"] = c.address  # run_training joins it, as a job on the head would
    try:
        ray.init(address=c.address)
        yield c
    finally:
        ray.shutdown()
        c.stop()
        if previous is None:
            os.environ.pop("RAY_ADDRESS", None)
        else:
            os.environ["RAY_ADDRESS"] = previous


def small_config(tiny_folder: Path, tmp: Path, name: str, **changes):
    from animalclf.config import TrainConfig

    return TrainConfig(**{**dict(data=str(tiny_folder), arch="efficientnet_lite0", weights="none", unfreeze=1, image_size=64,
                                 batch_size=8, epochs=3, max_steps_per_epoch=3, patience=0, num_workers=2,
                                 worker_resources=WORKER, name=name, experiment=name, model_name=None,
                                 storage_path=str(tmp / "ray")), **changes})


def train_workers(cluster: FakeCluster) -> dict[str, dict]:
    """Ray Train worker actors ever started on the cluster (alive or dead): id -> state."""
    from ray.util.state import list_actors

    return {a.actor_id: a for a in list_actors(filters=[("class_name", "=", "RayTrainWorker")], limit=1000,
                                               raise_on_missing_output=False)}


def node_types(cluster: FakeCluster) -> dict[str, str]:
    """node id -> "head", or a worker type's fake GPUs as a short string ("gone" for a worker node the
    autoscaler has already removed: a dead node lists no resources, so it must not read as the head)."""
    import ray

    def kind(n: dict) -> str:
        if "node:__internal_head__" in n["Resources"]:
            return "head"
        return f"{n['Resources'][FAKE_GPU]:g}x" if FAKE_GPU in n["Resources"] else "gone"
    return {n["NodeID"]: kind(n) for n in ray.nodes()}


def metric_history(run_id: str, key: str = "val_accuracy"):
    from mlflow import MlflowClient

    return sorted(MlflowClient().get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))


def test_ddp_across_two_nodes(cluster, project, tiny_folder, tmp_path):
    """A 2-worker fine-tune: the autoscaler brings up two one-"GPU" nodes, one worker on each, gloo
    between them, metrics all-reduced over both shards, one MLflow run."""
    from mlflow import MlflowClient

    from animalclf.train.run import run_training

    before = set(train_workers(cluster))
    cfg = small_config(tiny_folder, tmp_path, "ddp2")
    t0 = time.monotonic()
    out = run_training(cfg)
    FIGURES["ddp_run_s"] = time.monotonic() - t0
    workers = [a for i, a in train_workers(cluster).items() if i not in before]
    assert len(workers) == 2, workers
    nodes = {a.node_id for a in workers}
    assert len(nodes) == 2, f"both workers on one node: {workers}"
    assert all(node_types(cluster).get(n) != "head" for n in nodes), "a training worker ran on the head"

    assert out.epochs_run == cfg.epochs
    runs = MlflowClient().search_runs([MlflowClient().get_experiment_by_name("ddp2").experiment_id])
    assert [r.info.run_id for r in runs] == [out.run_id]
    # Each worker validated half the images; the logged count is their all-reduced sum.
    val_images = metric_history(out.run_id, "val_images")
    n_val = out.report["support"]  # the whole validation split, evaluated on the driver
    assert [m.step for m in val_images] == [1, 2, 3]
    assert {m.value for m in val_images} == {n_val}, (val_images, n_val)


def test_node_lost_mid_epoch(cluster, project, tiny_folder, tmp_path):
    """A node that goes away mid-run: the run restarts its workers on a node the autoscaler brings
    up, from the last checkpoint in shared storage, losing at most the epoch in progress, and its
    MLflow run keeps one continuous history."""
    from animalclf.train.run import run_training

    cfg = small_config(tiny_folder, tmp_path, "lostnode", max_failures=2, epochs=6)
    run_dir = Path(cfg.storage_path) / cfg.name
    before = set(train_workers(cluster))
    killed: dict = {}

    def kill_after_first_checkpoint():
        new = lambda: [a for i, a in train_workers(cluster).items() if i not in before and a.state == "ALIVE"]  # noqa: E731
        victim = new() or cluster.wait_for(new, 240, "the training workers") and new()
        node = next(n for n in cluster.alive_nodes() if n["NodeID"] == victim[0].node_id)
        cluster.wait_for(lambda: list(run_dir.glob("checkpoint_*")), 240, "the first checkpoint", every=0.05)
        killed["node"], killed["at"] = node["NodeID"], time.time()
        cluster.kill_node(node)

    killer = threading.Thread(target=kill_after_first_checkpoint, daemon=True)
    killer.start()
    t0 = time.monotonic()
    out = run_training(cfg)
    FIGURES["lost_node_run_s"] = time.monotonic() - t0
    killer.join(5)
    assert "at" in killed, "the node was never killed"
    assert killed["node"] not in {n["NodeID"] for n in cluster.alive_nodes()}

    workers = [a for i, a in train_workers(cluster).items() if i not in before]
    assert len(workers) == 4, "the worker group was not restarted once"
    assert {a.node_id for a in workers} - {killed["node"]}, "no worker ran on another node"
    assert out.epochs_run == cfg.epochs

    history = metric_history(out.run_id)
    print("\nhistory (step, seconds after the kill):", [(m.step, round(m.timestamp / 1000 - killed["at"], 1)) for m in history])
    assert sorted({m.step for m in history}) == list(range(1, cfg.epochs + 1)), history
    first = {}
    for m in history:
        first.setdefault(m.step, m.timestamp / 1000)
    done = [m for m in history if m.timestamp / 1000 < killed["at"]]
    assert done, "killed before the first epoch was logged"
    last_before = max(m.step for m in done)
    after = min((m for m in history if m.timestamp / 1000 >= killed["at"]), key=lambda m: m.timestamp)
    # Resumed from the checkpoint of the last epoch before the loss, or the one before it.
    assert last_before + 1 - after.step <= 1, f"more than one epoch run again: {history}"
    steps = sorted(first)
    ordinary = sorted(first[b] - first[a] for a, b in zip(steps, steps[1:]) if b != after.step)
    typical = ordinary[len(ordinary) // 2]
    gap = after.timestamp / 1000 - max(m.timestamp for m in done) / 1000
    FIGURES["kill_to_next_epoch_s"] = after.timestamp / 1000 - killed["at"]
    FIGURES["epoch_s"] = typical
    FIGURES["time_lost_s"] = gap - (after.step - last_before) * typical


def submit(cluster: FakeCluster, *args: str, env: dict) -> str:
    job = f"tune-{os.getpid()}-{int(time.time())}"
    cmd = [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", cluster.dashboard_url, "--no-wait",
           "--submission-id", job, "--runtime-env-json", json.dumps({"env_vars": env}), "--",
           sys.executable, str(ROOT / "ray_jobs" / "tune.py"), *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "RAY_AUTH_MODE": "token", "RAY_ADDRESS": cluster.dashboard_url})
    assert r.returncode == 0, r.stdout + r.stderr
    return job


@pytest.fixture(scope="module")
def search_job(cluster, tiny_folder, tmp_path_factory):
    """`ray job submit` of a 2-trial search with ``--deploy --serve-resources '{"serving": 1}'`` (a
    resource only cluster.yaml's head has) to the cluster with no worker node, waited for: what the
    two tests below read. The scale-up delay is measured from the submission."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    from animalclf.runtime.localray import free_port

    project = tmp_path_factory.mktemp("search-project")
    cluster.wait_for(lambda: not cluster.worker_nodes(), 120, "the cluster to have no worker node")
    before = set(train_workers(cluster))
    port = free_port()
    job = submit(cluster, "--data", str(tiny_folder), "--smoke-test", "--arch", "efficientnet_lite0", "--weights", "none",
                 "--num-samples", "2", "--max-concurrent", "2", "--no-asha", "--worker-resources", json.dumps(WORKER),
                 "--experiment", "search", "--model-name", "search", "--storage-path", str(project / "ray"),
                 "--deploy", "--serve-port", str(port), "--serve-resources", '{"serving": 1}',
                 env={"ANIMALCLF_HOME": str(project), "ANIMALCLF_AUTOSCALING_CONFIG": str(cluster.config_path)})
    t0 = time.monotonic()
    FIGURES["scale_up_first_node_s"] = cluster.wait_for(lambda: cluster.worker_nodes(), 180, "a worker node")
    client = JobSubmissionClient(cluster.dashboard_url)
    terminal = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}
    cluster.wait_for(lambda: client.get_job_status(job) in terminal, 360, "the search job", every=2)
    FIGURES["search_and_deploy_job_s"] = time.monotonic() - t0
    status = client.get_job_status(job)
    return {"before": before, "port": port, "ok": status == JobStatus.SUCCEEDED, "ended": time.monotonic(),
            "logs": "" if status == JobStatus.SUCCEEDED else client.get_job_logs(job)[-4000:]}


def test_search_scales_up_and_spreads_its_trials(cluster, search_job):
    """The autoscaler adds nodes for the search; its trials' workers run on two GPU-type nodes while
    the trial drivers stay on the head."""
    from ray.util.state import list_actors

    assert search_job["ok"], search_job["logs"]
    kinds = node_types(cluster)
    workers = [a for i, a in train_workers(cluster).items() if i not in search_job["before"]]
    assert len(workers) == 2 and len({a.node_id for a in workers}) == 2, workers
    assert all(kinds[a.node_id] != "head" for a in workers)
    drivers = list_actors(filters=[("class_name", "=", "ImplicitFunc")], limit=1000, raise_on_missing_output=False)
    assert drivers and all(kinds[a.node_id] == "head" for a in drivers), [(a.class_name, kinds[a.node_id]) for a in drivers]


def test_serve_stays_on_the_head_and_gpu_nodes_are_released(cluster, search_job, tiny_folder):
    """The search's --deploy put Serve's controller, proxy and replica on the head; once the job has
    ended, the idle GPU-type nodes are released while the endpoint keeps answering."""
    import requests
    from ray.util.state import list_actors

    assert search_job["ok"], search_job["logs"]
    kinds = node_types(cluster)
    alive = list_actors(filters=[("state", "=", "ALIVE")], limit=1000, raise_on_missing_output=False)
    serve = [a for a in alive if a.class_name in ("ServeController", "ProxyActor") or a.class_name.startswith("ServeReplica:")]
    assert {"ServeController", "ProxyActor"} <= {a.class_name for a in serve}, [a.class_name for a in alive]
    assert any(a.class_name.startswith("ServeReplica:") for a in serve), [a.class_name for a in alive]
    assert all(kinds[a.node_id] == "head" for a in serve), [(a.class_name, kinds[a.node_id]) for a in serve]
    photo = next(p for p in sorted(tiny_folder.rglob("*.jpg")))

    def served_version() -> str:
        r = requests.post(f"http://127.0.0.1:{search_job['port']}/predict", data=photo.read_bytes(), timeout=30)
        assert r.status_code == 200, r.text[:300]
        return r.json()["model_version"]

    assert served_version().startswith("search/")
    cluster.wait_for(lambda: not cluster.worker_nodes(), 120, "the idle worker nodes to be released")
    FIGURES["scale_down_after_job_s"] = time.monotonic() - search_job["ended"]
    assert served_version().startswith("search/")  # Serve kept serving on the head


def test_batch_prediction_job_runs_its_actors_on_gpu_nodes(cluster, tiny_folder, tmp_path):
    """`ray job submit` of ray_jobs/predict.py with two actors that each ask for a GPU-type node's
    resource: the autoscaler adds nodes, the actors run there (never on the head), every image gets
    its row (the file that is not an image an error row) and a resubmission writes nothing new. (25
    small images can be done before the second node is up: that actor may never be placed.)"""
    import shutil

    import pyarrow.parquet as pq
    from ray.job_submission import JobStatus, JobSubmissionClient
    from ray.util.state import list_actors

    from animalclf.config import TrainConfig
    from animalclf.models.build import build_model
    from animalclf.models.checkpoint import save_checkpoint
    from animalclf.train.worker import checkpoint_meta

    data = tmp_path / "photos"
    shutil.copytree(tiny_folder, data)
    (data / "broken.jpg").write_bytes(b"not an image")
    cfg = TrainConfig(arch="efficientnet_lite0", weights="none", unfreeze=0, image_size=64)
    ckpt = save_checkpoint(tmp_path / "ck", build_model(cfg.arch, 3, 0, "none"), checkpoint_meta(cfg, ["Blue", "Green", "Red"], {}, 1))
    out, client = tmp_path / "preds", JobSubmissionClient(cluster.dashboard_url)
    terminal = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}

    def run(n: int) -> None:
        job = f"predict-{os.getpid()}-{n}"
        cmd = [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", cluster.dashboard_url, "--no-wait",
               "--submission-id", job, "--runtime-env-json", json.dumps({"env_vars": {"ANIMALCLF_HOME": str(tmp_path)}}),
               "--", sys.executable, str(ROOT / "ray_jobs" / "predict.py"), "--model", str(ckpt), "--data", str(data),
               "--out", str(out), "--concurrency", "2", "--resources", json.dumps(WORKER), "--batch-size", "4"]
        for _ in range(30):  # a fresh head's job agent may not be up yet ("No available agent")
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                               env={**os.environ, "RAY_AUTH_MODE": "token", "RAY_ADDRESS": cluster.dashboard_url})
            if r.returncode == 0 or "No available agent" not in r.stderr:
                break
            time.sleep(2)
        assert r.returncode == 0, r.stdout + r.stderr
        cluster.wait_for(lambda: client.get_job_status(job) in terminal, 240, "the predict job", every=1)
        assert client.get_job_status(job) == JobStatus.SUCCEEDED, client.get_job_logs(job)[-4000:]

    t0 = time.monotonic()
    run(1)
    FIGURES["batch_predict_job_s"] = time.monotonic() - t0
    rows = pq.read_table(out).to_pylist()
    assert len(rows) == len({r["path"] for r in rows}) == 25, len(rows)
    assert [r["path"] for r in rows if r["error"]] == [str(data / "broken.jpg")]
    kinds = node_types(cluster)
    actors = list_actors(filters=[("class_name", "=", "MapWorker(MapBatches(PredictActor))")], limit=100,
                         raise_on_missing_output=False)
    placed = [a.node_id for a in actors if a.node_id]
    assert len(actors) == 2 and placed, actors
    assert all(kinds[n] != "head" for n in placed), [kinds[n] for n in placed]
    parts = sorted(out.iterdir())
    run(2)
    assert sorted(out.iterdir()) == parts  # nothing new to write: no new part


def test_job_gets_the_pinned_packages_its_nodes_lack(cluster, tmp_path):
    """A job whose runtime env carries the pip section `make submit-*` sends to a cluster
    (animalclf.runtime.jobenv.pip_runtime_env), built from a project whose pyproject.toml asks for a
    package no node has (``animalclf-probe>=1.0``, versions 1.0 and 2.0 offered) and whose
    constraints.txt pins 1.0: the node installs that one package at the pinned version
    (``--no-index``: everything else must be there already) and the job, run with the nodes'
    ``python``, imports it next to the node's animalclf."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    from animalclf.runtime.jobenv import head_on_this_machine, job_link, pip_runtime_env

    assert head_on_this_machine(cluster.dashboard_url)
    project, wheels = probe_project(tmp_path)
    (project / "probe_job.py").write_text(
        "import sys\nimport animalclf, animalclf_probe\n"
        "print('probe', animalclf_probe.__version__, 'animalclf', animalclf.__file__, 'python', sys.executable)\n")
    pip = pip_runtime_env(project)
    assert "animalclf-probe>=1.0" in pip["packages"]
    pip["packages"] += ["--no-index", f"--find-links {wheels}"]  # offline: what is not installed must come from here

    client = JobSubmissionClient(cluster.dashboard_url)
    terminal = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}

    def run(n: int) -> list[str]:
        job = f"pip-{os.getpid()}-{n}"

        def submitted() -> bool:
            try:
                client.submit_job(entrypoint="python probe_job.py", submission_id=job, runtime_env={
                    "working_dir": str(project), "pip": pip, "env_vars": {"ANIMALCLF_HOME": str(tmp_path)}})
                return True
            except RuntimeError as e:  # a cluster just started: "No available agent to submit job" for a while
                if "No available agent" not in str(e):
                    raise
                return False
        cluster.wait_for(submitted, 180, "the head's job agent", every=1)
        cluster.wait_for(lambda: client.get_job_status(job) in terminal, 300, "the probe job", every=0.5)
        logs = client.get_job_logs(job)
        assert client.get_job_status(job) == JobStatus.SUCCEEDED, logs[-4000:]
        assert job_link(cluster.dashboard_url, job) == f"{cluster.dashboard_url}/#/jobs/{job}"
        assert client.get_job_info(job).submission_id == job  # what the page shows
        return next(line for line in logs.splitlines() if line.startswith("probe ")).split()

    t0 = time.monotonic()
    words = run(1)
    FIGURES["job_pip_env_first_s"] = time.monotonic() - t0
    assert words[1] == "1.0", words  # the constraint, not the newest offered
    assert Path(words[3]).parent.parent == ROOT, words  # the node's animalclf (cluster.yaml: pip install -e)
    assert "runtime_resources" in words[5] and "pip" in words[5], f"not the runtime env's python: {words}"
    t0 = time.monotonic()
    assert run(2) == words  # the same pins: Ray's cached env
    FIGURES["job_pip_env_cached_s"] = time.monotonic() - t0
