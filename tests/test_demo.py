"""The demo's own checks: bad input, and stopping it in every phase (the whole demo runs in
`make demo`, which CI runs from an empty HOME)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from animalclf.runtime.localray import free_port
from netcheck import check_beyond_loopback, listeners

ROOT = Path(__file__).resolve().parents[1]
MARKERS = {"fine-tune": "== 1/4", "search": "== 2/4", "serving": "Stop everything with Ctrl-C"}


def test_demo_without_data_says_where_to_get_it(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "ray_jobs" / "demo.py"), "--data", str(tmp_path / "none")],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 2
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("error: No dataset") and "DATA=" in line and "Kaggle" in line
    assert "Traceback" not in r.stderr and not (tmp_path / "runs").exists()


def test_demo_with_negative_trials_is_one_line_before_any_work(tmp_path, tiny_folder):
    r = subprocess.run([sys.executable, str(ROOT / "ray_jobs" / "demo.py"), "--data", str(tiny_folder), "--trials", "-1"],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("error: --trials -1"), r.stderr[-2000:]
    assert "Traceback" not in r.stderr and not (tmp_path / "runs").exists()


@pytest.mark.slow
@pytest.mark.timeout(400)
@pytest.mark.parametrize("phase, how", [("fine-tune", "ctrl-c"), ("fine-tune", "sigterm"), ("serving", "sigint")])
def test_demo_stops_in_every_phase_and_leaves_nothing(phase, how, tmp_path, tiny_folder):
    """Started as its own process group from an empty HOME with tiny settings; a terminal's Ctrl-C
    (SIGINT to the group), SIGINT to the demo alone, or SIGTERM ends it within 30 s with exit code
    130, and no process of its Ray head, Serve or Streamlit is left (the head's temp dir and the
    demo's process tree). While serving, every socket it listens on is on loopback or refuses a
    client without the Ray token. Stopped mid fine-tune, nothing is registered. (The serving case
    skips the search, ``--trials 0``; `make demo` in CI runs the whole of it.)"""
    home = tempfile.mkdtemp(dir=tmp_path, prefix="home-")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_", "DAGSHUB_"))}
    env.update(HOME=home, ANIMALCLF_HOME=str(tmp_path / "project"))
    serve_port, ui_port = free_port(), free_port()
    log = tmp_path / "demo.log"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "ray_jobs" / "demo.py"), "--data", str(tiny_folder), "--image-size", "64",
         "--trials", "0" if phase == "serving" else "1", "--tune-epochs", "1", "--serve-port", str(serve_port),
         "--ui-port", str(ui_port)],
        env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while MARKERS[phase] not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        time.sleep(3)  # inside the phase, not at its first line
        text = log.read_text()
        temp_dir = text.split("temp dir ", 1)[1].split(")", 1)[0]
        tree = psutil.Process(proc.pid).children(recursive=True)
        assert any(temp_dir in " ".join(p.cmdline()) for p in tree if p.is_running()), "head not in the demo's tree"
        if phase == "serving":
            found = listeners([psutil.Process(proc.pid), *tree])
            ports = {x.port: x for x in found}
            for port in (serve_port, ui_port):
                assert port in ports and all(x.loopback for x in found if x.port == port), (port, found)
            problems, metrics = check_beyond_loopback(found)
            assert not problems, "\n".join(problems)
            print("metrics-only ports beyond loopback:", metrics)

        t0 = time.monotonic()
        {"ctrl-c": lambda: os.killpg(proc.pid, signal.SIGINT), "sigint": lambda: os.kill(proc.pid, signal.SIGINT),
         "sigterm": lambda: os.kill(proc.pid, signal.SIGTERM)}[how]()
        rc = proc.wait(45)
        took = time.monotonic() - t0
        out = log.read_text()
        assert rc == 130, out[-3000:]
        assert took < 30, took
        assert "stopped: UI, Serve and the local Ray" in out
        time.sleep(1)
        left = [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        named = [p for p in psutil.process_iter(["cmdline"]) if temp_dir in " ".join(p.info["cmdline"] or ())]
        assert not left and not named, [(p.pid, " ".join(p.cmdline())[:100]) for p in left + named]
        if phase == "fine-tune":  # stopped mid-run: nothing registered, no champion
            from mlflow import MlflowClient

            store = f"sqlite:///{tmp_path / 'project' / 'runs' / 'mlflow.db'}"
            client = MlflowClient(tracking_uri=store, registry_uri=store)
            assert client.search_model_versions("name='animalclf'") == []
        print(f"{phase}/{how}: stopped in {took:.1f} s, nothing left")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
