"""What a run records (animalclf.tracking.runs): params flattened for MLflow, and a Tracker that
logs params, metrics, tags and its end to a run addressed by id, on a real sqlite store."""

from animalclf.tracking import Tracker, flatten_params


def test_flatten_params():
    assert flatten_params({"a": 1, "b": None, "c": {"d": [1, 2]}}) == {"a": "1", "c.d": "[1, 2]"}


def test_flatten_params_nests_with_dots_truncates_and_keeps_falsy_values():
    flat = flatten_params({"base": {"opt": {"lr": 1e-3, "betas": (0.9, 0.99)}, "gone": None}, "zero": 0, "off": False,
                           "empty": "", "long": "x" * 7000}, prefix="p.")
    assert flat == {"p.base.opt.lr": "0.001", "p.base.opt.betas": "(0.9, 0.99)", "p.zero": "0", "p.off": "False",
                    "p.empty": "", "p.long": "x" * 6000}  # MLflow's limit on a param value
    assert flatten_params({}) == {} and flatten_params({"a": {}}) == {}


def test_tracker_logs_a_nested_run_by_id(store, tmp_path):
    parent = Tracker.start("exp", "parent", {"search": {"samples": 3}})
    child = Tracker.start("exp", "child", {"lr": 0.01, "cfg": {"arch": "lite0", "none": None}}, tags={"kind": "trial"},
                          parent_run_id=parent.run_id)
    child.log_metrics({"val_accuracy": 0.5, "epoch": 2, "note": "text"}, step=2)
    child.set_tags({"epochs_run": 2})
    child.end("KILLED")
    run = store.get_run(child.run_id)
    assert run.data.params == {"lr": "0.01", "cfg.arch": "lite0"}
    assert run.data.tags["mlflow.parentRunId"] == parent.run_id and run.data.tags["kind"] == "trial"
    assert run.data.tags["epochs_run"] == "2" and run.info.status == "KILLED"
    assert run.data.metrics == {"val_accuracy": 0.5, "epoch": 2.0}  # numbers only
    assert [m.step for m in store.get_metric_history(child.run_id, "val_accuracy")] == [2]
    exp = store.get_experiment(run.info.experiment_id)
    assert exp.name == "exp" and exp.artifact_location == (tmp_path / "mlartifacts" / "exp").as_uri()  # beside the db
    assert store.get_run(parent.run_id).info.experiment_id == run.info.experiment_id  # one experiment, made once
    assert Tracker(child.run_id).client.get_run(child.run_id).info.run_name == "child"
