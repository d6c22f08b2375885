"""Distillation on a real local Ray and a real sqlite MLflow store: a student follows its teacher's
answers (even wrong ones) as far as --kd-weight says, the teacher's answers reach a CV run's folds
and a search's trials, an alias is pinned once, and a resumed run keeps its teacher."""

from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from animalclf.config import TrainConfig
from animalclf.errors import UserError
from animalclf.models.checkpoint import load_model, ray_checkpoints, read_meta, save_checkpoint
from animalclf.train import distill
from animalclf.train.run import run_training

PERMUTATION = [1, 2, 0]  # the liar's score for class i is the honest probe's score for class PERMUTATION[i]


def tiny_cfg(data, **kw) -> TrainConfig:
    base = dict(data=str(data), arch="efficientnet_lite0", image_size=32, batch_size=8, epochs=3, patience=0, unfreeze=0,
                lr=2e-2, experiment="kd-test", model_name="kd-tiny", val_ratio=0.25)
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def liar(ray_session, tmp_path_factory, tiny_folder) -> Path:
    """A teacher checkpoint that is sure of the wrong class for every colour: the linear probe of
    the tiny folder with its head's rows rolled, so a Green image scores what the probe gives
    Green as Blue, and so on. A student that follows it misses every label."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ANIMALCLF_HOME", str(tmp_path_factory.mktemp("liar-home")))
        out = run_training(tiny_cfg(tiny_folder, head_init="probe", lr=0.0, epochs=1, name="liar", track=False))
    model, meta = load_model(out.checkpoint)
    assert out.report["accuracy"] > 0.9  # an honest probe before the lie
    sd = model.state_dict()
    idx = torch.tensor(PERMUTATION)
    sd["classifier.1.weight"], sd["classifier.1.bias"] = sd["classifier.1.weight"][idx], sd["classifier.1.bias"][idx]
    model.load_state_dict(sd)
    where = tmp_path_factory.mktemp("liar") / "teacher"
    save_checkpoint(where, model, meta)
    return where


@pytest.mark.slow
def test_a_student_follows_its_teacher_as_far_as_kd_weight_says(ray_session, project, tiny_folder, liar):
    teacher_only = run_training(tiny_cfg(tiny_folder, teacher=str(liar), kd_weight=1.0, epochs=6, name="kd1", track=False))
    labels_only = run_training(tiny_cfg(tiny_folder, teacher=str(liar), kd_weight=0.0, epochs=6, name="kd0", track=False))
    last1, last0 = teacher_only.report["history"][-1], labels_only.report["history"][-1]
    # the teacher's answers are wrong on every image: following it is agreeing with it and missing the labels
    assert last1["val_teacher_agreement"] >= 0.8 and last1["val_accuracy"] <= 0.2, last1
    assert last0["val_teacher_agreement"] <= 0.2 and last0["val_accuracy"] >= 0.8, last0
    assert "train_teacher_agreement" in last1
    # the checkpoint records the teacher (absolute) and the mix, so a resume and a reader see them
    saved = read_meta(teacher_only.checkpoint)["config"]
    assert saved["teacher"] == str(liar.resolve()) and saved["kd_weight"] == 1.0


@pytest.mark.slow
def test_cv_folds_learn_from_the_teacher_and_the_refit_too(ray_session, project, tiny_folder, liar):
    out = run_training(tiny_cfg(tiny_folder, teacher=str(liar), kd_weight=1.0, cv=2, epochs=6, name="kd-cv", track=False,
                                final="refit"))
    last = out.report["history"][-1]
    assert last["val_teacher_agreement"] >= 0.8, last  # the refit's own history: it distilled too
    assert out.metrics["cv_val_accuracy"] <= 0.2


def test_teacher_refs_are_pinned_and_bad_ones_refused(store, tmp_path):
    with pytest.raises(UserError, match="neither a models:/ or runs:/ URI nor a checkpoint directory"):
        distill.pin_teacher(str(tmp_path / "nowhere"), "m")
    with pytest.raises(UserError, match="Could not resolve"):
        distill.pin_teacher("champion", "no-such-model")
    (tmp_path / "ckpt").mkdir()
    assert distill.pin_teacher(str(tmp_path / "ckpt"), "m") == str((tmp_path / "ckpt").resolve())
    assert distill.pin_teacher("models:/m/3", "m") == "models:/m/3"
    cfg = TrainConfig(data="x", teacher="champion")
    assert distill.resolve_teacher(cfg, {"teacher": "models:/m/1"}).teacher == "models:/m/1"  # a resumed run's own


def test_a_teacher_with_other_classes_is_refused(tmp_path, liar, tiny_folder):
    model, meta = load_model(liar)
    save_checkpoint(tmp_path / "other", model, {**meta, "classes": ["A", "B", "C"]})
    samples = [(str(p), 0) for p in sorted((tiny_folder / "Red").iterdir())[:2]]
    with pytest.raises(UserError, match="knows other classes"):
        distill.teacher_targets(str(tmp_path / "other"), samples, ["Blue", "Green", "Red"])
    targets = distill.teacher_targets(str(liar), samples, ["Blue", "Green", "Red"])
    assert set(targets) == {p for p, _ in samples} and all(len(v) == 3 for v in targets.values())
    assert all(abs(sum(torch.tensor(v).exp().tolist()) - 1) < 1e-4 for v in targets.values())  # log-probabilities


@pytest.mark.parametrize("change, match", [
    (dict(kd_weight=1.5), "--kd-weight"), (dict(kd_temperature=0), "--kd-temperature"),
    (dict(augment="wild"), "--augment"), (dict(teacher="champion", lr=0.0, head_init="probe", unfreeze=0, epochs=1), "nothing to teach"),
])
def test_bad_distillation_flags_are_one_line_errors(change, match):
    with pytest.raises(UserError, match=match):
        TrainConfig(data="x", **change).validate()


@pytest.mark.slow
def test_a_cheaper_student_no_worse_than_its_teacher_becomes_champion_and_a_resume_keeps_its_teacher(
        ray_session, project, tiny_folder):
    """The demo's journey in small: a rotation-pooled Lite2 probe is champion (v1), a Lite0 student at
    half its size learns from ``--teacher`` alone (@champion, pinned to v1 at start), and the gate
    promotes the student by the cheaper-model rule (no worse by the margin on the validation images,
    at least 2x cheaper per photo, both timed the same way), with the costs on its version. The
    champion has now moved to v2; a rerun that resumes the student still learns from v1, and naming
    another teacher for that run is refused. A budget below the student's cost keeps the next one out."""
    teacher = run_training(tiny_cfg(tiny_folder, arch="efficientnet_lite2", image_size=64, head_init="probe", lr=0.0,
                                    epochs=1, rotation_pool=True, autocontrast=True, name="pooled"))
    assert teacher.decision.outcome == "first" and teacher.model_version == "1"
    student = tiny_cfg(tiny_folder, teacher="champion", kd_weight=0.5, epochs=6, name="student", ni_margin=0.5,
                       cheaper_by=2.0)
    out = run_training(student)
    assert out.report["accuracy"] == 1.0, out.report["accuracy"]  # colours: level with the teacher
    d = out.decision
    assert d.promote and d.outcome == "promoted-cheaper", d.reason
    client = MlflowClient()  # the project's store, which the run configured
    tags = client.get_model_version("kd-tiny", out.model_version).tags
    cand, champ = float(tags["animalclf.gate.candidate_ms_per_photo"]), float(tags["animalclf.gate.champion_ms_per_photo"])
    assert champ >= 2 * cand and float(tags["animalclf.gate.ni_p_value"]) < 0.05
    assert str(client.get_model_version_by_alias("kd-tiny", "champion").version) == out.model_version == "2"

    resumed = run_training(student.replace(epochs=7))  # @champion is v2 now: the run keeps v1
    assert len(resumed.report["history"]) == 7
    ckpts = ray_checkpoints(Path(student.resolved_storage()) / "student")
    assert [read_meta(c)["config"]["teacher"] for c in ckpts] == ["models:/kd-tiny/1"] * len(ckpts)
    assert client.get_run(resumed.run_id).data.params["teacher"] == "models:/kd-tiny/1"
    with pytest.raises(UserError, match="teacher"):  # refused before anything runs
        run_training(student.replace(teacher="models:/kd-tiny/2", epochs=8))

    over = run_training(student.replace(name="student-2", teacher=None, epochs=1, max_ms_per_photo=cand / 100))
    assert over.decision.outcome == "over-budget" and not over.decision.promote


@pytest.mark.slow
def test_a_search_of_students_shares_one_teacher_pass_and_refuses_kd_without_a_teacher(ray_session, project, tiny_folder,
                                                                                     liar):
    from animalclf.tune.search import TuneOptions, run_search
    from animalclf.tune.space import parse_space

    cfg = tiny_cfg(tiny_folder, teacher=str(liar), kd_weight=1.0, epochs=2, track=False, name="kd-tune")
    space = parse_space(["lr=1e-2:3e-2", "kd_temperature=1:3"], arch=cfg.arch)
    with pytest.raises(UserError, match="only act with a teacher"):
        run_search(cfg.replace(teacher=None), space, TuneOptions(name="kd-none", num_samples=1))
    out = run_search(cfg, space, TuneOptions(name="kd-tune", num_samples=2, max_concurrent=2, asha=False))
    assert len(out.trials) == 2
    assert all("val_teacher_agreement" in t["best"] for t in out.trials), out.trials
    assert 1.0 <= out.best_config["kd_temperature"] <= 3.0
