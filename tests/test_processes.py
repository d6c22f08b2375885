"""Finding and stopping one head's processes (animalclf.runtime.processes), on real processes this
test starts: those naming the head's temp dir (or its address) and their descendants are found and
stopped; a process that names neither is left alone."""

import secrets
import subprocess
import time

import psutil
import pytest

from animalclf.runtime.processes import head_processes, stop_processes


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
def started():
    """Processes this test starts; whatever is left of them is killed afterwards."""
    procs: list[subprocess.Popen] = []

    def start(script: str) -> psutil.Process:
        procs.append(subprocess.Popen(["sh", "-c", script], stdin=subprocess.DEVNULL))
        return psutil.Process(procs[-1].pid)

    yield start
    for p in procs:
        for child in psutil.Process(p.pid).children(recursive=True) if not gone(p.pid) else []:
            child.kill()
        p.kill()
        p.wait(5)


def children(proc: psutil.Process, n: int) -> list[int]:
    deadline = time.monotonic() + 10
    while len(kids := proc.children(recursive=True)) < n:
        assert time.monotonic() < deadline, "the test's processes did not start"
        time.sleep(0.02)
    return sorted(k.pid for k in kids)


def test_a_heads_processes_and_their_descendants_are_found_and_stopped(tmp_path, started):
    temp_dir = tmp_path / f"head-{secrets.token_hex(6)}"  # no other process names it
    head = started(f"sleep 60 & sleep 61; : {temp_dir}")
    descendants = children(head, 2)  # the sleeps name nothing: found as descendants
    bystander = started("sleep 62; : not-a-head")
    children(bystander, 1)
    assert sorted(p.pid for p in head_processes(temp_dir)) == sorted([head.pid, *descendants])
    stop_processes(temp_dir, grace_s=5)
    assert all(gone(pid) for pid in [head.pid, *descendants])
    assert not gone(bystander.pid) and head_processes(temp_dir) == []


def test_a_process_naming_only_the_heads_port_is_one_of_its_processes(tmp_path, started):
    # Ray's client server names neither the temp dir nor the address given, only --address=<node ip>:<port>
    client_server = started("sleep 60; : --address=10.1.2.3:9")
    other_port = started("sleep 60; : --address=10.1.2.3:99")
    (sleep,) = children(client_server, 1)
    children(other_port, 1)
    found = {p.pid for p in head_processes(tmp_path / "not-named-anywhere", "127.0.0.1:9")}
    assert {client_server.pid, sleep} <= found and other_port.pid not in found
    assert not any(p.pid == client_server.pid for p in head_processes(tmp_path / "not-named-anywhere"))
