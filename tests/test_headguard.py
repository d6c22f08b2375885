"""animalclf.runtime.headguard: a head's processes go when the process that started them is SIGKILLed,
and only they. Real processes: a starter that spawns a stand-in head in a process group of its own
(as `ray start` does) and its guardian; the Ray case itself is in
tests/test_fault_tolerance.py::test_driver_killed_rerun_resumes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from animalclf.runtime.localray import free_port
from animalclf.runtime.processes import head_processes
from animalclf.runtime.trainproc import running

ROOT = Path(__file__).resolve().parents[1]

STARTER = """
import os, subprocess, sys, time
from animalclf.runtime.headguard import start_guardian
temp, address = os.environ["HEAD_TEMP"], os.environ["HEAD_ADDRESS"]  # not in argv: a driver's argv does not name them
sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]
head = subprocess.Popen(sleeper + [f"--temp-dir={temp}"], start_new_session=True)          # the head's, by temp dir
other = subprocess.Popen(sleeper + ["--address=10.0.0.1:1"], start_new_session=True)        # someone else's
guardian = start_guardian(temp, address)
print(head.pid, other.pid, guardian.pid, flush=True)
time.sleep(600)
"""


def gone(pid: int) -> bool:
    return not running(pid)


def wait_gone(pids: list[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(gone(p) for p in pids):
            return True
        time.sleep(0.1)
    return False


def test_starter_killed_takes_its_head_and_nothing_else():
    temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    (temp / "session_latest").mkdir()
    address = f"127.0.0.1:{free_port()}"
    starter = subprocess.Popen([sys.executable, "-c", STARTER], stdout=subprocess.PIPE, text=True, cwd=ROOT,
                               env={**os.environ, "HEAD_TEMP": str(temp), "HEAD_ADDRESS": address},
                               start_new_session=True)
    head = other = guardian = None
    try:
        head, other, guardian = map(int, starter.stdout.readline().split())
        time.sleep(1.0)
        assert not gone(head) and not gone(guardian), "the guardian acted while its starter was alive"
        found = {p.pid for p in head_processes(temp, address)}
        assert head in found and guardian not in found, "a clean stop would find the guardian among the head's processes"
        os.killpg(starter.pid, signal.SIGKILL)  # the starter's group: the head and the guardian are not in it
        starter.wait(10)
        assert wait_gone([head, guardian], 15), "the head outlived its starter"
        assert not temp.exists(), "the head's temp dir was left behind"
        assert not gone(other), "a process that is not the head's was killed"
    finally:
        for pid in (head, other, guardian):
            if pid and not gone(pid):
                os.kill(pid, signal.SIGKILL)
        if starter.poll() is None:
            os.killpg(starter.pid, signal.SIGKILL)
