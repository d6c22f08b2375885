"""cluster.yaml passes the cluster launcher's own preparation and JSON-schema validation (what
`ray up` runs before it calls AWS) and has the shape docs/cluster.md promises."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
GPU_FAMILIES = re.compile(r"^(g4dn|g5|g6|g6e|p3|p4d|p4de|p5)\.")


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


@pytest.fixture(scope="module")
def prepared(raw) -> dict:
    config = prepare_config(copy.deepcopy(raw))  # merges the AWS defaults, as `ray up` does
    validate_config(config)
    return config


def _start_command(commands: list[str]) -> str:
    starts = [c for c in commands if "ray start" in c]
    assert len(starts) == 1, commands
    return starts[0]


def test_validates_with_ray_schema(prepared):
    assert prepared["provider"]["type"] == "aws"
    assert prepared["cluster_name"] == "animalclf"


def test_schema_rejects_a_broken_copy(raw):
    """The validation above is real: a wrong type or an unknown key is refused."""
    bad = copy.deepcopy(raw)
    bad["available_node_types"]["gpu_1x"]["min_workers"] = "two"
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(bad))
    bad = copy.deepcopy(raw)
    bad["idle_timeout"] = 5
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(bad))


# What each instance type has (AWS's figures): the file must state them for the autoscaler.
INSTANCE_RESOURCES = {"m5.xlarge": {"CPU": 4, "GPU": 0}, "g5.xlarge": {"CPU": 4, "GPU": 1},
                      "g5.12xlarge": {"CPU": 48, "GPU": 4}}


def test_head_has_cpus_for_drivers_and_no_gpu(prepared):
    """The head advertises CPUs (job entrypoints, 0.01-CPU trial drivers, Serve's controller and
    proxy have somewhere to go besides the GPU nodes) and no GPU (no --use-gpu worker lands on it)."""
    head = prepared["available_node_types"][prepared["head_node_type"]]
    assert not GPU_FAMILIES.match(head["node_config"]["InstanceType"])
    assert head["resources"].get("GPU", 0) == 0
    assert head["resources"].get("CPU", 0) >= 1, "trial drivers and Serve would land on (and keep) GPU nodes"
    assert head["max_workers"] == 0
    assert "--num-gpus=0" in _start_command(prepared["head_start_ray_commands"])


def test_node_resources_match_instance_types(raw):
    for name, group in raw["available_node_types"].items():
        hardware = {k: v for k, v in group["resources"].items() if k in ("CPU", "GPU")}
        assert hardware == INSTANCE_RESOURCES[group["node_config"]["InstanceType"]], name


def test_only_the_head_offers_serving(raw):
    """Replicas deployed with ``{"serving": 1}`` can land on the head only, never on a GPU node."""
    serving = {name for name, group in raw["available_node_types"].items() if group["resources"].get("serving", 0) > 0}
    assert serving == {raw["head_node_type"]}


def test_fake_cluster_is_derived_from_this_file(raw):
    """tests/test_multinode.py's cluster: the same types, each GPU a fake_gpu with one CPU."""
    from fakecluster import FAKE_GPU, HEAD_TYPE, fake_node_types

    fake = fake_node_types(raw, max_per_type=2)
    workers = {k for k in raw["available_node_types"] if k != raw["head_node_type"]}
    assert set(fake) == workers | {HEAD_TYPE}
    assert FAKE_GPU not in fake[HEAD_TYPE]["resources"] and fake[HEAD_TYPE]["resources"]["CPU"] >= 1
    for name in workers:
        gpus = raw["available_node_types"][name]["resources"]["GPU"]
        assert fake[name]["resources"] == {"CPU": gpus, FAKE_GPU: gpus}
        assert fake[name]["min_workers"] == 0 < fake[name]["max_workers"] <= 2


def test_autoscaling_gpu_groups(prepared):
    workers = {k: v for k, v in prepared["available_node_types"].items() if k != prepared["head_node_type"]}
    types = {v["node_config"]["InstanceType"] for v in workers.values()}
    assert {"g5.xlarge", "g5.12xlarge"} <= types
    for name, group in workers.items():
        assert GPU_FAMILIES.match(group["node_config"]["InstanceType"]), name
        assert 0 <= group["min_workers"] < group["max_workers"], f"{name} cannot autoscale"
    assert sum(g["max_workers"] for g in workers.values()) >= prepared["max_workers"] > 0
    assert 0 < prepared["idle_timeout_minutes"] <= 30


def test_dashboard_on_loopback_and_token_auth(prepared):
    head = _start_command(prepared["head_start_ray_commands"])
    worker = _start_command(prepared["worker_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head
    assert "0.0.0.0" not in head
    assert "include-dashboard=false" not in head.lower(), "Train V2 needs the dashboard"
    for cmd in (head, worker):
        assert "RAY_AUTH_MODE=token" in cmd
    assert "RAY_AUTH_MODE=disabled" not in str(prepared)
    # Every node gets the same token file.
    assert prepared["file_mounts"]["/home/ubuntu/.ray/auth_token"] == "~/.ray/auth_token"


def test_head_gives_serves_proxy_json_errors(prepared):
    """The head (where Serve's proxy runs) names the hook that turns its plain-text 503/408 into JSON."""
    from animalclf.runtime.localray import SERVE_PROXY_CALLBACK

    head = _start_command(prepared["head_start_ray_commands"])
    for key, value in SERVE_PROXY_CALLBACK.items():
        assert f"{key}={value}" in head
    assert f"{key}={value}" in (Path(__file__).resolve().parents[1] / "mk" / "jobs.mk").read_text()  # make head-start


def test_project_installed_from_file_mounts(prepared):
    mounts = prepared["file_mounts"]
    remote = next(r for r, local in mounts.items() if local in (".", "./"))
    assert (ROOT / "pyproject.toml").is_file()
    installs = [c for c in prepared["setup_commands"] if "pip install" in c and "-e ." in c]
    assert installs and remote.replace("/home/ubuntu", "~") in installs[0]
    # prepare_config merges the shared setup into both node kinds.
    for key in ("head_setup_commands", "worker_setup_commands"):
        assert installs[0] in prepared[key]
    excluded = prepared["rsync_exclude"]
    assert ".venv" in excluded and "runs" in excluded


def test_nodes_install_the_tested_versions(prepared):
    """Every node installs the project under constraints.txt (every package at the version the tests
    passed with), and the file reaches the nodes with the working copy (not excluded, not ignored)."""
    import fnmatch
    import shlex
    import subprocess

    install = next(c for c in prepared["setup_commands"] if "pip install" in c and "-e ." in c)
    words = shlex.split(install.split("&&")[-1])
    assert words[words.index("-c") + 1] == "constraints.txt", install
    assert (ROOT / "constraints.txt").is_file()
    pins = [line for line in (ROOT / "constraints.txt").read_text().splitlines() if line and not line.startswith("#")]
    assert pins and all("==" in line for line in pins), "constraints.txt holds exact pins only"
    assert not any(fnmatch.fnmatch("constraints.txt", p.strip("*/")) for p in prepared["rsync_exclude"])
    ignored = subprocess.run(["git", "check-ignore", "-q", "constraints.txt"], cwd=ROOT)
    assert ignored.returncode == 1, "constraints.txt is git-ignored: rsync_filter would keep it off the nodes"


def test_tuning_plans_for_what_the_cluster_grows_to(raw):
    """On the head of this cluster (no worker up yet) the search's resource check counts the nodes
    the autoscaler may add: 2 gpu_4x (4 workers each) + 4 gpu_1x = 12 one-GPU workers within
    max_workers 6, so 6 two-worker trials; a smaller max_workers takes the biggest nodes first."""
    from animalclf.config import TrainConfig
    from animalclf.errors import UserError
    from animalclf.tune.search import plan_concurrency

    head_only = {"CPU": 4.0}
    cfg = TrainConfig(use_gpu=True, num_workers=2)
    with pytest.raises(UserError, match="GPU"):
        plan_concurrency(cfg, None, head_only)
    assert plan_concurrency(cfg, None, head_only, autoscaling=raw) == 6
    assert plan_concurrency(cfg, None, head_only, autoscaling={**raw, "max_workers": 2}) == 4
    with pytest.raises(UserError, match="--max-concurrent 7 needs more.*autoscaling"):
        plan_concurrency(cfg, 7, head_only, autoscaling=raw)
    # A worker that asks for a resource no node type has never fits.
    with pytest.raises(UserError, match="a100"):
        plan_concurrency(cfg.replace(worker_resources={"a100": 1}), None, head_only, autoscaling=raw)


def test_nodes_require_imdsv2_and_have_least_privilege_roles(prepared):
    """Every node: instance metadata only with a session token (IMDSv2), one hop; an instance profile
    of its own (the head's can start workers, a worker's only reaches the buckets), named in the
    docs with its policy, never the account's default."""
    docs = (ROOT / "README.md").read_text() + "".join(p.read_text() for p in (ROOT / "docs").glob("*.md"))
    profiles = {}
    for name, node in prepared["available_node_types"].items():
        nc = node["node_config"]
        assert nc["MetadataOptions"] == {"HttpTokens": "required", "HttpPutResponseHopLimit": 1,
                                         "HttpEndpoint": "enabled"}, name
        profiles[name] = nc["IamInstanceProfile"]["Name"]
    assert profiles["head"] == "animalclf-head"
    assert {profiles[n] for n in profiles if n != "head"} == {"animalclf-worker"}
    for profile in set(profiles.values()):
        assert profile in docs, f"{profile}'s policy is not written out"
    assert '"s3:GetObject"' in docs and '"s3:PutObject"' in docs and '"iam:PassRole"' in docs
