"""serve.auth: the endpoint's API key, from the variable or a file, checked on a real Serve endpoint;
the key's value never in Serve's config that Ray token holders read; /metadata redacted without it."""

from __future__ import annotations

import json
import logging
import stat
from pathlib import Path

import pytest
import requests

from serve.auth import KEY_FILE_VAR, KEY_VAR, authorized, client_headers, key_file_for_replicas, read_key


def test_key_sources_in_order(tmp_path):
    f = tmp_path / "k"
    f.write_text("from-file\n")
    assert read_key(None, {}) is None
    assert read_key(None, {KEY_VAR: "from-env"}) == "from-env"
    assert read_key(None, {KEY_VAR: "from-env", KEY_FILE_VAR: str(f)}) == "from-file"
    assert read_key(str(f), {KEY_VAR: "from-env"}) == "from-file"
    with pytest.raises(OSError, match="cannot be read"):
        read_key(str(tmp_path / "missing"), {})  # never an open endpoint because a file went missing
    (tmp_path / "empty").write_text(" \n")
    with pytest.raises(OSError, match="empty"):
        read_key(str(tmp_path / "empty"), {})


def test_a_key_in_the_environment_reaches_replicas_as_a_private_file(tmp_path):
    assert key_file_for_replicas(tmp_path, {}) is None
    path = Path(key_file_for_replicas(tmp_path, {KEY_VAR: "s3cret-key"}))
    assert path.read_text() == "s3cret-key" and path.parent == tmp_path / ".secrets"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    given = tmp_path / "mine"
    given.write_text("x")
    assert key_file_for_replicas(tmp_path, {KEY_FILE_VAR: str(given), KEY_VAR: "y"}) == str(given.resolve())


def test_authorized_headers():
    assert authorized({}, None)
    assert authorized({"authorization": "Bearer k1"}, "k1") and authorized({"authorization": "bearer k1"}, "k1")
    assert authorized({"x-api-key": "k1"}, "k1")
    assert not authorized({}, "k1") and not authorized({"authorization": "Bearer k2"}, "k1")
    assert not authorized({"authorization": "Basic k1"}, "k1") and not authorized({"x-api-key": "k"}, "k1")
    assert client_headers({KEY_VAR: "k1"}) == {"Authorization": "Bearer k1"} and client_headers({}) == {}


def test_exposed_without_a_key_is_a_loud_warning(caplog):
    from serve.deploy import warn_if_exposed
    from serve.settings import ServeSettings

    with caplog.at_level(logging.WARNING):
        warn_if_exposed(ServeSettings(host="127.0.0.1"))
        warn_if_exposed(ServeSettings(host="0.0.0.0", api_key_file="/k"))
        assert not caplog.records
        warn_if_exposed(ServeSettings(host="0.0.0.0"))
    assert len(caplog.records) == 1 and "WITHOUT an API key" in caplog.text and "ANIMALCLF_API_KEY" in caplog.text


@pytest.mark.slow
@pytest.mark.ray
def test_keyed_endpoint(ray_session, tmp_path, monkeypatch, shared_data):
    """ANIMALCLF_API_KEY set where the launcher runs: predictions need it (Bearer or X-API-Key), 401
    without it or with another; /healthz is open and says only ready; /metadata tells an unknown
    caller no path, tracking URI or error text, and a key holder everything; the key's value is in
    no Serve config that a Ray token holder can read; refresh() works through Ray, not HTTP."""
    from ray.serve.context import _get_global_client

    from animalclf.runtime.localray import free_port
    from serve import deploy
    from test_serve_app import make_checkpoint

    key = "key-" + "z" * 30
    monkeypatch.setenv("ANIMALCLF_HOME", str(tmp_path))
    monkeypatch.setenv(KEY_VAR, key)
    ck = make_checkpoint(tmp_path / "ck", 64, 0)
    photo = sorted((shared_data / "Cat").iterdir())[0].read_bytes()
    url = deploy.start(str(ck), port=free_port())
    try:
        assert requests.get(f"{url}/healthz", timeout=10).json() == {"status": "ready"}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-API-Key": key[:-1]}):
            r = requests.post(f"{url}/predict", data=photo, headers=headers, timeout=30)
            assert r.status_code == 401 and "API key" in r.json()["error"], r.text
            assert r.headers["www-authenticate"] == "Bearer"
        r = requests.post(f"{url}/predict/batch", files=[("files", ("a.jpg", photo, "image/jpeg"))], timeout=30)
        assert r.status_code == 401
        for headers in ({"Authorization": f"Bearer {key}"}, {"X-API-Key": key}):
            r = requests.post(f"{url}/predict", data=photo, headers=headers, timeout=30)
            assert r.status_code == 200 and len(r.json()["predictions"]) == 5, r.text

        public = requests.get(f"{url}/metadata", timeout=10).json()
        assert public["api_key_required"] is True and public["model_version"] == "checkpoint:ck"
        assert str(tmp_path) not in json.dumps(public) and "settings" not in public and "pid" not in public
        full = requests.get(f"{url}/metadata", headers={"Authorization": f"Bearer {key}"}, timeout=10).json()
        assert full["model_ref"] == str(ck.resolve()) and full["settings"]["api_key_file"] and full["pid"] > 0
        assert full["last_load_error"] is None

        serve_state = json.dumps(_get_global_client().get_serve_details(), default=str)
        assert key not in serve_state and full["settings"]["api_key_file"] in serve_state  # a path, not the key
        assert stat.S_IMODE(Path(full["settings"]["api_key_file"]).stat().st_mode) == 0o600
        assert deploy.refresh(url)["model_ref"] == str(ck.resolve())  # through Ray: no HTTP answer trusted
    finally:
        deploy.stop()
