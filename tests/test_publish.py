"""Publishing a run (animalclf.train.publish), the CPU-light parts: the CV figures picked from a
fold aggregate, and the run's MLflow tracker (none with tracking off). Publishing a trained model
end to end is in tests/test_run.py and tests/test_folds.py (Ray)."""

from animalclf.config import TrainConfig
from animalclf.data.split import Split
from animalclf.train.publish import cv_figures, start_tracker

SPLIT = Split(["a", "b", "c"], [(f"/d/{i}.jpg", i % 3) for i in range(9)], [(f"/d/v{i}.jpg", i % 3) for i in range(3)])


def test_cv_figures_are_the_fold_means_and_stds_prefixed_cv():
    scores = {"val_accuracy": 0.9, "val_accuracy_std": 0.05, "val_f1": 0.88, "val_f1_std": 0.04, "val_loss": 0.3,
              "val_loss_std": 0.02, "val_accuracy_fold0": 0.85, "val_images": 21, "train_seconds": 5.0, "folds": 2}
    assert cv_figures(scores) == {"cv_val_accuracy": 0.9, "cv_val_accuracy_std": 0.05, "cv_val_f1": 0.88,
                                  "cv_val_f1_std": 0.04, "cv_val_loss": 0.3, "cv_val_loss_std": 0.02}
    assert cv_figures({"val_accuracy": 0.5, "epoch": 3}) == {"cv_val_accuracy": 0.5}  # what is missing is left out
    assert cv_figures({}) == {}


def test_no_tracker_with_tracking_off():
    assert start_tracker(TrainConfig(data="x", track=False), SPLIT, "run") is None


def test_the_tracker_logs_the_config_and_the_data_sizes(store):
    cfg = TrainConfig(data="x", experiment="pub", lr=0.005)
    parent = start_tracker(cfg, SPLIT, "parent")
    tracker = start_tracker(cfg, SPLIT, "child", parent_run_id=parent.run_id, tags={"animalclf.trial_id": "t1"})
    run = store.get_run(tracker.run_id)
    assert run.info.run_name == "child" and store.get_experiment(run.info.experiment_id).name == "pub"
    params = run.data.params
    assert (params["num_classes"], params["train_images"], params["val_images"]) == ("3", "9", "3")
    assert params["lr"] == "0.005" and params["data"] == "x" and "model_name" in params
    tags = run.data.tags
    assert tags["animalclf.kind"] == "train" and tags["animalclf.trial_id"] == "t1"
    assert tags["mlflow.parentRunId"] == parent.run_id
    kind = start_tracker(cfg, SPLIT, "trial", tags={"animalclf.kind": "trial"})
    assert store.get_run(kind.run_id).data.tags["animalclf.kind"] == "trial"  # the caller's kind wins
