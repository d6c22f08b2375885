"""The UI's HTTP client of the classifier (app.client): every failure one EndpointError meant for
the page (endpoint down, overloaded, rejected, not JSON, too big), and the API key sent from the
same variables the endpoint reads."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from app.client import Client, EndpointError, default_endpoint
from serve.auth import KEY_FILE_VAR, KEY_VAR
from test_app_ui import closed_endpoint


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
    with pytest.raises(EndpointError, match="limit is 1.0 MB"):
        Client(url, max_bytes=1_000_000).predict(b"\0" * 1_000_001, "big.jpg")


def test_the_key_variables_become_the_authorization_header(canned, monkeypatch, tmp_path):
    server, url = canned
    seen: list = []
    _Canned.answer = (200, b'{"status": "ok"}', {})
    original = _Canned._reply

    def recording(self):
        seen.append(self.headers.get("authorization"))
        original(self)

    monkeypatch.setattr(_Canned, "do_GET", recording)
    monkeypatch.delenv(KEY_FILE_VAR, raising=False)
    monkeypatch.delenv(KEY_VAR, raising=False)
    assert Client(url).headers == {} and Client(url).health() == {"status": "ok"}
    monkeypatch.setenv(KEY_VAR, "env-key")
    assert Client(url).health() == {"status": "ok"}
    key_file = tmp_path / "key"
    key_file.write_text("file-key\n")
    monkeypatch.setenv(KEY_FILE_VAR, str(key_file))  # the file wins, as on the endpoint
    assert Client(url).headers == {"Authorization": "Bearer file-key"} and Client(url).health()
    assert seen == [None, "Bearer env-key", "Bearer file-key"]
    monkeypatch.setenv(KEY_FILE_VAR, str(tmp_path / "missing"))  # unreadable: no header, the endpoint says 401
    assert Client(url).headers == {}
    _Canned.answer = (401, b'{"error": "unauthorized"}', {})
    with pytest.raises(EndpointError, match="requires an API key: set ANIMALCLF_API_KEY") as e:
        Client(url).metadata()
    assert e.value.status == 401


def test_the_endpoint_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("ANIMALCLF_ENDPOINT", "http://10.0.0.5:8000/")
    assert default_endpoint() == "http://10.0.0.5:8000" and Client().base_url == "http://10.0.0.5:8000"
    monkeypatch.delenv("ANIMALCLF_ENDPOINT")
    assert Client().base_url == "http://127.0.0.1:8000"
    down = Client(closed_endpoint(), timeout=2)
    with pytest.raises(EndpointError, match=r"Cannot reach the classifier at http://127\.0\.0\.1:\d+: is it running") as e:
        down.predict_batch([("a.jpg", b"x")])
    assert e.value.status is None and "ANIMALCLF_ENDPOINT" in str(e.value)
