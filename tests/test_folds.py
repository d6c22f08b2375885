"""Cross-validation: the folds, the fold aggregation, a --cv training run (fold means and std per
epoch in MLflow, resume, refit on all images with out-of-fold evidence) and a --cv search under ASHA that
publishes its best config's fold models as one ensemble, on tiny real images."""

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from animalclf.data import folds as cv
from animalclf.models.checkpoint import fold_dir, load_train_state, ray_checkpoints
from animalclf.config import TrainConfig
from animalclf.errors import UserError
from animalclf.evaluate.evidence import EVIDENCE_FILE, Evaluation
from animalclf.data.split import Split

SAMPLES = [(f"/d/c{label}/{i}.jpg", label) for label in range(3) for i in range(7 + 3 * label)]  # 7, 10, 13 per class


def test_folds_are_stratified_seeded_disjoint_and_cover_every_sample():
    folds = cv.stratified_folds(SAMPLES, 5, seed=3)
    assert len(folds) == 5
    flat = [s for f in folds for s in f]
    assert sorted(flat) == sorted(SAMPLES) and len(flat) == len(set(flat))  # disjoint, complete
    per_class = Counter(s[1] for s in SAMPLES)
    for f in folds:
        counts = Counter(s[1] for s in f)
        for label, n in per_class.items():
            assert n // 5 <= counts[label] <= -(-n // 5)  # each class's share, ±1
    assert max(map(len, folds)) - min(map(len, folds)) <= 1
    assert cv.stratified_folds(list(reversed(SAMPLES)), 5, seed=3) == folds  # seeded, order-free
    assert cv.stratified_folds(SAMPLES, 5, seed=4) != folds


def test_fold_splits_merge_train_and_val_and_refit_uses_everything():
    split = Split(["a", "b", "c"], SAMPLES[::2], SAMPLES[1::2])
    splits = cv.fold_splits(split, 3, seed=0)
    assert [sorted(s.val) for s in splits] == [sorted(f) for f in cv.stratified_folds(SAMPLES, 3, 0)]
    for s in splits:
        assert not set(s.train) & set(s.val) and sorted(s.train + s.val) == sorted(SAMPLES)
    everything = cv.refit_split(split)
    assert sorted(everything.train) == sorted(SAMPLES) and everything.val == split.val


def test_too_few_images_per_class_or_folds_is_a_user_error():
    with pytest.raises(UserError, match="--cv 8 needs at least 8 images per class"):
        cv.stratified_folds(SAMPLES, 8, 0)
    with pytest.raises(UserError, match="at least 2 folds"):
        cv.stratified_folds(SAMPLES, 1, 0)
    with pytest.raises(UserError, match="--cv 1"):
        TrainConfig(data="x", cv=1).validate()
    with pytest.raises(UserError, match="--final"):
        TrainConfig(data="x", cv=2, final="bag").validate()


def test_aggregate_means_and_std():
    folds = [{"val_accuracy": 0.8, "val_loss": 1.0, "val_images": 10, "train_seconds": 2.0},
             {"val_accuracy": 1.0, "val_loss": 0.5, "val_images": 11, "train_seconds": 3.0}]
    m = cv.aggregate(folds)
    assert m["val_accuracy"] == pytest.approx(0.9) and m["val_accuracy_std"] == pytest.approx(0.1)
    assert m["val_accuracy_fold0"] == 0.8 and m["val_accuracy_fold1"] == 1.0
    assert m["val_loss_std"] == pytest.approx(0.25) and m["val_images"] == 21 and m["train_seconds"] == 5.0
    assert m["folds"] == 2


def tiny_cfg(data, **kw):
    base = dict(data=str(data), arch="efficientnet_lite0", image_size=64, batch_size=8, epochs=2, patience=0, unfreeze=0,
                cv=2, experiment="cv-test", model_name="tiny-cv", lr=5e-3)
    return TrainConfig(**{**base, **kw})


@pytest.mark.slow
def test_cv_training_logs_fold_mean_and_std_per_epoch_then_refits_on_all_images(ray_session, project, tiny_folder):
    from animalclf.train.run import run_training

    cfg = tiny_cfg(tiny_folder, name="cv-train", schedule="cosine")
    out = run_training(cfg)
    client = MlflowClient()
    refit_run = client.get_run(out.run_id)
    cv_run_id = refit_run.data.tags["mlflow.parentRunId"]
    cv_run = client.get_run(cv_run_id)
    assert cv_run.data.tags["animalclf.kind"] == "cv" and cv_run.data.params["cv"] == "2"
    for key in ("val_accuracy", "val_accuracy_std", "val_f1_std", "val_accuracy_fold0", "val_accuracy_fold1"):
        steps = [m.step for m in client.get_metric_history(cv_run_id, key)]
        assert steps == [1, 2], key
    mean = {m.step: m.value for m in client.get_metric_history(cv_run_id, "val_accuracy")}
    folds = [{m.step: m.value for m in client.get_metric_history(cv_run_id, f"val_accuracy_fold{i}")} for i in (0, 1)]
    assert all(mean[s] == pytest.approx((folds[0][s] + folds[1][s]) / 2) for s in (1, 2))

    # the final model: one registered version, trained on all 24 images for the chosen epoch count
    chosen = int(cv_run.data.metrics["cv_epoch"])
    assert refit_run.data.tags["animalclf.kind"] == "refit" and refit_run.data.params["train_images"] == "24"
    assert refit_run.data.params["epochs"] == str(chosen) and out.epochs_run == chosen
    versions = client.search_model_versions("name = 'tiny-cv'")
    assert [str(v.version) for v in versions] == [out.model_version] and versions[0].run_id == out.run_id
    tags = versions[0].tags
    assert tags["animalclf.final"] == "refit" and tags["animalclf.cv_folds"] == "2"
    assert float(tags["animalclf.cv_val_accuracy"]) == pytest.approx(mean[chosen], abs=1e-4)
    assert float(tags["animalclf.cv_val_accuracy_std"]) == pytest.approx(abs(folds[0][chosen] - folds[1][chosen]) / 2, abs=1e-4)
    assert len([m for m in client.get_metric_history(out.run_id, "train_images")]) == chosen
    assert client.get_metric_history(out.run_id, "train_images")[0].value == 24
    lrs = [[m.value for m in client.get_metric_history(r, "lr")] for r in (cv_run_id, out.run_id)]
    assert lrs[1] == lrs[0][:chosen] and lrs[0] == pytest.approx([5e-3, 2.5e-3])  # the refit follows the folds' cosine

    # the evidence is out-of-fold: the refit saw every image, so its report and the gate use the fold models
    assert out.report["evaluated_on"] == "out-of-fold predictions on all 24 images"
    assert out.report["accuracy"] == pytest.approx(mean[chosen], abs=1e-4)  # 12 + 12 images: the fold mean
    assert tags["animalclf.gate_evidence"] == "out-of-fold"
    from ray.train import Result

    from animalclf.data.source import source_of
    from animalclf.evaluate.out_of_fold import out_of_fold

    split = source_of(cfg).split(cfg.val_ratio, cfg.seed)
    with Result.from_path(str(project / "runs" / "ray" / "cv-train")).get_best_checkpoint("val_accuracy", "max").as_directory() as d:
        gate = out_of_fold(d, split, 2, cfg.seed).evaluation(split.val)
    assert out.decision.n == len(split.val) and out.decision.candidate_acc == pytest.approx(gate.accuracy)
    stored = Evaluation.from_dict(json.loads((Path(out.report_dir) / EVIDENCE_FILE).read_text()))  # logged beside the report
    mine = stored.subset(split.val)  # per image: what a later candidate meets when this version is champion
    assert mine.ids == gate.ids and (mine.predicted == gate.predicted).all() and (mine.labels == gate.labels).all()
    assert EVIDENCE_FILE in [Path(a.path).name for a in client.list_artifacts(out.run_id, "report")]


@pytest.mark.slow
def test_cv_run_resumes_every_fold_from_its_checkpoint(ray_session, project, tiny_folder):
    from animalclf.train.run import run_training

    cfg = tiny_cfg(tiny_folder, name="cv-resume", epochs=1, final="none", track=False, ema_decay=0.5)
    first = run_training(cfg)
    second = run_training(cfg.replace(epochs=2))
    h1, h2 = first.report["history"], second.report["history"]
    assert len(h1) == 1 and len(h2) == 2
    assert h2[0] == h1[0]  # epoch 1 was not rerun (its wall-clock figures are the first run's)
    assert "val_accuracy_std" in h2[1] and second.metrics["cv_val_accuracy"] == max(h["val_accuracy"] for h in h2)
    # --ema-decay: each fold's weight average went on from the checkpoint, and model.pt is the average
    ckpts = ray_checkpoints(Path(cfg.resolved_storage()) / cfg.name)
    steps = [[load_train_state(fold_dir(c, i))["ema_steps"] for i in range(2)] for c in (ckpts[0], ckpts[-1])]
    assert steps[0][0] > 0 and steps[1] == [2 * s for s in steps[0]], steps
    for i in range(2):
        average = torch.load(fold_dir(ckpts[-1], i) / "model.pt", weights_only=True)
        trained = load_train_state(fold_dir(ckpts[-1], i))["model"]
        assert average.keys() == trained.keys() and any(not torch.equal(average[k], trained[k]) for k in average)


@pytest.mark.slow
def test_cv_search_under_asha_scores_fold_means_and_publishes_the_best_as_an_ensemble(ray_session, project, tiny_folder):
    from animalclf.models.build import Ensemble
    from animalclf.models.predict import Predictor
    from animalclf.tune.space import parse_space
    from animalclf.tune.search import TuneOptions, run_search

    cfg = tiny_cfg(tiny_folder, name="cv-tune", model_name="tiny-cv-tuned", final="ensemble")
    space = parse_space(["lr=1e-3:1e-2", "unfreeze=0:1"], arch=cfg.arch)
    opts = TuneOptions(name="cv-tune", num_samples=2, max_concurrent=2, grace_period=1, reduction_factor=2,
                       points=[{"lr": 5e-3, "unfreeze": 0}, {"lr": 9e-3, "unfreeze": 1}])
    out = run_search(cfg, space, opts)
    assert len(out.trials) == 2
    for t in out.trials:
        assert all("val_accuracy_std" in h and h["folds"] == 2 for h in t["history"])
    client = MlflowClient()
    version = client.get_model_version("tiny-cv-tuned", out.model_version)
    run = client.get_run(version.run_id)
    assert run.data.tags["mlflow.parentRunId"] == out.parent_run_id
    assert run.data.tags["animalclf.kind"] == "ensemble" and float(run.data.params["lr"]) == out.best_config["lr"]
    assert version.tags["animalclf.final"] == "ensemble" and version.tags["animalclf.gate_evidence"] == "out-of-fold"
    code = [Path(a.path).name for a in client.list_artifacts(version.run_id, "model/code/animalclf/models")]
    assert "build.py" in code  # the pickled Ensemble's class travels with the MLflow model, for MLflow users
    served = Predictor.from_mlflow(f"models:/tiny-cv-tuned/{out.model_version}")  # the fold models, as one model
    assert isinstance(served.model, Ensemble) and len(served.model.members) == 2 and served.metadata()["members"] == 2
    assert served.meta["epoch"] == int(version.tags["animalclf.cv_epoch"])


def test_grouped_folds_keep_copies_together_and_stay_stratified():
    """Stratified group k-fold: a photo's copies always share a fold; each class's share per fold
    is off by less than one group."""
    groups = {p: p.rsplit("/", 1)[0] + f"/g{int(p.rsplit('/', 1)[1].split('.')[0]) // 3}" for p, _ in SAMPLES}
    folds = cv.stratified_folds(SAMPLES, 3, seed=5, groups=groups)
    flat = [s for f in folds for s in f]
    assert sorted(flat) == sorted(SAMPLES) and len(flat) == len(set(flat))
    where = {groups[p]: i for i, f in enumerate(folds) for p, _ in f}
    assert all(where[groups[p]] == i for i, f in enumerate(folds) for p, _ in f)  # no group in two folds
    per_class = Counter(s[1] for s in SAMPLES)
    for f in folds:
        counts = Counter(s[1] for s in f)
        for label, n in per_class.items():
            assert abs(counts[label] - n / 3) <= 3  # one group (3 copies) at most off its share
    assert cv.stratified_folds(list(reversed(SAMPLES)), 3, seed=5, groups=groups) == folds
    split = Split(["a", "b", "c"], SAMPLES[::2], SAMPLES[1::2], groups)
    for s in cv.fold_splits(split, 3, seed=5):
        assert not {groups[p] for p, _ in s.train} & {groups[p] for p, _ in s.val}
    with pytest.raises(UserError, match="at least 4 photos"):
        cv.stratified_folds(SAMPLES, 4, 0, groups)  # class 0: 7 images in 3 groups
