"""What ``make submit-*`` (mk/jobs.mk) sends with a job: where its head is, the job's Python
packages pinned like this checkout's, and the dashboard's link to the job.

A head on this machine (``make head-start``) runs a job with this checkout's venv. Any other head
(a cluster, reached directly or through ``ray dashboard cluster.yaml``'s SSH tunnel on loopback)
runs it with the nodes' ``python``, and the job's runtime env asks Ray to install the project's
dependencies (pyproject.toml) under constraints.txt, read from the uploaded working dir
(``pip -c``): every package, direct or not, at the version the tests passed with. Ray's ``pip``
env is a virtualenv over the node's own site-packages (``--system-site-packages``, or a clone of
the node's venv), so what a node has at the pinned version stays and only what it lacks is
installed, once per node and set of pins (Ray caches the env).

    python -m animalclf.runtime.jobenv where http://127.0.0.1:8265     # "here" or "cluster"
    python -m animalclf.runtime.jobenv runtime-env --home DIR --pip    # the --runtime-env-json
    python -m animalclf.runtime.jobenv link ADDRESS SUBMISSION_ID      # the dashboard's job page
"""

from __future__ import annotations

import argparse
import hashlib
import ipaddress
import json
import logging
import os
import socket
import sys
import tomllib
from pathlib import Path
from typing import Any, Mapping, Optional
from urllib.parse import urlparse

from animalclf.errors import UserError

log = logging.getLogger(__name__)

__all__ = ["PROJECT_ROOT", "CONSTRAINTS_FILE", "pip_runtime_env", "head_on_this_machine", "dashboard_url", "job_link",
           "submit_runtime_env"]

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONSTRAINTS_FILE = "constraints.txt"
# Set by Ray's runtime env agent, while it builds the pip env, to the job's working dir on the node.
WORKING_DIR_REF = "${RAY_RUNTIME_ENV_CREATE_WORKING_DIR}"
DEFAULT_DASHBOARD_PORT = 8265
# What a Ray head's own listening processes have in their command lines (dashboard, GCS, client server).
RAY_LISTENERS = ("dashboard/dashboard.py", "gcs_server", "ray.util.client.server")


def pip_runtime_env(root: Path = PROJECT_ROOT) -> dict[str, Any]:
    """The runtime env's ``pip`` section: ``root``'s pyproject.toml dependencies, constrained by its
    constraints.txt as the job's working dir holds it on the node, and a line naming the file's
    digest (Ray keys its cached env by this list: new pins, a new env)."""
    try:
        deps = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
        digest = hashlib.sha256((root / CONSTRAINTS_FILE).read_bytes()).hexdigest()[:16]
    except (OSError, KeyError, tomllib.TOMLDecodeError) as e:
        raise UserError(f"Cannot read the job's dependencies from {root} ({type(e).__name__}: {e}): submit from the "
                        f"repository root, which holds pyproject.toml and {CONSTRAINTS_FILE}.") from None
    return {"packages": [*deps, f"-c {WORKING_DIR_REF}/{CONSTRAINTS_FILE}", f"# {CONSTRAINTS_FILE} sha256 {digest}"],
            "pip_check": False}


def _host_port(address: str) -> tuple[str, int]:
    if "://" not in address:
        address = "tcp://" + address
    url = urlparse(address)
    default = {"http": 80, "https": 443}.get(url.scheme, DEFAULT_DASHBOARD_PORT)
    return url.hostname or "127.0.0.1", url.port or default


def _local_ips() -> set[str]:
    import psutil

    return {a.address.split("%")[0] for addrs in psutil.net_if_addrs().values() for a in addrs
            if a.family in (socket.AF_INET, socket.AF_INET6)}


def head_on_this_machine(address: str) -> bool:
    """Whether ``address`` (a dashboard URL, ``ray://`` or GCS ``host:port``) is a Ray head of this
    machine: its host is one of this machine's addresses and the process listening on its port is
    Ray's (dashboard, GCS, client server). A loopback port served by anything else, such as the
    SSH tunnel of ``ray dashboard cluster.yaml``, is a cluster's."""
    import psutil

    if address in ("auto", "local"):
        return True
    host, port = _host_port(address)
    try:
        ips = {info[4][0] for info in socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)}
    except OSError:
        return False
    if not all(ipaddress.ip_address(ip).is_loopback or ip in _local_ips() for ip in ips):
        return False
    for conn in psutil.net_connections(kind="inet"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
            try:
                cmdline = " ".join(psutil.Process(conn.pid).cmdline())
            except psutil.Error:
                continue
            return any(mark in cmdline for mark in RAY_LISTENERS)
    return False


def dashboard_url(address: str) -> str:
    """The dashboard's base URL for a job submission address: an ``http(s)://`` address as it is;
    a ``ray://`` or GCS address resolved the way ``ray job submit`` resolves it."""
    if address.startswith(("http://", "https://")):
        return address.rstrip("/")
    from ray.dashboard.utils import get_address_for_submission_client

    return get_address_for_submission_client(address).rstrip("/")


def job_link(address: str, submission_id: str) -> str:
    """The dashboard's page of one job."""
    return f"{dashboard_url(address)}/#/jobs/{submission_id}"


def submit_runtime_env(home: Optional[str], pip: bool, environ: Mapping[str, str] = os.environ,
                       root: Path = PROJECT_ROOT) -> dict[str, Any]:
    """The ``--runtime-env-json`` of ``make submit-*``: the tracking variables and upload excludes
    (:func:`animalclf.tracking.job_runtime_env`), ``ANIMALCLF_HOME=home`` (may hold ``${HOME}``,
    which Ray expands on the node; ``None``: none sent), and with ``pip`` the pinned packages."""
    from animalclf.tracking import job_runtime_env

    env = job_runtime_env({k: v for k, v in environ.items() if k != "ANIMALCLF_HOME"})
    if home:
        env["env_vars"]["ANIMALCLF_HOME"] = home
    if pip:
        env["pip"] = pip_runtime_env(root)
    return env


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], prog="python -m animalclf.runtime.jobenv")
    sub = parser.add_subparsers(dest="command", required=True)
    where = sub.add_parser("where", help='print "here" for a head of this machine, else "cluster"')
    where.add_argument("address")
    env = sub.add_parser("runtime-env", help="print the job's runtime env as JSON")
    env.add_argument("--home", default="", help="ANIMALCLF_HOME inside the job (default: none sent)")
    env.add_argument("--pip", default="0", help="1: install the pinned dependencies on the nodes (default: 0)")
    link = sub.add_parser("link", help="print the dashboard's page of a job")
    link.add_argument("address")
    link.add_argument("submission_id")
    return parser


def main(args: argparse.Namespace) -> int:
    if args.command == "where":
        print("here" if head_on_this_machine(args.address) else "cluster")
    elif args.command == "runtime-env":
        print(json.dumps(submit_runtime_env(args.home or None, args.pip.lower() in ("1", "true", "yes", "on"))))
    else:
        print(job_link(args.address, args.submission_id))
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        sys.exit(main(get_args_parser().parse_args()))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
