"""ServeSettings: one typed, self-validating source for every serving setting, and the CLI flags
and serve/config.yaml that are derived from or checked against it. No Ray."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from animalclf.errors import UserError
from serve.deploy import _app_config, get_args_parser
from serve.settings import DEFAULT_MODEL, ServeSettings, from_environment

CONFIG = Path(__file__).resolve().parents[1] / "serve" / "config.yaml"


def test_defaults_validate_and_split_into_user_config_and_options():
    s = ServeSettings()
    assert s.model_ref == DEFAULT_MODEL == "models:/animalclf@champion"
    assert set(s.user_config()) == {"model_ref", "top_k", "max_batch_size", "batch_wait_timeout_s", "images_per_pass", "max_images",
                                    "max_bytes", "max_pixels", "body_timeout_s", "max_decode_mib", "deadline_s"}
    opts = s.deployment_options()
    assert opts["ray_actor_options"] == {"num_cpus": 1.0, "num_gpus": 0.0} and opts["num_replicas"] == 1
    assert s.device == "cpu" and s.threads == 1 and s.replace(num_cpus=3).threads == 3
    assert s.replace(num_threads=2, num_cpus=4).threads == 2


def test_forward_workers_use_the_cpus_side_by_side():
    s = ServeSettings()
    assert (s.threads_per_forward, s.forward_workers) == (1, 1)
    assert s.replace(num_cpus=4).forward_workers == 4  # four one-thread forward passes at once
    assert s.replace(num_cpus=4, threads_per_forward=2).forward_workers == 2
    assert s.replace(num_threads=2).forward_workers == 2
    assert s.replace(num_cpus=4, num_gpus=1).forward_workers == 1  # a GPU runs one pass at a time
    assert ServeSettings.from_dict({"threads_per_forward": "2", "num_cpus": "2"}).threads_per_forward == 2
    gpu = s.replace(num_cpus=4, num_gpus=1)
    assert (gpu.forward_workers, gpu.threads_per_worker) == (1, 4)  # the CPU threads still preprocess
    assert s.replace(num_cpus=4).threads_per_worker == 1


def test_a_cpu_batch_runs_as_passes_of_at_most_images_per_pass():
    two = ServeSettings(num_threads=2)
    assert two.images_per_pass == 4
    assert [two.forward_parts(n) for n in (1, 2, 3, 8, 9, 16, 17)] == [1, 2, 2, 2, 4, 4, 6]  # even work per worker
    assert two.replace(images_per_pass=0).forward_parts(16) == 2  # no limit: one part per worker
    assert two.replace(images_per_pass=1).forward_parts(3) == 3
    assert two.replace(num_gpus=1).forward_parts(16) == 1  # a GPU takes the whole batch


def test_strings_from_serve_run_are_converted():
    s = ServeSettings.from_dict({"model": "/ck", "top_k": "3", "batch_wait_timeout_s": "0.01",
                                 "num_replicas": "auto", "num_threads": "2"})
    assert (s.model_ref, s.top_k, s.batch_wait_timeout_s, s.num_replicas, s.num_threads) == ("/ck", 3, 0.01, "auto", 2)
    assert ServeSettings.from_dict({"num_replicas": "2"}).num_replicas == 2
    placed = ServeSettings.from_dict({"resources": '{"serving": 1}', "num_cpus": "2"}).deployment_options()
    assert placed["ray_actor_options"] == {"num_cpus": 2.0, "num_gpus": 0.0, "resources": {"serving": 1}}


@pytest.mark.parametrize("bad,word", [
    ({"top_k": 0}, "top_k"), ({"max_batch_size": 0}, "max_batch_size"),
    ({"max_ongoing_requests": 0}, "max_ongoing_requests"),
    ({"num_replicas": 0}, "num_replicas"), ({"num_replicas": "many"}, "num_replicas"),
    ({"body_timeout_s": 0}, "body_timeout_s"), ({"port": 70000}, "port"), ({"top_k": "x"}, "top_k"),
    ({"tok_k": 3}, "unknown"), ({"model_ref": ""}, "model_ref"),
    ({"resources": '{"CPU": 1}'}, "resources"), ({"resources": "serving"}, "resources"),
    ({"resources": '{"serving": -1}'}, "resources"),
    ({"threads_per_forward": 0}, "threads_per_forward"), ({"threads_per_forward": 2}, "threads_per_forward"),
    ({"mmap_threshold_mib": -1}, "mmap_threshold_mib"), ({"mmap_threshold_mib": 512}, "mmap_threshold_mib"),
    ({"num_cpus": 3, "threads_per_forward": 2}, "threads_per_forward"), ({"images_per_pass": -1}, "images_per_pass"),
])
def test_bad_settings_are_one_line_user_errors(bad, word):
    with pytest.raises(UserError, match=word) as e:
        ServeSettings.from_dict(bad)
    assert "\n" not in str(e.value)


def test_environment_names_the_default_model(monkeypatch):
    monkeypatch.setenv("ANIMALCLF_MODEL", "/some/ck")
    assert from_environment().model_ref == "/some/ck"
    assert from_environment({"model_ref": "models:/x/1"}).model_ref == "models:/x/1"


def test_cli_flags_map_one_to_one_to_settings():
    parser = get_args_parser()
    dests = {a.dest for a in parser._actions if a.dest not in ("help", "follow")}
    assert dests == {f.name for f in dataclasses.fields(ServeSettings)}
    args = parser.parse_args(["--model", "/ck", "--top-k", "3", "--num-replicas", "auto", "--poll-s", "2"])
    given = {k: v for k, v in vars(args).items() if k != "follow" and v is not None}
    s = ServeSettings.from_dict(given)
    assert (s.model_ref, s.top_k, s.num_replicas, s.poll_s, s.port) == ("/ck", 3, "auto", 2.0, 8000)
    assert "(default: 16)" in parser.format_help()  # defaults shown come from ServeSettings


def test_config_yaml_uses_only_settings_fields():
    app = yaml.safe_load(CONFIG.read_text())["applications"][0]
    assert app["import_path"] == "serve.app:build_app"
    user = app["deployments"][0]["user_config"]
    assert set(user) <= set(ServeSettings().user_config())
    s = ServeSettings.from_dict({**app["args"], **user})  # validates
    assert s.model_ref == DEFAULT_MODEL


def test_launcher_config_pins_the_version_in_user_config_only():
    s = ServeSettings(model_ref="models:/animalclf@champion", top_k=3)
    cfg = _app_config(s, "models:/animalclf/7")["applications"][0]
    assert cfg["deployments"][0]["user_config"]["pinned_ref"] == "models:/animalclf/7"
    assert cfg["deployments"][0]["user_config"]["model_ref"] == "models:/animalclf@champion"
    assert not set(cfg["args"]) & set(s.user_config())  # a model or top-k change never restarts replicas
    assert _app_config(s.replace(top_k=4), "models:/animalclf/8")["applications"][0]["args"] == cfg["args"]
