"""The Streamlit UI: the HTTP client's error messages, the page logic through AppTest (endpoint
down, endpoint up), and end to end in a real headless Chromium against a real Serve endpoint."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import requests

from app.client import Client, EndpointError, gallery_images, load_report

REPO = Path(__file__).resolve().parents[1]
SCRIPT = str(REPO / "app" / "streamlit_app.py")
CHROMIUM = "/usr/bin/chromium"
CLASSES = ["Bear", "Bird", "Cat", "Cow", "Deer", "Dog", "Dolphin", "Elephant", "Giraffe", "Horse",
           "Kangaroo", "Lion", "Panda", "Tiger", "Zebra"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def closed_endpoint() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens there


@pytest.fixture(scope="module")
def photo(shared_data) -> Path:
    return sorted((shared_data / "Tiger").iterdir())[0]


# --- client --------------------------------------------------------------------------------
class _Canned(BaseHTTPRequestHandler):
    """Answers every request with the status/body/headers in the class attribute ``answer``."""

    answer: tuple[int, bytes, dict] = (200, b"{}", {})

    def _reply(self):
        n = int(self.headers.get("content-length") or 0)
        self.rfile.read(n)
        status, body, headers = self.answer
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _reply

    def log_message(self, *a):
        pass


@pytest.fixture
def canned():
    server = HTTPServer(("127.0.0.1", 0), _Canned)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield server, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_client_messages(canned):
    server, url = canned
    with pytest.raises(EndpointError, match="Cannot reach the classifier"):
        Client(closed_endpoint()).health()
    cases = [
        ((415, json.dumps({"error": "not an image: send a JPEG"}).encode(), {"content-type": "application/json"}), "rejected.*415.*not an image"),
        ((503, b"Request dropped due to backpressure", {"retry-after": "1"}), "overloaded.*503.*in 1 s"),
        ((500, json.dumps({"error": "internal error"}).encode(), {}), "failed.*500.*internal error"),
        ((200, b"<html>", {}), "not JSON"),
    ]
    for answer, pattern in cases:
        _Canned.answer = answer
        with pytest.raises(EndpointError, match=pattern):
            Client(url).predict(b"\xff\xd8data", "x.jpg")
    _Canned.answer = (200, json.dumps({"predictions": [{"class": "Cat", "probability": 0.9}]}).encode(), {})
    assert Client(url).predict(b"x")["predictions"][0]["class"] == "Cat"
    with pytest.raises(EndpointError, match="limit"):
        Client(url).predict(b"\0" * (10 * 1024 * 1024 + 1), "big.jpg")


def test_gallery_and_report_without_mlflow(shared_data):
    imgs = gallery_images(shared_data, per_class=2)
    assert len(imgs) == 30 and {p.parent.name for p in imgs} == set(CLASSES)
    report, note = load_report("checkpoint:/some/dir")
    assert report is None and "not a registered" in note


# --- AppTest -------------------------------------------------------------------------------
def _app(monkeypatch, endpoint: str, gallery: str = ""):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("ANIMALCLF_ENDPOINT", endpoint)
    monkeypatch.setenv("ANIMALCLF_GALLERY", gallery)
    at = AppTest.from_file(SCRIPT, default_timeout=60)
    at.run()
    assert not at.exception, at.exception
    return at


def test_apptest_endpoint_down_shows_clear_message(monkeypatch, photo):
    at = _app(monkeypatch, closed_endpoint())
    assert any("Cannot reach the classifier" in e.value for e in at.error), "model tab must say the endpoint is down"
    at.file_uploader[0].set_value((photo.name, photo.read_bytes(), "image/jpeg")).run()
    assert not at.exception, at.exception
    msgs = [e.value for e in at.error]
    assert any(photo.name in m and "Cannot reach the classifier" in m for m in msgs), msgs
    assert not [m for m in at.markdown if m.value.startswith("Prediction:")]


# --- with a real endpoint -------------------------------------------------------------------
@pytest.fixture(scope="module")
def endpoint(ray_session, tmp_path_factory):
    import torch

    from animalclf.checkpoint import save_checkpoint
    from animalclf.config import TrainConfig
    from animalclf.model import build_model
    from animalclf.trainer import checkpoint_meta
    from serve import deploy

    torch.manual_seed(0)
    cfg = TrainConfig(arch="efficientnet_lite0", weights="imagenet", unfreeze=0, image_size=64)
    ckpt = save_checkpoint(tmp_path_factory.mktemp("app_ckpt") / "ck", build_model(cfg.arch, 15, 0, "imagenet"),
                           checkpoint_meta(cfg, CLASSES, {"val_accuracy": 0.5}, 1))
    url = deploy.start(str(ckpt), port=free_port())
    yield url
    deploy.stop()


def _top_class(url: str, path: Path) -> str:
    r = requests.post(f"{url}/predict", data=path.read_bytes(), timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["predictions"][0]["class"]


@pytest.mark.slow
@pytest.mark.ray
def test_apptest_with_endpoint_shows_prediction(monkeypatch, endpoint, photo, shared_data):
    at = _app(monkeypatch, endpoint, str(shared_data))
    assert not at.error, [e.value for e in at.error]
    assert any("efficientnet_lite0" in m.value for m in at.markdown)  # model tab from /metadata
    at.file_uploader[0].set_value((photo.name, photo.read_bytes(), "image/jpeg")).run()
    gallery_pick = sorted((shared_data / "Panda").iterdir())[0]
    at.multiselect[0].select(f"Panda/{gallery_pick.name}").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    shown = [m.value for m in at.markdown if m.value.startswith("Prediction:")]
    assert shown[0].startswith(f"Prediction: **{_top_class(endpoint, photo)}**"), shown
    assert shown[1].startswith(f"Prediction: **{_top_class(endpoint, gallery_pick)}**"), shown
    assert any("latency" in c.value and "checkpoint:" in c.value for c in at.caption)


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.browser
def test_browser_upload_shows_prediction(endpoint, photo, tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is absent: apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    port = free_port()
    env = {**os.environ, "ANIMALCLF_ENDPOINT": endpoint, "ANIMALCLF_GALLERY": ""}
    log = open(tmp_path / "streamlit.log", "w")
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
            assert proc.poll() is None, (tmp_path / "streamlit.log").read_text()
            time.sleep(0.5)
        else:
            pytest.fail("streamlit did not start: " + (tmp_path / "streamlit.log").read_text())
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=CHROMIUM, headless=True,
                args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                      "--disable-component-update", "--disable-sync", "--no-first-run"])
            try:
                page = browser.new_page()
                page.goto(ui, timeout=60_000)
                page.wait_for_selector('input[type="file"]', state="attached", timeout=60_000)
                page.set_input_files('input[type="file"]', str(photo))
                found = page.get_by_text("Prediction:").first
                found.wait_for(timeout=60_000)
                text = found.inner_text()
                page.get_by_text("ms in the replica").first.wait_for(timeout=60_000)  # rendered after the header
                body = page.inner_text("body")
            finally:
                browser.close()
        assert text.startswith(f"Prediction: {_top_class(endpoint, photo)} ("), text
        assert "latency" in body and "Traceback" not in body
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()
