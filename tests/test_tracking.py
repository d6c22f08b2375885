import pytest

from animalclf.errors import UserError
from animalclf.tracking import check_tracking, flatten_params, redact, resolve_tracking


def test_default_is_local_sqlite(project):
    assert resolve_tracking({}) == {"MLFLOW_TRACKING_URI": f"sqlite:///{project}/runs/mlflow.db"}


def test_dagshub_variables_point_at_hosted_mlflow():
    env = {"DAGSHUB_REPO_OWNER": "me", "DAGSHUB_REPO_NAME": "animals", "DAGSHUB_USER_TOKEN": "s3cr3t-tok"}
    assert resolve_tracking(env) == {"MLFLOW_TRACKING_URI": "https://dagshub.com/me/animals.mlflow",
                                     "MLFLOW_TRACKING_USERNAME": "me", "MLFLOW_TRACKING_PASSWORD": "s3cr3t-tok"}
    with pytest.raises(UserError, match="DAGSHUB_USER_TOKEN"):
        resolve_tracking({"DAGSHUB_REPO_OWNER": "me"})
    assert redact("token=s3cr3t-tok!", env) == "token=***!"


def test_unreachable_server_fails_fast_with_one_line():
    with pytest.raises(UserError, match="unreachable") as e:
        check_tracking("http://127.0.0.1:9", timeout=2)
    assert "\n" not in str(e.value)


def test_flatten_params():
    assert flatten_params({"a": 1, "b": None, "c": {"d": [1, 2]}}) == {"a": "1", "c.d": "[1, 2]"}
