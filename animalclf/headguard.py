"""A private Ray head that dies with the process that started it, however that process ends.

`ray start` puts the head's daemons (GCS, raylet, dashboard, workers) in a process group of their
own, so a driver killed by SIGKILL, the OOM killer or a closed terminal leaves its private head
running: its Train controller goes on training and checkpointing for a run nobody watches, and a
rerun with the same ``--name`` may find a checkpoint written after the kill. :func:`start_guardian`
starts a small process, in a session of its own (Ctrl-C in the terminal does not reach it), that
holds the read end of a pipe whose only write end the starting process holds; when that process
is gone the pipe reads end-of-file and the guardian stops the head's processes
(:func:`animalclf.localray.stop_processes`: found by temp dir and address, nothing else) and
removes its temp dir.

    python -m animalclf.headguard TEMP_DIR ADDRESS     # stdin: the pipe; started by start_guardian
"""

from __future__ import annotations

import logging
import shutil
import signal
import subprocess
import sys
from pathlib import Path

log = logging.getLogger(__name__)

__all__ = ["start_guardian", "guard"]


def start_guardian(temp_dir: Path, address: str) -> subprocess.Popen:
    """Start the guardian of the head at ``address`` (temp dir ``temp_dir``); returns its process.

    Close its ``stdin`` (or exit, in any way) to let it stop the head; after a clean stop it finds
    nothing left and exits."""
    return subprocess.Popen([sys.executable, "-m", "animalclf.headguard", str(temp_dir), address],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, close_fds=True)


def guard(temp_dir: Path, address: str, grace_s: float = 2.0) -> None:
    """Block until stdin reads end-of-file, then stop the head's processes and remove its temp dir."""
    from animalclf.localray import stop_processes

    for sig in (signal.SIGINT, signal.SIGHUP):  # a terminal's signals are for the driver, not for us
        signal.signal(sig, signal.SIG_IGN)
    while sys.stdin.buffer.read(4096):
        pass
    stop_processes(temp_dir, address, grace_s=grace_s)
    shutil.rmtree(temp_dir, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(f"usage: python -m {__spec__.name if __spec__ else 'animalclf.headguard'} TEMP_DIR ADDRESS")
    guard(Path(sys.argv[1]), sys.argv[2])
