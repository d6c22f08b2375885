# Ray job submission as users do it: a long-lived head (local, or `ray dashboard cluster.yaml`'s
# tunnel to a cluster) and `ray job submit --working-dir .` against its dashboard address.
# Included by the Makefile; also works alone: `make -f mk/jobs.mk submit-train DATA=...`.
#
#   make head-start                      # local head: dashboard on 127.0.0.1:8265, token auth on
#   make submit-train TRAIN_ARGS="--arch efficientnet_lite0 --epochs 5"
#   make job-status / job-logs / job-stop          # the last submitted job (or JOB=<id>)
#   make head-stop
#
# Token auth: every `ray` call here runs with RAY_AUTH_MODE=token and reads ~/.ray/auth_token
# (or RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH). Tracking variables set in your shell
# (ANIMALCLF_HOME, MLFLOW_TRACKING_*, DAGSHUB_*) travel to the job in its runtime env: see
# docs/cluster.md for what that means for secrets.
VENV ?= .venv
PY ?= $(VENV)/bin/python
RAY ?= $(VENV)/bin/ray
DATA ?= $(wildcard ../shared/data/animals15)
RAY_JOB_ADDRESS ?= http://127.0.0.1:8265
HEAD_PORT ?= 6379
DASHBOARD_PORT ?= 8265
HEAD_ARGS ?=
# The job's interpreter: `python` on the head's PATH (a cluster node's), or e.g. $(abspath $(PY)).
JOB_PYTHON ?= python
TRAIN_ARGS ?=
TUNE_ARGS ?=
SUBMIT_ARGS ?=
JOB_ID_FILE ?= runs/.last-ray-job
JOB ?= $(shell cat $(JOB_ID_FILE) 2>/dev/null)
JOB_PREFIX ?= animalclf
JOB_ID ?=

RAY_CLI = RAY_AUTH_MODE=token $(RAY)
# Runtime env: the tracking variables set here, plus excludes for the working-dir upload.
# RAY_OVERRIDE_JOB_RUNTIME_ENV=1: a driver that also passes ray.init(runtime_env=...) (your own
# code; animalclf's jobs don't under a job) may override the job's env instead of failing the merge.
RUNTIME_ENV_JSON = $$($(PY) -c 'import json, os; keys = ("ANIMALCLF_HOME", "ANIMALCLF_LOG_LEVEL", "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "DAGSHUB_REPO_OWNER", "DAGSHUB_REPO_NAME", "DAGSHUB_USERNAME", "DAGSHUB_USER_TOKEN"); env = {k: os.environ[k] for k in keys if os.environ.get(k)}; env["RAY_OVERRIDE_JOB_RUNTIME_ENV"] = "1"; print(json.dumps({"env_vars": env, "excludes": [".git", ".venv", "runs", "mlruns", "mlartifacts", "*.db"]}))')

.PHONY: head-start head-stop head-status submit-train submit-tune job-status job-logs job-follow job-stop job-list

head-start:
	$(RAY_CLI) start --head --dashboard-host 127.0.0.1 --port $(HEAD_PORT) --dashboard-port $(DASHBOARD_PORT) $(HEAD_ARGS)

# Note: `ray stop` stops every Ray instance of this user on this machine.
head-stop:
	$(RAY_CLI) stop

head-status:
	$(RAY_CLI) status --address 127.0.0.1:$(HEAD_PORT)

# _submit NAME SCRIPT ARGS: submit without waiting, remember the id, print how to follow it.
define _submit
	@mkdir -p $(dir $(JOB_ID_FILE))
	@id=$(if $(JOB_ID),$(JOB_ID),$(JOB_PREFIX)-$(1)-$$(date +%Y%m%d-%H%M%S)); \
	$(RAY_CLI) job submit --address $(RAY_JOB_ADDRESS) --submission-id "$$id" --no-wait \
		--working-dir . --runtime-env-json "$(RUNTIME_ENV_JSON)" $(SUBMIT_ARGS) \
		-- $(JOB_PYTHON) $(2) $(3) && echo "$$id" > $(JOB_ID_FILE) && \
	echo "submitted $$id: make job-status / job-logs / job-follow / job-stop JOB=$$id"
endef

submit-train:
	$(call _submit,train,ray_jobs/train.py,--data "$(DATA)" $(TRAIN_ARGS))

submit-tune:
	$(call _submit,tune,ray_jobs/tune.py,--data "$(DATA)" $(TUNE_ARGS))

job-status:
	$(RAY_CLI) job status --address $(RAY_JOB_ADDRESS) $(JOB)

job-logs:
	$(RAY_CLI) job logs --address $(RAY_JOB_ADDRESS) $(JOB)

job-follow:
	$(RAY_CLI) job logs --address $(RAY_JOB_ADDRESS) --follow $(JOB)

job-stop:
	$(RAY_CLI) job stop --address $(RAY_JOB_ADDRESS) $(JOB)

job-list:
	$(RAY_CLI) job list --address $(RAY_JOB_ADDRESS)
