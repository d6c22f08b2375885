"""A private head from an empty HOME, what it listens on, and dead heads that must not hang a run.

Each test runs its own processes with a fresh HOME (no ~/.ray token) and never touches the suite's
shared head; heads started here are killed by their own processes, never with `ray stop`.
"""

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
from animalclf.runtime.processes import head_processes, kill_processes
from netcheck import check_beyond_loopback, listeners

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")
SCRUB = ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "ANIMALCLF_HOME")
SMOKE = ["--arch", "efficientnet_lite0", "--smoke-test", "--no-track"]


def fresh_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    home = Path(tempfile.mkdtemp(dir=tmp_path, prefix="home-"))
    env = {k: v for k, v in os.environ.items() if k not in SCRUB}
    env.update(HOME=str(home), ANIMALCLF_HOME=str(tmp_path / "project"), RAY_USAGE_STATS_ENABLED="0", **extra)
    return env


def train(data: Path, env: dict[str, str], *extra: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "ray_jobs" / "train.py"), "--data", str(data), *SMOKE, *extra],
                          env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def kill_head(temp_dir: str, address: str) -> None:
    """SIGKILL every process of a head: what an OOM kill or a crashed container does."""
    kill_processes(head_processes(Path(temp_dir), address))


def user_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_private_head_from_empty_home_listens_safely_and_leaves_nothing(tmp_path):
    """From an empty HOME: the token is created (never printed), the head starts with auth on, every
    listener is on loopback or refuses a token-less client, and stopping it leaves no process."""
    env = fresh_env(tmp_path)
    script = ("import sys; from animalclf.runtime.localray import start_head; h = start_head(num_cpus=1, connect=False); "
              "print(h.address, h.temp_dir, h.dashboard_url, flush=True); sys.stdin.read(); h.stop(); print('stopped', flush=True)")
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT, start_new_session=True)
    try:
        address, temp_dir, dashboard = proc.stdout.readline().split()
        token_file = Path(env["HOME"]) / ".ray" / "auth_token"
        assert token_file.is_file() and oct(token_file.stat().st_mode & 0o777) == "0o600"
        time.sleep(5)  # let the agents open their ports
        procs = head_processes(Path(temp_dir), address)
        found = listeners(procs)
        assert found, "no listener found: the process lookup is broken"
        dash_port = int(dashboard.rpartition(":")[2])
        assert any(x.port == dash_port and x.loopback for x in found), found
        problems, metrics = check_beyond_loopback(found)
        assert not problems, "\n".join(problems)
        print("metrics-only ports beyond loopback (no token, read-only):", metrics)
        proc.stdin.close()
        assert proc.stdout.readline().strip() == "stopped"
        proc.wait(30)
        assert token_file.read_text().strip() not in proc.stderr.read()
        time.sleep(1)
        left = [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert not left, [(p.pid, p.name()) for p in left]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_dead_recorded_head_starts_a_private_one_and_dead_address_is_one_line(tmp_path, tiny_folder):
    """A head killed with SIGKILL leaves its address recorded: train.py says so and runs on a private
    head; a RAY_ADDRESS that does not answer ends in seconds with one line naming it."""
    ray_tmp = Path(tempfile.mkdtemp(prefix="rt-", dir="/tmp"))  # short: Ray's socket paths
    env = fresh_env(tmp_path, RAY_TMPDIR=str(ray_tmp))
    subprocess.run([sys.executable, "-m", "animalclf.runtime.rayauth"], env=env, check=True, capture_output=True, cwd=ROOT)
    port = free_port()
    start = subprocess.run([RAY, "start", "--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false",
                            f"--ray-client-server-port={free_port()}", "--disable-usage-stats"],
                           env={**env, "RAY_AUTH_MODE": "token"}, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert start.returncode == 0, start.stderr[-2000:]
    recorded = (ray_tmp / "ray" / "ray_current_cluster").read_text().strip()
    try:
        kill_head(str(ray_tmp), recorded)
        time.sleep(1)

        t0 = time.monotonic()
        r = train(tiny_folder, env)
        assert r.returncode == 0, r.stderr[-3000:]
        assert f"The Ray recorded at {recorded}" in r.stderr and "starting a private one" in r.stderr
        assert "Traceback" not in r.stderr
        print(f"dead recorded head -> private head, smoke run: {time.monotonic() - t0:.1f} s")

        # The line comes from our own probe of the port, before ray.init (whose retries would
        # run past the timeout): the behaviour is the line, not a wall-clock figure on a busy CI.
        dead = f"127.0.0.1:{free_port()}"
        r = train(tiny_folder, {**env, "RAY_ADDRESS": dead}, timeout=90)
        assert r.returncode == 2, r.stderr[-2000:]
        assert user_lines(r.stderr) == [user_lines(r.stderr)[0]] and dead in user_lines(r.stderr)[0]
        assert "does not answer" in r.stderr and "unset it" in r.stderr and "Traceback" not in r.stderr
    finally:
        kill_head(str(ray_tmp), recorded)


def test_head_killed_mid_run_ends_in_seconds_with_one_line(tmp_path, tiny_folder):
    """train.py on a `ray start` head that is SIGKILLed mid-run exits within 30 s with one line."""
    ray_tmp = Path(tempfile.mkdtemp(prefix="rt-", dir="/tmp"))
    env = fresh_env(tmp_path)
    subprocess.run([sys.executable, "-m", "animalclf.runtime.rayauth"], env=env, check=True, capture_output=True, cwd=ROOT)
    port = free_port()
    start = subprocess.run([RAY, "start", "--head", f"--port={port}", "--num-cpus=2", f"--temp-dir={ray_tmp}",
                            f"--ray-client-server-port={free_port()}", f"--dashboard-port={free_port()}",
                            "--dashboard-host=127.0.0.1", "--disable-usage-stats"],
                           env={**env, "RAY_AUTH_MODE": "token"}, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert start.returncode == 0, start.stderr[-2000:]
    address = (ray_tmp / "ray_current_cluster").read_text().strip()
    log = tmp_path / "train.log"
    args = ["--arch", "efficientnet_lite0", "--no-track", "--image-size", "64", "--epochs", "100", "--patience", "0",
            "--max-steps-per-epoch", "2", "--batch-size", "8", "--unfreeze", "1"]
    proc = subprocess.Popen([sys.executable, str(ROOT / "ray_jobs" / "train.py"), "--data", str(tiny_folder), *args],
                            env={**env, "RAY_ADDRESS": address, "RAY_AUTH_MODE": "token"}, stdout=log.open("w"),
                            stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while "epoch 1/" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(1)
        kill_head(str(ray_tmp), address)
        t0 = time.monotonic()
        rc = proc.wait(60)
        took = time.monotonic() - t0
        out = log.read_text()
        errors = [line for line in out.splitlines() if line.startswith("error:")]
        assert rc == 3, out[-3000:]
        assert len(errors) == 1 and address in errors[0] and "stopped answering" in errors[0], errors
        assert took < 30, took
        print(f"head killed mid-run: driver ended {took:.1f} s later")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        kill_head(str(ray_tmp), address)


def test_train_on_its_private_head_stops_on_sigint_and_leaves_nothing(tmp_path, tiny_folder):
    """train.py with no Ray to join starts a private head; SIGINT (kill -INT) mid-run ends it with
    exit 130 within 30 s, and no process of that head is left. (SIGTERM mid-fine-tune, the same
    run_training path on a private head, is test_demo's fine-tune/sigterm case.)"""
    env = fresh_env(tmp_path)
    log = tmp_path / "train.log"
    args = ["--arch", "efficientnet_lite0", "--no-track", "--image-size", "64", "--epochs", "100", "--patience", "0",
            "--max-steps-per-epoch", "2", "--batch-size", "8", "--unfreeze", "1"]
    proc = subprocess.Popen([sys.executable, str(ROOT / "ray_jobs" / "train.py"), "--data", str(tiny_folder), *args],
                            env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while "epoch 1/" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(1)
        temp_dir = log.read_text().split("temp dir ", 1)[1].split(")", 1)[0]
        tree = psutil.Process(proc.pid).children(recursive=True)
        t0 = time.monotonic()
        os.kill(proc.pid, signal.SIGINT)
        rc = proc.wait(45)
        took = time.monotonic() - t0
        assert rc == 130 and took < 30, (rc, took, log.read_text()[-2000:])
        time.sleep(1)
        left = [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        named = [p for p in psutil.process_iter(["cmdline"]) if temp_dir in " ".join(p.info["cmdline"] or ())]
        assert not left and not named, [(p.pid, p.name()) for p in left + named]
        print(f"train.py SIGINT: stopped in {took:.1f} s, nothing left")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_only_your_own_recorded_head_is_joined(tmp_path, monkeypatch, caplog):
    """The record of `ray start` lives in a world-writable folder: one written by another user, or
    writable by others, is not joined (one line says why); your own is."""
    import logging

    from animalclf.runtime import localray

    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    record = localray.recorded_address_file()
    record.parent.mkdir(parents=True)
    record.parent.chmod(0o777)  # as Ray leaves it
    record.write_text("127.0.0.1:6390")
    record.chmod(0o644)
    assert localray._recorded_address() == "127.0.0.1:6390"
    with caplog.at_level(logging.WARNING, logger="animalclf.runtime.localray"):
        record.chmod(0o666)
        assert localray._recorded_address() is None
        assert "writable by others" in caplog.text and "private head" in caplog.text
        record.chmod(0o644)
        if os.getuid() == 0:  # as root, make it another user's, as a neighbour's `ray start` would
            os.chown(record, 65534, 65534)
            caplog.clear()
            assert localray._recorded_address() is None
            assert "belongs to user id 65534" in caplog.text and "RAY_ADDRESS" in caplog.text


def test_no_auth_only_by_name(tmp_path, tiny_folder):
    """RAY_AUTH_MODE=disabled: train.py runs on a private head without a token, after a warning
    that says what is exposed; a value that is neither is one line and exit 2, before any Ray."""
    env = fresh_env(tmp_path, RAY_AUTH_MODE="disabled")
    r = train(tiny_folder, env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "WITHOUT authentication" in r.stderr and "run code as you" in r.stderr
    assert not (Path(env["HOME"]) / ".ray" / "auth_token").exists()
    r = train(tiny_folder, fresh_env(tmp_path, RAY_AUTH_MODE="off"), timeout=60)
    assert r.returncode == 2 and user_lines(r.stderr) and "RAY_AUTH_MODE='off'" in user_lines(r.stderr)[0], r.stderr[-2000:]
    assert "Traceback" not in r.stderr and "Local Ray head" not in r.stderr


def test_free_port_avoids_ray_worker_ports_and_outgoing_connections(tmp_path):
    """Ports for servers come from between Ray's worker ports and the kernel's ephemeral range,
    where a Ray worker or an outgoing connection cannot take them before the server binds; a port
    in use is never given; no port twice; without such a range, ``bind(0)``."""
    import socket

    from animalclf.runtime.localray import RAY_WORKER_PORTS, _ephemeral_low

    low = _ephemeral_low()
    assert low is not None  # Linux: the range file is there
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == 50 and all(RAY_WORKER_PORTS[1] < p < low for p in ports), ports

    window = tmp_path / "range"  # a window of 102 ports above Ray's, half of them held by listeners
    start = RAY_WORKER_PORTS[1] + 1
    window.write_text(f"{start + 102}\t60999\n")
    held = []
    try:
        for port in range(start, start + 102, 2):
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", port))
            except OSError:  # already in use here: held all the same
                s.close()
                continue
            s.listen()
            held.append(s)
        busy = {s.getsockname()[1] for s in held}
        got = [free_port(window) for _ in range(5)]
        assert all(start <= p < start + 102 and p not in busy for p in got), (got, sorted(busy))
    finally:
        for s in held:
            s.close()

    missing = tmp_path / "none"  # no range (not Linux): the kernel's choice, still free
    port = free_port(missing)
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
