"""A multi-node, autoscaling Ray on one machine, built from cluster.yaml's node types.

Ray's fake multi-node provider (``RAY_FAKE_CLUSTER=1``) makes the autoscaler start each "node" as
its own raylet on this machine. :func:`fake_node_types` derives the node types from cluster.yaml,
scaled down: a node with ``GPU: n`` becomes ``{"CPU": n, "fake_gpu": n}`` (a logical ``GPU`` would
make workers look for CUDA), so the file and the tests cannot drift. :class:`FakeCluster` starts the
head by hand (``ray.cluster_utils.AutoscalingCluster`` runs ``ray stop --force``, which would kill
every Ray on the machine) on a free port with its own temp dir and token auth, and stops it by its
own processes (``animalclf.runtime.processes.stop_processes``): the worker raylets are descendants of the
head's autoscaler, so they go with it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import yaml
from ray.util import get_node_ip_address

from animalclf.runtime import rayauth
from animalclf.runtime.localray import free_port
from animalclf.runtime.processes import kill_processes, stop_processes

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAML = ROOT / "cluster.yaml"
FAKE_GPU = "fake_gpu"
# Seconds the multi-node tests measure (scale-up delay, time lost to a removed node ...): printed in
# pytest's terminal summary by tests/conftest.py, so `make test` shows them.
FIGURES: dict[str, float] = {}
HEAD_TYPE = "ray.head.default"  # the fake provider's name for the head's type


def load_cluster_yaml(path: Path = CLUSTER_YAML) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def scaled_resources(resources: dict[str, float]) -> dict[str, float]:
    """One node type's resources scaled to this machine: ``GPU: n`` becomes ``fake_gpu: n`` with
    ``CPU: n`` (one CPU per GPU: the Train worker's own); a type without GPUs keeps at most one CPU;
    custom resources stay as they are."""
    gpus = resources.get("GPU", 0)
    out = {k: v for k, v in resources.items() if k not in ("CPU", "GPU")}
    if gpus:
        out.update({"CPU": gpus, FAKE_GPU: gpus})
    else:
        out["CPU"] = min(resources.get("CPU", 0), 1)
    return out


def fake_node_types(config: dict[str, Any], max_per_type: int = 2, min_workers: Optional[dict[str, int]] = None) -> dict:
    """cluster.yaml's ``available_node_types`` for the fake provider: the head as ``ray.head.default``,
    each worker type with scaled resources and at most ``max_per_type`` nodes (``min_workers`` overrides)."""
    types: dict[str, Any] = {}
    for name, spec in config["available_node_types"].items():
        resources = scaled_resources(spec.get("resources") or {})
        if name == config["head_node_type"]:
            types[HEAD_TYPE] = {"resources": resources, "node_config": {}, "max_workers": 0}
            continue
        top = min(spec["max_workers"], max_per_type)
        types[name] = {"resources": resources, "node_config": {},
                       "min_workers": min((min_workers or {}).get(name, spec.get("min_workers", 0)), top),
                       "max_workers": top}
    return types


@dataclass
class FakeCluster:
    """A head with Ray's fake multi-node autoscaler; worker nodes come and go with demand."""

    node_types: dict[str, Any]
    idle_timeout_minutes: float = 0.2
    max_workers: int = 3
    port: int = field(default_factory=free_port)
    dashboard_port: int = field(default_factory=free_port)
    temp_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="rayfake-", dir="/tmp")))
    ip: str = field(default_factory=get_node_ip_address)  # the worker raylets' too

    @property
    def address(self) -> str:
        return f"{self.ip}:{self.port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def autoscaling_config(self) -> dict[str, Any]:
        return {
            "cluster_name": "animalclf-fake", "max_workers": self.max_workers, "upscaling_speed": 1.0,
            "idle_timeout_minutes": self.idle_timeout_minutes, "head_node_type": HEAD_TYPE,
            "available_node_types": self.node_types,
            # gcs_address: worker raylets join this head (the provider's default is port 6379)
            "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                         "disable_launch_config_check": True, "gcs_address": self.address},
            "auth": {}, "docker": {}, "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
            "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
            "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
            "rsync_exclude": [], "rsync_filter": [],
        }

    @property
    def config_path(self) -> Path:
        """The autoscaler's config (what ``ray up`` writes to the head's ~/ray_bootstrap_config.yaml)."""
        return self.temp_dir / "autoscaling.json"

    def env(self) -> dict[str, str]:
        env = dict(os.environ, RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1", RAY_AUTH_MODE="token",
                   RAY_USAGE_STATS_ENABLED="0",
                   # a node whose raylet died is declared dead (and terminated by the autoscaler) in seconds
                   AUTOSCALER_HEARTBEAT_TIMEOUT_S="5", RAY_health_check_period_ms="1000",
                   RAY_health_check_failure_threshold="3")
        env.pop("RAY_ADDRESS", None)
        return env

    def start(self) -> "FakeCluster":
        rayauth.enable_token_auth()
        config = self.config_path
        config.write_text(json.dumps(self.autoscaling_config()))
        head = dict(self.node_types[HEAD_TYPE]["resources"])
        cmd = [str(Path(sys.executable).parent / "ray"), "start", "--head", f"--port={self.port}",
               f"--temp-dir={self.temp_dir}", f"--autoscaling-config={config}",
               f"--num-cpus={head.pop('CPU', 0)}", "--num-gpus=0", f"--dashboard-port={self.dashboard_port}",
               "--dashboard-host=127.0.0.1", f"--ray-client-server-port={free_port()}", "--disable-usage-stats"]
        if head:
            cmd.append(f"--resources={json.dumps(head)}")
        r = subprocess.run(cmd, env=self.env(), capture_output=True, text=True, timeout=180)
        if r.returncode != 0:
            self.stop()
            raise RuntimeError(f"ray start failed: {r.stderr[-3000:]}")
        return self

    def stop(self) -> None:
        stop_processes(self.temp_dir, self.address)
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    # ---------------------------------------------------------------- what the cluster looks like

    @staticmethod
    def alive_nodes() -> list[dict[str, Any]]:
        import ray

        return [n for n in ray.nodes() if n["Alive"]]

    def worker_nodes(self) -> list[dict[str, Any]]:
        return [n for n in self.alive_nodes() if FAKE_GPU in n["Resources"]]

    @staticmethod
    def wait_for(predicate: Callable[[], Any], timeout: float, what: str, every: float = 0.5) -> float:
        """Seconds until ``predicate()`` is truthy; AssertionError naming ``what`` after ``timeout``."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if predicate():
                return time.monotonic() - t0
            time.sleep(every)
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")

    def kill_node(self, node: dict[str, Any]) -> None:
        """Take a worker node away as a lost machine would: SIGKILL its raylet and everything under it."""
        import psutil

        node_id = node["NodeID"]
        mine = [p for p in psutil.process_iter(["cmdline"])
                if any(f"{flag}={node_id}" in (p.info["cmdline"] or ()) for flag in ("--node_id", "--node-id"))]
        assert mine, f"no process of node {node_id}"
        kill_processes(list({c.pid: c for p in mine for c in [p, *p.children(recursive=True)]}.values()), wait_s=10)
