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
# Tracking variables set in your shell (MLFLOW_TRACKING_*, MLFLOW_REGISTRY_URI, DAGSHUB_*) travel to
# the job in its runtime env, secrets as a private file's path (docs/security.md). A job's outputs (runs/: MLflow store, checkpoints,
# reports) go to JOB_HOME (the job's ANIMALCLF_HOME), never Ray's temporary copy of the working dir.
#
# A cluster (docs/cluster.md): `RAY_ADDRESS=http://127.0.0.1:8265 make submit-train DATA=s3://BUCKET/animals15` (through
# `ray dashboard cluster.yaml`'s tunnel) or any other address. A head that is not this machine's (JOB_WHERE=cluster) runs
# the job with the nodes' `python`, writes to ~/animalclf of the head (JOB_HOME), gets DATA as given (a path on the
# cluster or a bucket) and installs the project's dependencies pinned by constraints.txt in the job's runtime env (JOB_PIP).
VENV ?= .venv
PY ?= $(VENV)/bin/python
RAY ?= $(VENV)/bin/ray
DATA ?= $(wildcard ../shared/data/animals15)
ANIMALCLF_HOME ?= $(CURDIR)
HEAD_PORT ?= 6379
DASHBOARD_PORT ?= 8265
HEAD_ARGS ?=
# Where jobs go: RAY_ADDRESS when set (`ray job submit` itself prefers it to --address), else the head on this machine.
RAY_JOB_ADDRESS ?= $(or $(RAY_ADDRESS),http://127.0.0.1:$(DASHBOARD_PORT))
JOBENV = $(PY) -m animalclf.runtime.jobenv
# "here": a Ray head of this machine listens at RAY_JOB_ADDRESS; "cluster": anything else (an SSH tunnel's loopback
# port too). Asked once, only by the targets that use it.
JOB_WHERE ?= $(eval JOB_WHERE := $(shell $(JOBENV) where '$(RAY_JOB_ADDRESS)'))$(JOB_WHERE)
_here = $(filter here,$(JOB_WHERE))
# The job's interpreter: this checkout's venv for a head on this machine; on a cluster, the nodes' own.
JOB_PYTHON ?= $(if $(_here),$(abspath $(PY)),python)
# The job's ANIMALCLF_HOME: this checkout (ANIMALCLF_HOME) here; on a cluster ~/animalclf of the head (the checkout
# cluster.yaml syncs; Ray expands ${HOME} on the node), or shared storage you name.
JOB_HOME ?= $(if $(_here),$(ANIMALCLF_HOME),$${HOME}/animalclf)
# 1: the runtime env installs pyproject's dependencies under constraints.txt on the nodes (what they lack; Ray caches
# it per node). Default on for a cluster; off here, where the job runs in this checkout's venv.
JOB_PIP ?= $(if $(_here),0,1)
# Jobs run in a copy of this directory: here a local folder must be an absolute path; buckets, and any DATA for a
# cluster (a path there), pass as they are.
_local_data = $(if $(findstring ://,$(DATA)),$(DATA),$(abspath $(DATA)))
DATA_ARG = $(if $(_here),$(_local_data),$(DATA))
TRAIN_ARGS ?=
TUNE_ARGS ?=
SUBMIT_ARGS ?=
JOB_ID_FILE ?= runs/.last-ray-job
JOB ?= $(shell cat $(JOB_ID_FILE) 2>/dev/null)
JOB_PREFIX ?= animalclf
JOB_ID ?=

RAY_CLI = RAY_AUTH_MODE=token $(RAY)
# Runtime env: the tracking variables set here, JOB_HOME, excludes for the upload, the pinned packages with JOB_PIP=1
# (animalclf.runtime.jobenv). A secrets file, if any, is written under this machine's ANIMALCLF_HOME.
RUNTIME_ENV_JSON = $$(ANIMALCLF_HOME='$(ANIMALCLF_HOME)' $(JOBENV) runtime-env --home '$(JOB_HOME)' --pip '$(JOB_PIP)')

.PHONY: head-start head-stop head-status submit-train submit-tune job-status job-logs job-follow job-stop job-list

# The proxy hook: Serve's own 503/408 answers become JSON like the app's (docs/serving.md).
head-start:
	@$(PY) -m animalclf.runtime.rayauth
	RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=serve.web:proxy_middlewares $(RAY_CLI) start --head --node-ip-address 127.0.0.1 --dashboard-host 127.0.0.1 --port $(HEAD_PORT) --dashboard-port $(DASHBOARD_PORT) $(HEAD_ARGS)

# Note: `ray stop` stops every Ray instance of this user on this machine.
head-stop:
	$(RAY_CLI) stop

head-status:
	$(RAY_CLI) status --address 127.0.0.1:$(HEAD_PORT)

# _submit NAME SCRIPT ARGS: submit without waiting, remember the id, print how to follow it.
define _submit
	@mkdir -p $(dir $(JOB_ID_FILE))
	@id=$(if $(JOB_ID),$(JOB_ID),$(JOB_PREFIX)-$(1)-$$(date +%Y%m%d-%H%M%S)); \
	env="$(RUNTIME_ENV_JSON)" && \
	RAY_ADDRESS='$(RAY_JOB_ADDRESS)' $(RAY_CLI) job submit --address '$(RAY_JOB_ADDRESS)' --submission-id "$$id" --no-wait \
		--working-dir . --runtime-env-json "$$env" $(SUBMIT_ARGS) \
		-- $(JOB_PYTHON) $(2) $(3) && echo "$$id" > $(JOB_ID_FILE) && \
	echo "submitted $$id: make job-status / job-logs / job-follow / job-stop JOB=$$id" && \
	echo "dashboard: $$($(JOBENV) link '$(RAY_JOB_ADDRESS)' "$$id")" && \
	echo 'outputs: $(JOB_HOME)/runs$(if $(_here),, on the head) (the job'"'"'s last lines say where each one is)'
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
# PREDICT_OUT (Parquet parts, or a .csv); a rerun skips what is there. Local paths go absolute; for a cluster
# they pass as given (paths there), and PREDICT_OUT must be given (a bucket or the cluster's shared storage).
MODEL ?= models:/animalclf@champion
PREDICT_OUT ?= $(ANIMALCLF_HOME)/runs/predictions
PREDICT_ARGS ?=
_abs_or_uri = $(if $(findstring :/,$(1)),$(1),$(abspath $(1)))
_job_path = $(if $(_here),$(call _abs_or_uri,$(1)),$(1))
PREDICT_CMD_ARGS = --model "$(call _abs_or_uri,$(MODEL))" --data "$(_local_data)" --out "$(call _abs_or_uri,$(PREDICT_OUT))" $(PREDICT_ARGS)
SUBMIT_PREDICT_ARGS = --model "$(call _job_path,$(MODEL))" --data "$(DATA_ARG)" --out "$(call _job_path,$(PREDICT_OUT))" $(PREDICT_ARGS)

.PHONY: predict submit-predict

predict:
	$(PY) ray_jobs/predict.py $(PREDICT_CMD_ARGS)

submit-predict:
	$(if $(_here),,$(if $(filter file,$(origin PREDICT_OUT)),$(error submit-predict to a cluster: give PREDICT_OUT=s3://BUCKET/predictions (or a path on the cluster's shared storage))))
	$(call _submit,predict,ray_jobs/predict.py,$(SUBMIT_PREDICT_ARGS))
