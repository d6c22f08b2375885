"""What the Model page reads from MLflow (app.model_info), the parts without a store: which
``model_version`` strings name a registered version, a version's label and key parameters, and a
store that is not there as a message rather than a new empty store. The page on a real store is
tests/test_app_ui.py's."""

import pytest

from app.model_info import Registry, StoreError, VersionInfo, parse_model_version


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
