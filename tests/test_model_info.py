"""What the Model page reads from MLflow (app.model_info), the parts without a store: which
``model_version`` strings name a registered version, a version's label and key parameters, and a
store that is not there as a message rather than a new empty store. The page on a real store is
tests/test_app_ui.py's."""

import pytest

from app.model_info import Registry, StoreError, VersionInfo, gate_summary, parse_model_version


@pytest.mark.parametrize("ref,parsed", [
    ("animalclf/3", ("animalclf", "3")),
    ("models:/animalclf/12", ("animalclf", "12")),
    ("my-model_2/40", ("my-model_2", "40")),
    ("animalclf/v3", None),  # versions are numbers
    ("/3", None), ("animalclf/", None), ("animalclf", None), ("a/b/3", None),
    ("models:/animalclf@champion", None), ("runs:/abc/model", None), ("checkpoint:/srv/ck", None), ("/srv/ck/1", None),
])
def test_parse_model_version(ref, parsed):
    assert parse_model_version(ref) == parsed


def test_a_versions_label_and_key_params():
    info = VersionInfo(name="animalclf", version="2", aliases=["champion", "staging"], run_id="r1", run={},
                       params={"lr": "0.002", "arch": "efficientnet_lite0", "seed": "42", "unfreeze": "3", "metric": "val_f1"})
    assert info.label == "v2 @champion @staging"
    assert list(info.key_params().items()) == [("arch", "efficientnet_lite0"), ("unfreeze", "3"), ("lr", "0.002"),
                                               ("metric", "val_f1")]  # the page's order; seed is not one
    assert VersionInfo("m", "7", [], "r", {}, {}).label == "v7" and VersionInfo("m", "7", [], "r", {}, {}).key_params() == {}


def test_no_local_store_is_a_message_and_looking_creates_none(project):
    with pytest.raises(StoreError, match="No MLflow store at .*mlflow.db: train or tune a model first") as e:
        Registry()
    assert str(project / "runs" / "mlflow.db") in str(e.value) and "\n" not in str(e.value)
    assert not (project / "runs" / "mlflow.db").exists()


def test_gate_summary_says_what_the_gate_decided_and_what_each_costs():
    assert gate_summary({"animalclf.run_id": "x"}) is None
    assert gate_summary({"animalclf.gate.decision": "first"}) == "Promotion gate: **first**"
    line = gate_summary({"animalclf.gate.decision": "over-budget", "animalclf.gate.candidate_ms_per_photo": "80",
                         "animalclf.gate.max_ms_per_photo": "50"})
    assert line == "Promotion gate: **over-budget**; 80.0 ms per photo, budget 50 ms"
    kept = gate_summary({"animalclf.gate.decision": "kept", "animalclf.gate.champion_version": "1",
                         "animalclf.gate.candidate_acc": "0.8667", "animalclf.gate.champion_acc": "0.95",
                         "animalclf.gate.n": "60", "animalclf.gate.p_value": "1", "animalclf.gate.ni_margin": "0.01",
                         "animalclf.gate.ni_p_value": "0.99", "animalclf.gate.candidate_ms_per_photo": "16",
                         "animalclf.gate.champion_ms_per_photo": "160", "animalclf.gate.speedup": "10",
                         "animalclf.gate.cheaper_by": "3"})
    assert kept == ("Promotion gate: **kept** against v1; accuracy 86.7% vs 95.0% on 60 images; better: McNemar p=1; "
                    "no worse by 1.0%: p=0.99; 16.0 ms per photo vs 160.0 (10.0x cheaper, 3x asked)")
