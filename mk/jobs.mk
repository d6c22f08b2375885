# Ray job submission as users do it: a long-lived head (local, or `ray dashboard cluster.yaml`'s
# tunnel to a cluster) and `ray job submit --working-dir .` against its dashboard address.
# Included by the Makefile; also works alone: `make -f mk/jobs.mk submit-train DATA=...`.
#
#   make head-start                      # local head: dashboard on 127.0.0.1:8265, token auth on
#   make submit-train TRAIN_ARGS="--arch efficientnet_lite0 --epochs 5"
#   make job-status / job-logs / job-stop          # the last submitted job (or JOB=<id>)
#   make head-stop
#
# Token auth: `make head-start` creates ~/.ray/auth_token when there is none (never printed); every
# `ray` call here runs with RAY_AUTH_MODE=token and reads it (or RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH).
# Tracking variables set in your shell (MLFLOW_TRACKING_*, MLFLOW_REGISTRY_URI, DAGSHUB_*) and ANIMALCLF_HOME travel to
# the job in its runtime env, secrets as a private file's path (docs/security.md). A job's outputs (runs/: MLflow store, checkpoints,
# reports) go to ANIMALCLF_HOME, by default this checkout, never Ray's temporary copy of it.
VENV ?= .venv
PY ?= $(VENV)/bin/python
RAY ?= $(VENV)/bin/ray
DATA ?= $(wildcard ../shared/data/animals15)
# Jobs run in a copy of this directory: a local folder must be an absolute path (buckets pass as they are).
DATA_ARG = $(if $(findstring ://,$(DATA)),$(DATA),$(abspath $(DATA)))
ANIMALCLF_HOME ?= $(CURDIR)
RAY_JOB_ADDRESS ?= http://127.0.0.1:8265
HEAD_PORT ?= 6379
DASHBOARD_PORT ?= 8265
HEAD_ARGS ?=
# The job's interpreter: this checkout's venv for a head on this machine; on a cluster, the nodes'
# own (`JOB_PYTHON=python`).
JOB_PYTHON ?= $(abspath $(PY))
TRAIN_ARGS ?=
TUNE_ARGS ?=
SUBMIT_ARGS ?=
JOB_ID_FILE ?= runs/.last-ray-job
JOB ?= $(shell cat $(JOB_ID_FILE) 2>/dev/null)
JOB_PREFIX ?= animalclf
JOB_ID ?=

RAY_CLI = RAY_AUTH_MODE=token $(RAY)
# Runtime env: the tracking variables set here, ANIMALCLF_HOME, excludes for the upload (one list:
# animalclf.tracking.job_runtime_env).
RUNTIME_ENV_JSON = $$(ANIMALCLF_HOME='$(ANIMALCLF_HOME)' $(PY) -c 'import json; from animalclf.tracking import job_runtime_env; print(json.dumps(job_runtime_env()))')

.PHONY: head-start head-stop head-status submit-train submit-tune job-status job-logs job-follow job-stop job-list

head-start:
	@$(PY) -m animalclf.runtime.rayauth
	$(RAY_CLI) start --head --node-ip-address 127.0.0.1 --dashboard-host 127.0.0.1 --port $(HEAD_PORT) --dashboard-port $(DASHBOARD_PORT) $(HEAD_ARGS)

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
	echo "submitted $$id: make job-status / job-logs / job-follow / job-stop JOB=$$id" && \
	echo "outputs: $(ANIMALCLF_HOME)/runs (the job's last lines say where each one is)"
endef

submit-train:
	$(call _submit,train,ray_jobs/train.py,--data "$(DATA_ARG)" $(TRAIN_ARGS))

submit-tune:
	$(call _submit,tune,ray_jobs/tune.py,--data "$(DATA_ARG)" $(TUNE_ARGS))

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

# Batch prediction (ray_jobs/predict.py): every image under DATA through MODEL, one row each into
# PREDICT_OUT (Parquet parts, or a .csv); a rerun skips what is there. Local paths go absolute.
MODEL ?= models:/animalclf@champion
PREDICT_OUT ?= $(ANIMALCLF_HOME)/runs/predictions
PREDICT_ARGS ?=
_abs_or_uri = $(if $(findstring :/,$(1)),$(1),$(abspath $(1)))
PREDICT_CMD_ARGS = --model "$(call _abs_or_uri,$(MODEL))" --data "$(DATA_ARG)" --out "$(call _abs_or_uri,$(PREDICT_OUT))" $(PREDICT_ARGS)

.PHONY: predict submit-predict

predict:
	$(PY) ray_jobs/predict.py $(PREDICT_CMD_ARGS)

submit-predict:
	$(call _submit,predict,ray_jobs/predict.py,$(PREDICT_CMD_ARGS))
