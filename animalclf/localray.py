"""A private Ray head on this machine, started like ``ray start --head`` and named up front.

``RAY_ADDRESS`` is set *before* the head starts, so every Ray process it spawns inherits it and
finds its own cluster even when other Ray instances run on the machine (Ray Train V2's
placement-group cleaner otherwise refuses to choose and leaks the trainer's resources). Used by
the demo, the tests and the benchmarks; stopping it kills only its own processes (``ray stop``
would stop every Ray on the machine).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

log = logging.getLogger(__name__)

__all__ = ["LocalHead", "start_head", "free_port", "stop_processes"]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LocalHead:
    address: str
    dashboard_url: str
    temp_dir: Path

    def stop(self) -> None:
        """Disconnect and kill this head's processes (only them), then remove its temp dir."""
        import ray

        if ray.is_initialized():
            ray.shutdown()
        stop_processes(self.temp_dir)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _pids_naming(text: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", text], capture_output=True, text=True, check=False).stdout
    return [int(p) for p in out.split() if int(p) != os.getpid()]


def stop_processes(temp_dir: Path, grace_s: float = 10.0) -> None:
    """SIGTERM the processes whose command line names ``temp_dir``; SIGKILL those alive after
    ``grace_s`` (``gcs_server`` ignores SIGTERM once its raylet is gone)."""
    subprocess.run(["pkill", "-f", str(temp_dir)], check=False)
    deadline = time.monotonic() + grace_s
    while _pids_naming(str(temp_dir)) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in _pids_naming(str(temp_dir)):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def start_head(num_cpus: Optional[int] = None, dashboard_port: Optional[int] = None, connect: bool = True) -> LocalHead:
    """Start a head on loopback (token auth on, dashboard on ``dashboard_port``) and connect to it."""
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # short: Ray's socket paths must stay < 108 chars
    port = free_port()
    dash = dashboard_port or free_port()
    os.environ["RAY_ADDRESS"] = f"127.0.0.1:{port}"
    cmd = [str(Path(sys.executable).parent / "ray"), "start", "--head", f"--port={port}", f"--temp-dir={temp}",
           f"--dashboard-port={dash}", "--dashboard-host=127.0.0.1", "--node-ip-address=127.0.0.1", "--disable-usage-stats"]
    if num_cpus is not None:
        cmd.append(f"--num-cpus={num_cpus}")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    if r.returncode != 0:
        raise RuntimeError(f"ray start failed: {r.stderr[-2000:]}")
    head = LocalHead(os.environ["RAY_ADDRESS"], f"http://127.0.0.1:{dash}", temp)
    if connect:
        import ray

        ray.init(address=head.address, logging_level=logging.WARNING)
    log.info("Local Ray head at %s (dashboard %s)", head.address, head.dashboard_url)
    return head
