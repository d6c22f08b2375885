"""The Streamlit UI: the gallery and model-version refs, the page logic through AppTest (endpoint
down, endpoint up), the Model page against a real sqlite MLflow store and a real HTTP /metadata,
the app without torch, and end to end in a real headless Chromium (against a real Serve endpoint
for the Classify page). The HTTP client's own tests are in tests/test_client.py."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import requests

from animalclf.runtime.localray import free_port
from app.client import gallery_images
from app.model_info import parse_model_version

REPO = Path(__file__).resolve().parents[1]
SCRIPT = str(REPO / "app" / "streamlit_app.py")
CHROMIUM = "/usr/bin/chromium"
CLASSES = ["Bear", "Bird", "Cat", "Cow", "Deer", "Dog", "Dolphin", "Elephant", "Giraffe", "Horse",
           "Kangaroo", "Lion", "Panda", "Tiger", "Zebra"]


def closed_endpoint() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens there


@pytest.fixture(scope="module")
def photo(shared_data) -> Path:
    return sorted((shared_data / "Tiger").iterdir())[0]


# --- gallery and version refs ----------------------------------------------------------------
def test_gallery_and_model_version_refs(shared_data):
    imgs = gallery_images(shared_data, per_class=2)
    assert len(imgs) == 30 and {p.parent.name for p in imgs} == set(CLASSES)
    assert parse_model_version("animalclf/3") == ("animalclf", "3")
    assert parse_model_version("models:/animalclf/12") == ("animalclf", "12")
    for not_registered in ("checkpoint:/some/dir", "runs:/abc/model", "models:/animalclf@champion", "/tmp/ck", "a/b/c"):
        assert parse_model_version(not_registered) is None, not_registered


# --- AppTest -------------------------------------------------------------------------------
def _app(monkeypatch, endpoint: str, gallery: str = ""):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("ANIMALCLF_ENDPOINT", endpoint)
    monkeypatch.setenv("ANIMALCLF_GALLERY", gallery)
    at = AppTest.from_file(SCRIPT, default_timeout=60)
    at.run()
    assert not at.exception, at.exception
    return at


def test_apptest_endpoint_down_shows_clear_message(monkeypatch, photo, project):
    at = _app(monkeypatch, closed_endpoint())
    assert any("Cannot reach the classifier" in w.value for w in at.warning), "model tab must say the endpoint is down"
    assert any("No MLflow store at" in e.value for e in at.error), "and that there is no store to read"
    at.file_uploader[0].set_value((photo.name, photo.read_bytes(), "image/jpeg")).run()
    assert not at.exception, at.exception
    msgs = [e.value for e in at.error]
    assert any(photo.name in m and "Cannot reach the classifier" in m for m in msgs), msgs
    assert not [m for m in at.markdown if m.value.startswith("Prediction:")]


# --- Model page: a real sqlite MLflow store and a real HTTP /metadata ------------------------
def _report(seed: int, skill: float, tmp: Path) -> tuple[dict, Path]:
    """A report built and written by animalclf.evaluate.report itself, from made-up probabilities."""
    import torch

    from animalclf.evaluate.report import build_report, write_report

    g = torch.Generator().manual_seed(seed)
    targets = torch.arange(60) % len(CLASSES)
    logits = torch.randn(60, len(CLASSES), generator=g)
    logits[torch.arange(60), targets] += skill
    history = [{"epoch": e, "train_loss": 2.0 / e, "val_loss": 2.2 / e, "val_accuracy": 0.3 + 0.1 * e, "val_f1": 0.25 + 0.1 * e}
               for e in (1, 2, 3)]
    report = build_report(logits.softmax(1), targets, CLASSES, history)
    out = tmp / f"report-{seed}"
    write_report(out, report)
    return report, out


@pytest.fixture
def model_store(project):
    """The store the jobs would leave: v1 from a fine-tune, v2 (@champion) from a 3-trial search
    (report and search/trials.json on the parent run, one child run per trial), v3 with no report."""
    from mlflow import MlflowClient

    from animalclf.tracking import flatten_params, resolve_tracking

    uri = resolve_tracking()["MLFLOW_TRACKING_URI"]
    assert uri == f"sqlite:///{project / 'runs' / 'mlflow.db'}"
    (project / "runs").mkdir()
    client = MlflowClient(uri)
    exp = client.create_experiment("animalclf", artifact_location=str(project / "artifacts"))

    def run(name, kind, params, tags=None):
        r = client.create_run(exp, run_name=name, tags={"animalclf.kind": kind, **(tags or {})})
        for k, v in flatten_params(params).items():
            client.log_param(r.info.run_id, k, v)
        return r.info.run_id

    def register(run_id):
        return client.create_model_version("animalclf", source=f"{project}/artifacts/{run_id}/artifacts/model", run_id=run_id).version

    client.create_registered_model("animalclf")
    train = run("animalclf", "train", {"arch": "efficientnet_lite0", "lr": 0.001, "unfreeze": 2, "epochs": 3, "metric": "val_accuracy"})
    weak, weak_dir = _report(1, 1.0, project)
    client.log_artifacts(train, str(weak_dir), "report")
    register(train)

    tune = run("animalclf-tune", "tune", {"space.lr": "loguniform[0.0001, 0.01]", "space.unfreeze": "int[0, 3]",
                                          "num_samples": 3, "base": {"arch": "efficientnet_lite0", "metric": "val_accuracy"}},
               tags={"animalclf.best_trial": "t2"})
    trials, children = [], {}
    for i, (lr, unfreeze, status) in enumerate([(3e-4, 1, "COMPLETED"), (2e-3, 3, "COMPLETED"), (8e-3, 0, "STOPPED_BY_ASHA")], 1):
        tid = f"t{i}"
        children[tid] = run(f"trial-{tid}", "trial", {"arch": "efficientnet_lite0", "lr": lr, "unfreeze": unfreeze, "epochs": 3},
                            tags={"mlflow.parentRunId": tune, "animalclf.trial_id": tid, "animalclf.trial_status": status})
        hist = [{"epoch": e, "val_accuracy": round(0.2 * i + 0.05 * e, 3), "val_loss": 1.0 / e} for e in range(1, 4 if status == "COMPLETED" else 2)]
        trials.append({"trial_id": tid, "status": status, "epochs": len(hist), "config": {"lr": lr, "unfreeze": unfreeze},
                       "history": hist, "best": max(hist, key=lambda h: h["val_accuracy"])})
    strong, strong_dir = _report(2, 4.0, project)
    client.log_artifacts(tune, str(strong_dir), "report")
    _search_folder(project / "search", trials)
    client.log_artifacts(tune, str(project / "search"), "search")
    champion = register(tune)
    for k, v in {"decision": "promoted-cheaper", "champion_version": "1", "candidate_acc": "0.9", "champion_acc": "0.91",
                 "n": "60", "p_value": "0.8", "ni_margin": "0.05", "ni_p_value": "0.03", "candidate_ms_per_photo": "16.1",
                 "champion_ms_per_photo": "161", "speedup": "10", "cheaper_by": "3"}.items():
        client.set_model_version_tag("animalclf", champion, f"animalclf.gate.{k}", v)
    client.set_registered_model_alias("animalclf", "champion", champion)
    register(run("bare", "train", {"arch": "efficientnet_b0"}))  # v3: its run logged no report
    return {"uri": uri, "train": train, "tune": tune, "children": children, "weak": weak, "strong": strong}


STUDY_TITLES = ["Optimization History Plot", "Hyperparameter Importances", "Parallel Coordinate Plot"]


def _search_folder(out: Path, trials: list[dict]) -> None:
    """What a search leaves in its folder, written by the search's own code: a real Optuna study
    (sqlite) holding the trials, its figures, trials.json and the page."""
    import optuna

    from animalclf.config import TrainConfig
    from animalclf.tune.results import write_search_plots
    from animalclf.tune.space import parse_space
    from animalclf.tune.study import open_storage, study_figures

    space = parse_space(["lr=1e-4:1e-2", "unfreeze=0:3"])
    study = optuna.create_study(storage=open_storage(out, fresh=True), study_name="animalclf-tune", direction="maximize")
    dists = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True), "unfreeze": optuna.distributions.IntDistribution(0, 3)}
    for t in trials:
        study.add_trial(optuna.trial.create_trial(params=t["config"], distributions=dists, value=t["best"]["val_accuracy"]))
    figs, notes = study_figures(out, "animalclf-tune")
    assert list(figs) == ["optimization_history", "param_importances", "optuna_parallel_coordinate"] and not notes, notes
    write_search_plots(out, trials, space, TrainConfig(metric="val_accuracy"), extra=figs, notes=notes)


class _Metadata(BaseHTTPRequestHandler):
    """A classifier's /metadata (and only that), naming the version in the class attribute ``meta``."""

    meta: dict = {}

    def do_GET(self):
        body = json.dumps(self.meta).encode() if self.path == "/metadata" else b'{"error": "no such route"}'
        self.send_response(200 if self.path == "/metadata" else 404)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


def _meta(version: str) -> dict:
    return {"model_version": version, "arch": "efficientnet_lite0", "classes": CLASSES, "unfreeze": 3, "epoch": 3,
            "preprocess": {"crop_size": 160}, "metrics": {"val_accuracy": 0.8, "val_f1": 0.78}, "last_load_error": None,
            "limits": {"max_bytes": 10 * 1024 * 1024}}


@pytest.fixture
def metadata_server():
    server = HTTPServer(("127.0.0.1", 0), _Metadata)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Metadata.meta = _meta("animalclf/2")
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _charts(at) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def _table_text(at) -> str:
    return " ".join(str(t.value.to_dict()) for t in at.table)


def test_model_page_shows_serving_version_search_lineage_and_comparison(monkeypatch, model_store, metadata_server):
    at = _app(monkeypatch, metadata_server)
    assert not at.error, [e.value for e in at.error]
    assert at.selectbox(key="model_version").value == "2" and at.selectbox(key="compare_version").value == "1"
    assert any("animalclf v2 @champion" in h.value and "serving" in h.value for h in at.subheader)
    metrics = {m.label: m for m in at.metric}
    strong, weak = model_store["strong"], model_store["weak"]
    assert metrics["Validation accuracy"].value == f"{strong['accuracy']:.1%}"
    assert metrics["Validation accuracy"].delta == f"{(strong['accuracy'] - weak['accuracy']) * 100:+.1f} pts vs v1"
    assert metrics["Macro F1"].value == f"{strong['macro_avg']['f1']:.3f}"
    charts = _charts(at)
    kinds = [t["type"] for c in charts for t in c["data"][:1]]
    assert kinds == ["heatmap", "scatter", "scatter", "scatter", "parcoords", "scatter", "scatter", "bar", "scatter", "bar"], kinds
    assert [c["layout"]["title"]["text"] for c in charts[6:9]] == STUDY_TITLES, "the Optuna study's own figures"
    assert sorted(charts[7]["data"][0]["y"]) == ["lr", "unfreeze"]  # importances, one bar per parameter
    assert charts[0]["data"][0]["z"] == strong["confusion_matrix"]
    assert [d["label"] for d in charts[4]["data"][0]["dimensions"]] == ["log10 lr", "unfreeze", "val_accuracy"]
    assert len(charts[5]["data"]) == 3  # one curve per trial
    trials = at.dataframe[1].value
    assert list(trials["trial"]) == ["t1", "t2 ★", "t3"] and list(trials["status"])[2] == "STOPPED_BY_ASHA"
    lineage = _table_text(at)
    assert model_store["tune"] in lineage and model_store["children"]["t2"] in lineage and "COMPLETED" in lineage
    assert "'gate.decision'" in lineage and "'promoted-cheaper'" in lineage, "the version's own tags (the promotion gate's)"
    gate = [m.value for m in at.markdown if m.value.startswith("Promotion gate:")]
    assert gate == ["Promotion gate: **promoted-cheaper** against v1; accuracy 90.0% vs 91.0% on 60 images; better: McNemar "
                    "p=0.8; no worse by 5.0%: p=0.03; 16.1 ms per photo vs 161.0 (10.0x cheaper, 3x asked)"], gate
    assert any("**lr** 0.002" in m.value and "**unfreeze** 3" in m.value for m in at.markdown), "the best trial's parameters"
    compared = at.table[1].value.set_index("")
    assert list(compared.columns) == ["v2 @champion", "v1"]
    assert compared.loc["accuracy"].tolist() == [f"{strong['accuracy']:.1%}", f"{weak['accuracy']:.1%}"]
    assert compared.loc["lr"].tolist() == ["0.002", "0.001"], "each side's own training parameters"

    at.selectbox(key="model_version").set_value("1").run()  # the fine-tune, against the champion
    assert not at.exception and not at.error, at.exception
    assert {m.label: m.value for m in at.metric}["Validation accuracy"] == f"{weak['accuracy']:.1%}"
    assert at.selectbox(key="compare_version").value == "2"
    assert model_store["train"] in _table_text(at)
    assert any("train run, not a search" in c.value for c in at.caption)
    assert [t["type"] for c in _charts(at) for t in c["data"][:1]] == ["heatmap", "scatter", "scatter", "scatter", "bar"]

    at.selectbox(key="model_version").set_value("3").run()  # a version whose run has no report
    assert not at.exception and not at.error, at.exception
    assert any("has no evaluation report" in i.value for i in at.info)
    assert not _charts(at) and not at.metric


def test_model_page_messages_instead_of_tracebacks(monkeypatch, project, metadata_server):
    at = _app(monkeypatch, metadata_server)  # no store yet
    assert [e.value for e in at.error] == [f"No MLflow store at {project / 'runs' / 'mlflow.db'}: train or tune a model first "
                                           f"(make demo), or set MLFLOW_TRACKING_URI (or ANIMALCLF_HOME) to where the runs are."]
    assert not (project / "runs" / "mlflow.db").exists(), "looking must not create a store"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", closed_endpoint())
    at = _app(monkeypatch, metadata_server)
    assert any("is unreachable" in e.value for e in at.error), [e.value for e in at.error]
    _Metadata.meta = _meta("checkpoint:/srv/ck")
    at = _app(monkeypatch, metadata_server)
    assert any("serves a checkpoint" in i.value for i in at.info)
    assert {m.label: m.value for m in at.metric} == {"Validation accuracy (checkpoint)": "80.0%", "Macro F1 (checkpoint)": "0.780"}


def test_model_page_endpoint_down_or_unknown_version(monkeypatch, model_store, metadata_server):
    at = _app(monkeypatch, closed_endpoint())
    assert any("Cannot reach the classifier" in w.value for w in at.warning)
    assert at.selectbox(key="model_version").value == "2", "without the endpoint, the champion"
    assert not at.error and len(_charts(at)) == 10
    _Metadata.meta = _meta("animalclf/9")
    at = _app(monkeypatch, metadata_server)
    assert not at.exception and at.selectbox(key="model_version").value == "2"
    assert any("serves animalclf v9, which the MLflow store" in w.value for w in at.warning)
    _Metadata.meta = _meta("other/1")
    at = _app(monkeypatch, metadata_server)
    assert [e.value for e in at.error] == [f"No registered model 'other' in the MLflow store {model_store['uri']}."]


def test_app_imports_no_torch(model_store, metadata_server):
    """The UI is an HTTP client: the whole page, Model tab included, runs without loading torch."""
    code = (f"import sys\nfrom streamlit.testing.v1 import AppTest\n"
            f"at = AppTest.from_file({SCRIPT!r}, default_timeout=60)\nat.run()\n"
            f"assert not at.exception, at.exception\nassert len(at.get('plotly_chart')) == 10\n"
            f"print('torch' in sys.modules, [m for m in ('torch', 'torchvision', 'ray') if m in sys.modules])\n")
    env = {**os.environ, "ANIMALCLF_ENDPOINT": metadata_server, "ANIMALCLF_GALLERY": ""}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "False []", out.stdout


@pytest.mark.slow
@pytest.mark.ray
def test_model_page_reads_what_a_real_search_logged(monkeypatch, ray_session, project, tiny_folder, metadata_server):
    """The contract with the jobs: a real search's parent run, trials, report and registered version."""
    from animalclf.config import TrainConfig
    from animalclf.tune.space import parse_space
    from animalclf.tune.search import TuneOptions, run_search

    cfg = TrainConfig(data=str(tiny_folder), arch="efficientnet_lite0", image_size=64, batch_size=8, epochs=2, patience=0,
                      model_name="tiny-ui", experiment="ui-test", unfreeze=0)
    out = run_search(cfg, parse_space(["lr=1e-3:1e-2", "unfreeze="], arch=cfg.arch),
                     TuneOptions(name="ui", num_samples=2, max_concurrent=2, asha=False, points=[{"lr": 5e-3}, {"lr": 2e-3}]))
    report = json.loads((Path(out.report_dir) / "report.json").read_text())
    best_trial = next(t["trial_id"] for t in out.trials if t["config"] == out.best_config)
    _Metadata.meta = _meta(f"tiny-ui/{out.model_version}")
    at = _app(monkeypatch, metadata_server)
    assert not at.error, [e.value for e in at.error]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Validation accuracy"] == f"{report['accuracy']:.1%}" and metrics["Classes"] == "3"
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    assert [c["data"][0]["type"] for c in charts][:6] == ["heatmap", "scatter", "scatter", "scatter", "parcoords", "scatter"]
    # the study the search kept: importances need two different scores, else the page has a note instead
    scores = {t["best"]["val_accuracy"] for t in out.trials}
    titles = [c["layout"]["title"]["text"] for c in charts[6:]]
    assert titles == (STUDY_TITLES if len(scores) > 1 else [STUDY_TITLES[0], STUDY_TITLES[2]]), titles
    assert sorted(at.dataframe[1].value["trial"]) == sorted(t["trial_id"] + (" ★" if t["trial_id"] == best_trial else "") for t in out.trials)
    lineage = _table_text(at)
    assert out.parent_run_id in lineage and best_trial in lineage
    assert any(f"**lr** {out.best_config['lr']}" in m.value for m in at.markdown)


# --- with a real endpoint -------------------------------------------------------------------
@pytest.fixture(scope="module")
def endpoint(ray_session, tmp_path_factory):
    import torch

    from animalclf.models.checkpoint import save_checkpoint
    from animalclf.config import TrainConfig
    from animalclf.models.build import build_model
    from animalclf.train.worker import checkpoint_meta
    from serve import deploy

    torch.manual_seed(0)
    cfg = TrainConfig(arch="efficientnet_lite0", weights="imagenet", unfreeze=0, image_size=64)
    ckpt = save_checkpoint(tmp_path_factory.mktemp("app_ckpt") / "ck", build_model(cfg.arch, 15, 0, "imagenet"),
                           checkpoint_meta(cfg, CLASSES, {"val_accuracy": 0.5}, 1))
    # The endpoint requires a key; the UI reads it from the same variable (serve.auth).
    key_file = tmp_path_factory.mktemp("app_key") / "key"
    key_file.write_text(API_KEY)
    key_file.chmod(0o600)
    url = deploy.start(str(ckpt), port=free_port(), api_key_file=str(key_file))
    endpoint_key_file[url] = str(key_file)
    yield url
    deploy.stop()


API_KEY = "ui-test-" + "k" * 24
endpoint_key_file: dict[str, str] = {}


def _keyed(monkeypatch, url: str) -> None:
    monkeypatch.setenv("ANIMALCLF_API_KEY_FILE", endpoint_key_file[url])


def _top_class(url: str, path: Path) -> str:
    r = requests.post(f"{url}/predict", data=path.read_bytes(), timeout=30, headers={"Authorization": f"Bearer {API_KEY}"})
    assert r.status_code == 200, r.text
    return r.json()["predictions"][0]["class"]


@pytest.mark.slow
@pytest.mark.ray
def test_apptest_without_the_key_says_so(monkeypatch, endpoint, photo, project):
    monkeypatch.delenv("ANIMALCLF_API_KEY", raising=False)
    monkeypatch.delenv("ANIMALCLF_API_KEY_FILE", raising=False)
    at = _app(monkeypatch, endpoint)
    at.file_uploader[0].set_value((photo.name, photo.read_bytes(), "image/jpeg")).run()
    assert not at.exception
    assert any("requires an API key" in e.value and "ANIMALCLF_API_KEY" in e.value for e in at.error), \
        [e.value for e in at.error]


@pytest.mark.slow
@pytest.mark.ray
def test_apptest_with_endpoint_shows_prediction(monkeypatch, endpoint, photo, shared_data, project):
    _keyed(monkeypatch, endpoint)
    at = _app(monkeypatch, endpoint, str(shared_data))
    assert not at.error, [e.value for e in at.error]
    assert any("efficientnet_lite0" in c.value for c in at.caption)  # model tab from /metadata
    assert any("serves a checkpoint" in i.value for i in at.info)
    at.file_uploader[0].set_value((photo.name, photo.read_bytes(), "image/jpeg")).run()
    gallery_pick = sorted((shared_data / "Panda").iterdir())[0]
    at.multiselect[0].select(f"Panda/{gallery_pick.name}").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    shown = [m.value for m in at.markdown if m.value.startswith("Prediction:")]
    assert shown[0].startswith(f"Prediction: **{_top_class(endpoint, photo)}**"), shown
    assert shown[1].startswith(f"Prediction: **{_top_class(endpoint, gallery_pick)}**"), shown
    assert any("latency" in c.value and "checkpoint:" in c.value for c in at.caption)


@contextlib.contextmanager
def _streamlit(env: dict, log_path: Path):
    """``streamlit run`` the app as a user does; yields its URL once /_stcore/health answers."""
    port = free_port()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", SCRIPT, "--server.address", "127.0.0.1", "--server.port", str(port),
             "--server.headless", "true", "--server.maxUploadSize", "10", "--browser.gatherUsageStats", "false"],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            ui = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    if requests.get(f"{ui}/_stcore/health", timeout=2).ok:
                        break
                except requests.RequestException:
                    pass
                assert proc.poll() is None, log_path.read_text()
                time.sleep(0.5)
            else:
                pytest.fail("streamlit did not start: " + log_path.read_text())
            yield ui
        finally:
            proc.terminate()
            proc.wait(timeout=20)


@contextlib.contextmanager
def _chromium():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is absent: apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"])
        try:
            yield browser
        finally:
            browser.close()


# What a drawn plotly chart holds, per chart on the page (data marks, not just an empty frame).
_DRAWN = """() => [...document.querySelectorAll('.js-plotly-plot')].map(d => ({
    width: d.getBoundingClientRect().width,
    svg: d.querySelectorAll('svg.main-svg').length,
    heatmap: d.querySelectorAll('g.hm image').length,
    lines: [...d.querySelectorAll('g.scatterlayer g.trace')].filter(t => t.querySelector('path.js-line[d^="M"]')).length,
    bars: d.querySelectorAll('g.point path').length,
    pc_axes: d.querySelectorAll('g.parcoords g.y-axis').length,
    pc_canvas: d.querySelectorAll('canvas').length,
}))"""


@pytest.mark.browser
def test_browser_model_page_draws_charts(model_store, metadata_server, tmp_path):
    env = {**os.environ, "ANIMALCLF_ENDPOINT": metadata_server, "ANIMALCLF_GALLERY": ""}
    with _streamlit(env, tmp_path / "streamlit.log") as ui, _chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(ui, timeout=60_000)
        page.get_by_role("tab", name="Model").click(timeout=60_000)
        page.get_by_text("Validation accuracy").first.wait_for(timeout=60_000)
        page.wait_for_function("document.querySelectorAll('.js-plotly-plot').length >= 10", timeout=60_000)
        page.wait_for_function("document.querySelectorAll('.js-plotly-plot g.hm image, .js-plotly-plot path.js-line').length > 0",
                               timeout=30_000)
        deadline = time.monotonic() + 30  # plotly draws chart by chart: sample until all ten are drawn
        while True:
            drawn = page.evaluate(_DRAWN)
            if (len(drawn) == 10 and all(c["width"] > 200 and c["svg"] > 0 for c in drawn)
                    and drawn[7]["bars"] == 2 and drawn[3]["lines"] == 4) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        titles = page.evaluate("() => [...document.querySelectorAll('.js-plotly-plot')].map("
                               "d => (d.querySelector('.gtitle') || {}).textContent)")
        page.get_by_text("vs v1").first.wait_for(timeout=30_000)  # the headline's deltas against the peer version
        # the lineage table's cells are markdown, drawn after the table itself (CI read an empty table once under load)
        page.get_by_text(f"{model_store['tune']} (animalclf-tune)").first.wait_for(timeout=30_000)
        body = page.inner_text("body")
    strong = model_store["strong"]
    assert len(drawn) == 10 and all(c["width"] > 200 and c["svg"] > 0 for c in drawn), drawn
    confusion, pr, roc, learning, parcoords, trial_curves, history, importances, study_parcoords, compare = drawn
    assert titles[6:9] == STUDY_TITLES, titles
    assert history["lines"] >= 1 and importances["bars"] == 2 and study_parcoords["lines"] >= 1, drawn
    assert confusion["heatmap"] == 1, confusion
    # a curve per class (ROC: and chance), per learning-curve key, per trial; two bars per class
    assert (pr["lines"], roc["lines"], learning["lines"], trial_curves["lines"]) == (15, 16, 4, 3), drawn
    assert parcoords["pc_axes"] == 3 and parcoords["pc_canvas"] > 0 and compare["bars"] == 2 * len(CLASSES), drawn
    assert f"{strong['accuracy']:.1%}" in body and f"{strong['macro_avg']['f1']:.3f}" in body, body[:2000]
    lineage = body[body.find("Lineage"):][:1500]
    assert "vs v1" in body, body[:2000]
    assert model_store["tune"] in lineage, lineage
    assert "Traceback" not in body, body


@pytest.mark.browser
def test_browser_report_pages_draw_offline(model_store, project):
    """The HTML pages the jobs write (report.html, search.html) draw in a browser that can reach
    nothing but the file itself: plotly.js is inside them."""
    fetched = []
    with _chromium() as browser:
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file:")
                   else (fetched.append(route.request.url), route.abort()))
        drawn = {}
        for html, n in ((project / "report-2" / "report.html", 4), (project / "search" / "search.html", 5)):
            page.goto(html.as_uri(), timeout=60_000)
            page.wait_for_function(f"document.querySelectorAll('.js-plotly-plot svg.main-svg').length >= {n}", timeout=60_000)
            drawn[html.name] = page.evaluate(_DRAWN)
    assert not fetched, fetched
    assert len(drawn["report.html"]) == 4 and drawn["report.html"][0]["heatmap"] == 1, drawn
    assert len(drawn["search.html"]) == 5 and drawn["search.html"][3]["bars"] == 2, drawn  # ..., importances, ...


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.browser
def test_browser_upload_shows_prediction(endpoint, photo, tmp_path, project):
    env = {**os.environ, "ANIMALCLF_ENDPOINT": endpoint, "ANIMALCLF_GALLERY": "",
           "ANIMALCLF_API_KEY_FILE": endpoint_key_file[endpoint]}
    with _streamlit(env, tmp_path / "streamlit.log") as ui, _chromium() as browser:
        page = browser.new_page()
        page.goto(ui, timeout=60_000)
        page.wait_for_selector('input[type="file"]', state="attached", timeout=60_000)
        page.set_input_files('input[type="file"]', str(photo))
        found = page.get_by_text("Prediction:").first
        found.wait_for(timeout=60_000)
        text = found.inner_text()
        page.get_by_text("ms in the replica").first.wait_for(timeout=60_000)  # rendered after the header
        body = page.inner_text("body")
    assert text.startswith(f"Prediction: {_top_class(endpoint, photo)} ("), text
    assert "latency" in body and "Traceback" not in body
