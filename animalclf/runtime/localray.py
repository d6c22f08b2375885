"""Which Ray a process uses, and a private head on this machine whose whole life we own.

:func:`init_ray` joins the Ray that ``RAY_ADDRESS`` (or ``ray job submit``) names, or the one
``ray start`` recorded on this machine, after checking within seconds that it answers; otherwise
it starts a private head. :func:`start_head` starts a head on loopback with token auth and its
own temp dir; ``RAY_ADDRESS`` is set *before* it starts so every Ray process it spawns finds its
own cluster even when other Ray instances run here. Stopping it kills only its own processes
(found by its temp dir, its address and the process tree, never ``ray stop``).
"""

from __future__ import annotations

import _thread
import atexit
import ctypes
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from animalclf import tracking
from animalclf.errors import UserError
from animalclf.runtime import headguard, rayauth
from animalclf.runtime.processes import stop_processes

log = logging.getLogger(__name__)

__all__ = ["LocalHead", "start_head", "init_ray", "connect_driver", "owns_head", "drives_own_head", "stop_owned", "free_port",
           "recorded_address_file", "lost_head"]

PR_SET_CHILD_SUBREAPER = 36


RAY_WORKER_PORTS = (10002, 19999)  # Ray's default --min-worker-port/--max-worker-port
EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_handed_out: set[int] = set()


def _ephemeral_low(range_file: Path = EPHEMERAL_RANGE_FILE) -> Optional[int]:
    """The lowest port the kernel gives outgoing connections and ``bind(0)``, or ``None`` (not Linux)."""
    try:
        return int(range_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _binds(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(range_file: Path = EPHEMERAL_RANGE_FILE) -> int:
    """A TCP port free on 127.0.0.1 right now, for a server to bind a moment later.

    Taken between Ray's worker ports and the kernel's ephemeral range, where neither a Ray worker
    nor an outgoing connection (Serve and Ray open many) takes a port on its own; a port from
    ``bind(0)`` is in the ephemeral range and can be taken by a connection before the server binds
    it. Never the same port twice in one process. Without such a range: ``bind(0)``."""
    low, high = RAY_WORKER_PORTS[1] + 1, _ephemeral_low(range_file)
    if high is not None and high - low > 100:
        for _ in range(200):
            port = random.randrange(low, high)
            if port not in _handed_out and _binds(port):
                _handed_out.add(port)
                return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _handed_out.add(port)
    return port


def answers(address: str, timeout: float = 2.0) -> bool:
    """Whether something accepts TCP connections at ``host:port``."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


@dataclass
class LocalHead:
    address: str
    dashboard_url: str
    temp_dir: Path
    guardian: Optional[subprocess.Popen] = field(default=None, repr=False)
    _stopped: bool = field(default=False, repr=False)

    def stop(self) -> None:
        """Disconnect and kill this head's processes (only them), then remove its temp dir."""
        if self._stopped:
            return
        self._stopped = True
        _Watchdog.stop()
        import ray

        try:
            if ray.is_initialized():
                try:
                    ray.shutdown()
                except Exception as e:  # a dead head must not keep us from cleaning up
                    log.debug("ray.shutdown: %s", e)
            stop_processes(self.temp_dir, self.address)
            shutil.rmtree(self.temp_dir, ignore_errors=True)
        finally:  # the guardian is retired last: a stop cut short (a second Ctrl-C) still has it
            if self.guardian is not None:
                self.guardian.kill()
                self.guardian.wait()
                self.guardian.stdin.close()
        if os.environ.get("RAY_ADDRESS") == self.address:
            os.environ.pop("RAY_ADDRESS")


def _become_subreaper() -> None:
    """Keep the daemons `ray start` forks as our descendants, so stopping finds every one (Linux)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


# Serve's HTTP proxy answers its own errors (503 overload, 408 timeout) in plain text; this hook,
# read by the proxy at start from the head's environment, makes them JSON like ours (serve.web).
SERVE_PROXY_CALLBACK = {"RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": "serve.web:proxy_middlewares"}


def head_environment(environ: Optional[dict] = None) -> dict[str, str]:
    """The environment a head starts with: ours, plus :data:`SERVE_PROXY_CALLBACK` unless set."""
    return {**SERVE_PROXY_CALLBACK, **(os.environ if environ is None else environ)}


def start_head(num_cpus: Optional[int] = None, dashboard_port: Optional[int] = None, connect: bool = True,
               fate_share: bool = True) -> LocalHead:
    """Start a head on loopback (token auth on, dashboard on ``dashboard_port``) and connect to it.

    With ``fate_share`` (the default) the head is stopped when this process ends in any way, a
    SIGKILL included (:mod:`animalclf.runtime.headguard`); without it, it outlives us like `ray start`'s."""
    rayauth.enable_token_auth()
    _become_subreaper()
    temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # short: Ray's socket paths must stay < 108 chars
    port = free_port()
    dash = dashboard_port or free_port()
    os.environ["RAY_ADDRESS"] = f"127.0.0.1:{port}"
    cmd = [str(Path(sys.executable).parent / "ray"), "start", "--head", f"--port={port}", f"--temp-dir={temp}",
           f"--dashboard-port={dash}", "--dashboard-host=127.0.0.1", "--node-ip-address=127.0.0.1",
           f"--ray-client-server-port={free_port()}", "--disable-usage-stats"]
    if num_cpus is not None:
        cmd.append(f"--num-cpus={num_cpus}")
    head = LocalHead(os.environ["RAY_ADDRESS"], f"http://127.0.0.1:{dash}", temp)
    try:
        if fate_share:  # first: a kill while `ray start` runs is covered too
            head.guardian = headguard.start_guardian(temp, head.address)
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=head_environment())
        if head.guardian is not None and head.guardian.poll() is not None:
            log.warning("The guardian of the Ray head at %s exited (status %s): the head will outlive this "
                        "process if it is killed.", head.address, head.guardian.returncode)
        if r.returncode != 0:
            raise RuntimeError(f"ray start failed: {r.stderr[-2000:]}")
        if connect:
            connect_driver(head.address)
            _driven.append(head)
    except BaseException:  # Ctrl-C while starting leaves nothing behind either
        head.stop()
        raise
    log.info("Local Ray head at %s (dashboard %s, temp dir %s)", head.address, head.dashboard_url, head.temp_dir)
    return head


# ------------------------------------------------------------------ joining, or a private head

_owned: list[LocalHead] = []
_driven: list[LocalHead] = []  # heads :func:`start_head` connected this process to


def drives_own_head() -> bool:
    """Whether this process is the driver of a head it started and has not stopped yet: whatever runs
    on that Ray ends when this process stops it (the demo's head, :func:`init_ray`'s private one)."""
    return any(not h._stopped for h in _driven)


def owns_head() -> bool:
    """Whether this process started (and will stop) the Ray it runs on."""
    return bool(_owned)


def stop_owned() -> None:
    """Stop the private head :func:`init_ray` started, if any (entry points call this on exit)."""
    while _owned:
        _owned.pop().stop()


def recorded_address_file() -> Path:
    """Where `ray start --head` records "the current cluster" of this machine: Ray's default temp
    dir (``$RAY_TMPDIR``, else ``$TMPDIR``, else ``/tmp``) + ``ray/ray_current_cluster``."""
    base = os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp"
    return Path(base) / "ray" / "ray_current_cluster"


def _recorded_address() -> Optional[str]:
    """The address ``ray start`` recorded, when the record is this user's own; else ``None`` (with
    one line saying why). Ray's temp dir is world-writable, so another local user could write the
    record: joining their head would hand them our code, data and credentials, and unpickle what
    they send back."""
    path = recorded_address_file()
    try:
        st = path.stat()
        address = path.read_text().strip() or None
    except OSError:
        return None
    if address is None:
        return None
    if st.st_uid != os.getuid():
        log.warning("Not joining the Ray at %s recorded in %s: the record belongs to user id %d, not to you; starting "
                    "a private head instead (set RAY_ADDRESS to join a head on purpose).", address, path, st.st_uid)
        return None
    if st.st_mode & 0o022:
        log.warning("Not joining the Ray at %s recorded in %s: the record is writable by others (mode %o); starting "
                    "a private head instead (set RAY_ADDRESS to join a head on purpose).", address, path,
                    st.st_mode & 0o777)
        return None
    return address


def init_ray(num_cpus: Optional[int] = None) -> Optional[LocalHead]:
    """Join the running Ray or start a private head; return the head when we started it.

    ``RAY_ADDRESS`` (set by ``ray job submit`` too) must answer within seconds, else one line says
    so. An address recorded by an earlier ``ray start`` is joined only when the record is this
    user's (:func:`_recorded_address`) and it answers; otherwise a private head is started, with
    one line saying why. Tracking credentials travel in a runtime env only when this shell joins a
    running cluster from outside a job, and then secrets as a private file's path, removed when
    this process ends (:func:`animalclf.tracking.runtime_env_vars`); a Ray we start inherits our
    environment, and a job's env already reaches its workers.
    """
    import ray

    if ray.is_initialized():
        return None
    rayauth.enable_token_auth()
    explicit = os.environ.get("RAY_ADDRESS", "").strip()
    if explicit == "local":  # Ray's own spelling for "start a new local instance"
        explicit = address = ""
    else:
        address = explicit if explicit and explicit != "auto" else _recorded_address()
    if address and "://" not in address:
        if not answers(address):
            if explicit and explicit != "auto":
                raise UserError(f"The Ray at RAY_ADDRESS={address} does not answer: start it (`make head-start`), "
                                f"fix RAY_ADDRESS, or unset it to run on a private local Ray.")
            log.warning("The Ray recorded at %s (%s) does not answer (a head that died without `ray stop`): "
                        "starting a private one instead.", address, recorded_address_file())
            address = None
    if not address:
        head = start_head(num_cpus=num_cpus)
        _owned.append(head)
        atexit.register(stop_owned)
        return head
    if "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ:
        connect_driver(address)
        return None
    env = tracking.worker_env()
    atexit.register(tracking.forget_secrets, env)
    connect_driver(address, runtime_env={"env_vars": env})
    return None


def connect_driver(address: str, **init_kwargs) -> None:
    """``ray.init`` this process as a driver of ``address``, keeping our own signal handling (Ray
    sets a SIGTERM handler that exits with status 15 and a C++ crash handler that turns SIGTERM
    into an abort), and watch that the head keeps answering."""
    import ray

    previous = signal.getsignal(signal.SIGTERM)
    os.environ["RAY_DISABLE_FAILURE_SIGNAL_HANDLER"] = "1"  # this driver only: not its children
    try:
        ray.init(address=address, logging_level=logging.WARNING, **init_kwargs)
    finally:
        os.environ.pop("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", None)
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous)
    if "://" not in address:
        _Watchdog.start(address)


class _Watchdog:
    """Ends the run when the head stops answering mid-run (Ray's own driver retries its GCS
    connection for minutes): interrupts the main thread, which entry points turn into one line
    (:func:`lost_head`) and a clean exit; a main thread that does not react within 8 s is ended."""

    _stop = threading.Event()
    lost: Optional[str] = None
    misses_allowed = 3
    interval_s = 2.0

    @classmethod
    def start(cls, address: str) -> None:
        cls._stop = threading.Event()
        threading.Thread(target=cls._run, args=(address, cls._stop), name="ray-head-watchdog", daemon=True).start()

    @classmethod
    def stop(cls) -> None:
        cls._stop.set()

    @classmethod
    def _run(cls, address: str, stop: threading.Event) -> None:
        misses = 0
        while not stop.wait(cls.interval_s):
            misses = 0 if answers(address) else misses + 1
            if misses >= cls.misses_allowed and not stop.is_set():
                cls.lost = address
                _thread.interrupt_main()
                if not stop.wait(8):  # the main thread sits in a Ray call that does not see the interrupt
                    print(f"error: {lost_head()}", file=sys.stderr, flush=True)
                    os._exit(3)
                return


def lost_head() -> Optional[str]:
    """The one-line error when the head died mid-run, else ``None``."""
    if not _Watchdog.lost:
        return None
    return (f"the Ray head at {_Watchdog.lost} stopped answering mid-run: start it again (or unset RAY_ADDRESS for "
            f"a private one) and rerun; the same --name resumes from the last checkpoint.")
