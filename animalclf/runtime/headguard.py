"""A private Ray head that dies with the process that started it, however that process ends.

`ray start` puts the head's daemons (GCS, raylet, dashboard, workers) in a process group of their
own, so a driver killed by SIGKILL, the OOM killer or a closed terminal leaves its private head
running: its Train controller goes on training and checkpointing for a run nobody watches, and a
rerun with the same ``--name`` may find a checkpoint written after the kill. :func:`start_guardian`
starts a small process, in a session of its own (Ctrl-C in the terminal does not reach it), that
holds the read end of a pipe whose only write end the starting process holds; when that process
is gone the pipe reads end-of-file and the guardian stops the head's processes
(:func:`animalclf.runtime.processes.stop_processes`: those naming its temp dir or address, and their
descendants; SIGTERM, then SIGKILL after 2 s) and removes its temp dir.

The head's temp dir and address reach the guardian through its environment, not its command line,
so the driver's own search for the head's processes never finds the guardian. A child that the
driver forks without exec (multiprocessing's ``fork``, DataLoader workers) inherits the pipe and
delays the guardian until that child has exited too.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

__all__ = ["start_guardian", "guard"]

TEMP_VAR, ADDRESS_VAR = "ANIMALCLF_GUARD_TEMP_DIR", "ANIMALCLF_GUARD_ADDRESS"


def start_guardian(temp_dir: Path, address: str) -> subprocess.Popen:
    """Start the guardian of the head at ``address`` (temp dir ``temp_dir``); returns its process.

    Close its ``stdin`` (or exit, in any way) to let it stop the head; kill it to retire it."""
    package_root = str(Path(__file__).resolve().parents[2])  # importable wherever the driver runs from
    env = {**os.environ, TEMP_VAR: str(temp_dir), ADDRESS_VAR: address,
           "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen([sys.executable, "-m", "animalclf.runtime.headguard"], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            close_fds=True)


def guard(temp_dir: Path, address: str, grace_s: float = 2.0) -> None:
    """Block until stdin reads end-of-file, then stop the head's processes and remove its temp dir."""
    from animalclf.runtime.processes import stop_processes

    for sig in (signal.SIGINT, signal.SIGHUP):  # a terminal's signals are for the driver, not for us
        signal.signal(sig, signal.SIG_IGN)
    while sys.stdin.buffer.read(4096):
        pass
    try:
        stop_processes(temp_dir, address, grace_s=grace_s)
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)


if __name__ == "__main__":
    if TEMP_VAR not in os.environ or ADDRESS_VAR not in os.environ:
        sys.exit(f"{TEMP_VAR} and {ADDRESS_VAR} must be set: animalclf.runtime.headguard.start_guardian starts this")
    guard(Path(os.environ[TEMP_VAR]), os.environ[ADDRESS_VAR])
