"""Finding and stopping the processes of one Ray head: those naming its temp dir or its address,
and all their descendants. Used by the driver that started the head (:mod:`.localray`) and by its
guardian (:mod:`.headguard`), which must not import each other."""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["head_processes", "stop_processes", "kill_processes", "reap"]


def head_processes(temp_dir: Path, address: str = "") -> list:
    """The processes of one head: those naming its temp dir or its address, and all their descendants."""
    import psutil

    # Ray's client server names neither the temp dir nor the address we gave, only "--address=<node ip>:<port>".
    port = re.compile(rf"--address=\S+:{re.escape(address.rpartition(':')[2])}(\s|$)") if address else None
    roots = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        if p.pid == os.getpid():
            continue
        cmd = " ".join(p.info["cmdline"] or ())
        if str(temp_dir) in cmd or (port and port.search(cmd)):
            roots.append(p)
    found = {p.pid: p for p in roots}
    for p in roots:
        try:
            found.update({c.pid: c for c in p.children(recursive=True)})
        except psutil.Error:
            pass
    found.pop(os.getpid(), None)
    return list(found.values())


def stop_processes(temp_dir: Path, address: str = "", grace_s: float = 2.0) -> None:
    """SIGTERM a head's processes (:func:`head_processes`), SIGKILL what is left after ``grace_s``.

    A short grace is enough: the head is ours and everything worth keeping is already written, and
    ``gcs_server``, ``raylet`` and the runtime-env agent do not exit on SIGTERM anyway (measured: all
    three still up 6 s later), so a longer wait only delays the exit."""
    import psutil

    procs = head_processes(temp_dir, address)
    for p in procs:
        try:
            p.terminate()
        except psutil.Error:  # gone, or not ours to signal
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    kill_processes(alive + head_processes(temp_dir, address))  # and any orphan reparented to us meanwhile
    reap()


def kill_processes(procs: list, wait_s: float = 5.0) -> None:
    """SIGKILL ``procs`` (psutil processes; gone ones are skipped) and wait for them to go."""
    import psutil

    for p in procs:
        try:
            p.kill()
        except psutil.Error:  # gone, or not ours to signal
            pass
    psutil.wait_procs(procs, timeout=wait_s)


def reap() -> None:
    """Collect exited children (as a subreaper we inherit the head's daemons)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
