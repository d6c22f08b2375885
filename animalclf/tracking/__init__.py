"""MLflow tracking: where runs go and how credentials travel (:mod:`.settings`), what a run
records (:mod:`.runs`) and its link in the MLflow UI (:mod:`.links`). The public names of all
three are here: ``from animalclf.tracking import ...``."""

from animalclf.tracking.runs import Tracker, flatten_params
from animalclf.tracking.settings import (CREDENTIAL_VARS, DAGSHUB_VARS, REGISTRY_VAR, SECRET_VARS, SECRETS_FILE_VAR,
                                         TRACKING_VARS, artifact_location, check_tracking, configure,
                                         dagshub_login_token, forget_secrets, job_runtime_env, redact,
                                         resolve_tracking, runtime_env_vars, shareable_uri, uri_password, with_secrets,
                                         worker_env)
from animalclf.tracking.links import DEFAULT_LOCAL_UI, UI_VAR, run_link, run_url, ui_base, ui_command

__all__ = ["Tracker", "flatten_params", "CREDENTIAL_VARS", "DAGSHUB_VARS", "REGISTRY_VAR", "SECRET_VARS",
           "SECRETS_FILE_VAR", "TRACKING_VARS", "artifact_location", "check_tracking", "configure",
           "dagshub_login_token", "forget_secrets", "job_runtime_env", "redact", "resolve_tracking",
           "runtime_env_vars", "shareable_uri", "uri_password", "with_secrets", "worker_env", "DEFAULT_LOCAL_UI", "UI_VAR",
           "run_link", "run_url", "ui_base", "ui_command"]
