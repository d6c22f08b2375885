"""animalclf.evaluate.evaluation: what the report and the promotion gate see is what the Predictor serves."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from animalclf.models.checkpoint import load_model, save_checkpoint
from animalclf.config import TrainConfig
from animalclf.errors import UserError
from animalclf.evaluate.evaluation import evaluate_model, predict_samples
from animalclf.models.build import build_model
from animalclf.models.predict import Predictor
from animalclf.train.worker import checkpoint_meta


@pytest.fixture(scope="module")
def samples(tiny_folder):
    """(classes, [(path, label)]): every image of the tiny folder, in class order."""
    classes = sorted(d.name for d in tiny_folder.iterdir() if d.is_dir())
    return classes, [(str(p), i) for i, c in enumerate(classes) for p in sorted((tiny_folder / c).glob("*.jpg"))]


def checkpoint(tmp_path, classes, tta_flip: bool):
    cfg = TrainConfig(arch="efficientnet_lite0", weights="none", unfreeze=1, image_size=48, tta_flip=tta_flip)
    torch.manual_seed(0)
    model = build_model(cfg.arch, len(classes), cfg.unfreeze, cfg.weights)
    path = tmp_path / ("tta" if tta_flip else "plain")
    save_checkpoint(path, model, checkpoint_meta(cfg, classes, {}, 1))
    return path


@pytest.mark.parametrize("tta_flip", [False, True])
def test_probabilities_are_what_the_predictor_serves(tmp_path, samples, tta_flip):
    classes, items = samples
    path = checkpoint(tmp_path, classes, tta_flip)
    model, meta = load_model(path)
    probs, targets = predict_samples(model, meta, items, classes)
    assert targets.tolist() == [label for _, label in items]
    served = Predictor.load(str(path))
    assert served.tta_flip is tta_flip
    expected = served.predict_tensors(torch.stack([served.tensor(Image.open(p).convert("RGB")) for p, _ in items]))
    assert torch.allclose(probs, expected, atol=1e-5)


def test_flip_tta_changes_the_evaluation(tmp_path, samples):
    """The same weights with and without tta_flip give different probabilities (the flag is honoured)."""
    classes, items = samples
    plain, flip = (load_model(checkpoint(tmp_path, classes, t)) for t in (False, True))
    a, _ = predict_samples(*plain, items, classes)
    b, _ = predict_samples(*flip, items, classes)
    assert not torch.allclose(a, b, atol=1e-4)
    report = evaluate_model(*flip, items, classes)
    assert report["support"] == len(items) and len(report["confusion_matrix"]) == len(classes)


def test_class_mismatch_is_a_user_error(tmp_path, samples):
    classes, items = samples
    model, meta = load_model(checkpoint(tmp_path, classes, False))
    with pytest.raises(UserError, match="differ"):
        predict_samples(model, meta, items, list(reversed(classes)))


def test_a_cv_published_champion_is_scored_on_its_stored_out_of_fold_predictions(tmp_path, monkeypatch):
    """A champion published after CV trained on every image: the gate reads its out-of-fold predictions
    (report/out_of_fold.json on its run), in the gate's order, and only when they cover the gate's images."""
    import json

    import mlflow
    from mlflow import MlflowClient

    from animalclf.evaluate.evaluation import GATE_EVIDENCE_TAG, champion_evaluation
    from animalclf.evaluate.evidence import EVIDENCE_FILE, Evaluation

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    stored = Evaluation(("a.jpg", "b.jpg", "c.jpg"), [0, 1, 2], [0, 2, 2])
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / EVIDENCE_FILE).write_text(json.dumps(stored.to_dict()))
    run = client.create_run("0")
    client.log_artifacts(run.info.run_id, str(tmp_path / "report"), "report")
    client.create_registered_model("m")
    version = str(client.create_model_version("m", f"{run.info.artifact_uri}/model", run_id=run.info.run_id).version)
    client.set_model_version_tag("m", version, GATE_EVIDENCE_TAG, "out-of-fold")

    got = champion_evaluation("m", version, [("c.jpg", 2), ("b.jpg", 1)], ["x", "y", "z"])
    assert got.ids == ("c.jpg", "b.jpg") and list(got.predicted) == [2, 2] and list(got.labels) == [2, 1]
    # images it has no out-of-fold prediction for (or another label): its own model, which this version lacks
    for samples in ([("d.jpg", 0)], [("a.jpg", 1)]):
        with pytest.raises(UserError, match="extra_files"):
            champion_evaluation("m", version, samples, ["x", "y", "z"])
    # tagged out-of-fold but the file is gone: an error the gate reports as "champion cannot be read"
    bare = client.create_run("0")
    lost = str(client.create_model_version("m", f"{bare.info.artifact_uri}/model", run_id=bare.info.run_id).version)
    client.set_model_version_tag("m", lost, GATE_EVIDENCE_TAG, "out-of-fold")
    with pytest.raises(RuntimeError, match=f"no readable report/{EVIDENCE_FILE}"):
        champion_evaluation("m", lost, [("a.jpg", 0)], ["x", "y", "z"])
    mlflow.set_registry_uri("")


def test_export_replaces_whole_and_a_failed_export_keeps_the_old_one(tmp_path, samples, monkeypatch):
    import shutil

    from animalclf.evaluate import evaluation
    from animalclf.models.checkpoint import META_FILE, MODEL_FILE
    from animalclf.evaluate.evaluation import export_checkpoint

    classes, _ = samples
    old_src, new_src = checkpoint(tmp_path, classes, False), checkpoint(tmp_path, classes, True)
    dst = tmp_path / "models" / "key"
    export_checkpoint(old_src, dst)
    old = (dst / META_FILE).read_text()
    assert sorted(p.name for p in dst.iterdir()) == sorted([MODEL_FILE, META_FILE])

    real_copy = shutil.copy2

    def crash_on_json(a, b, *args, **kw):  # the weights copied, then the process "dies"
        if str(a).endswith(META_FILE):
            raise OSError("disk full")
        return real_copy(a, b, *args, **kw)

    monkeypatch.setattr(evaluation.shutil, "copy2", crash_on_json)
    with pytest.raises(OSError, match="disk full"):
        export_checkpoint(new_src, dst)
    assert (dst / META_FILE).read_text() == old and load_model(dst)[1]["config"]["tta_flip"] is False
    monkeypatch.setattr(evaluation.shutil, "copy2", real_copy)
    assert sorted(p.name for p in dst.parent.iterdir()) == ["key"]  # nothing half-written left beside it

    # the swap itself is one step: at no moment is there no checkpoint at dst
    swapped = []
    real_exchange = evaluation._exchange
    monkeypatch.setattr(evaluation, "_exchange", lambda a, b: swapped.append((b / META_FILE).is_file()) or real_exchange(a, b))
    export_checkpoint(new_src, dst)
    assert swapped == [True] and load_model(dst)[1]["config"]["tta_flip"] is True
    assert sorted(p.name for p in dst.parent.iterdir()) == ["key"]


@pytest.mark.slow
def test_the_gates_timing_runs_in_the_isolated_process_and_measures_both_models(ray_session, tmp_path, samples):
    """The promotion gate times candidate and champion in the pass's own process (not the driver,
    whose other threads slow a small model's Python-bound steps more than a big one's): models
    shipped there as (model, meta, version) give one positive figure each, in their order."""
    import os

    from animalclf.evaluate.evaluation import cost_per_photo
    from animalclf.runtime.isolate import isolated

    classes, items = samples
    small = load_model(checkpoint(tmp_path, classes, tta_flip=False))
    flipped = load_model(checkpoint(tmp_path, classes, tta_flip=True))
    photos = [open(p, "rb").read() for p, _ in items[:6]]
    with isolated() as run:
        pid = run(os.getpid)
        figures = run(cost_per_photo, [(*small, "2"), (*flipped, "1")], photos)
        assert run(os.getpid) == pid != os.getpid()
    assert len(figures) == 2 and all(ms > 0 for ms in figures), figures
