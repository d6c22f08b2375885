"""What the Model page shows, read from MLflow: the versions of a registered model, a version's
evaluation report, the search that produced it and its lineage (run, trial, parameters).

The store is the one the jobs log to (:func:`animalclf.tracking.resolve_tracking`:
``MLFLOW_TRACKING_URI``, DagsHub variables, else ``$ANIMALCLF_HOME/runs/mlflow.db``). Nothing here
imports torch. Every failure is a :class:`StoreError` whose message is shown on the page as is.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from animalclf.config import TrainConfig
from animalclf.errors import UserError
from animalclf.tracking import check_tracking, resolve_tracking
from animalclf.tune.study import STUDY_FIGURES

log = logging.getLogger(__name__)

__all__ = ["StoreError", "Registry", "VersionInfo", "parse_model_version", "REPORT_ARTIFACT", "TRIALS_ARTIFACT"]

REPORT_ARTIFACT = "report/report.json"  # logged by animalclf.train.run.publish
TRIALS_ARTIFACT = "search/trials.json"  # logged on the search's parent run by animalclf.tune.search
SEARCH_ARTIFACTS = "search"  # there too: the Optuna study's figures as plotly JSON (<name>.json)
_KEY_PARAMS = ("arch", "unfreeze", "lr", "weight_decay", "batch_size", "epochs", "label_smoothing", "dropout",
               "image_size", "num_workers", "metric", "teacher", "kd_weight", "kd_temperature", "augment")
GATE = "animalclf.gate."


def gate_summary(tags: dict[str, str]) -> str | None:
    """One line on how the promotion gate decided for a version (its ``animalclf.gate.*`` tags):
    the outcome against which champion, the accuracies, the p-values, and both costs per photo when
    they were measured; ``None`` when the version has no gate tags."""
    g = {k[len(GATE):]: v for k, v in tags.items() if k.startswith(GATE)}
    if "decision" not in g:
        return None
    parts = [f"**{g['decision']}**" + (f" against v{g['champion_version']}" if g.get("champion_version") else "")]
    if g.get("candidate_acc") and g.get("champion_acc"):
        parts.append(f"accuracy {float(g['candidate_acc']):.1%} vs {float(g['champion_acc']):.1%}"
                     + (f" on {g['n']} images" if g.get("n") else ""))
    if g.get("p_value"):
        parts.append(f"better: McNemar p={float(g['p_value']):.2g}")
    if g.get("ni_p_value"):
        parts.append(f"no worse by {float(g['ni_margin']):.1%}: p={float(g['ni_p_value']):.2g}")
    if g.get("candidate_ms_per_photo"):
        cost = f"{float(g['candidate_ms_per_photo']):.1f} ms per photo"
        if g.get("champion_ms_per_photo"):
            cost += f" vs {float(g['champion_ms_per_photo']):.1f} ({float(g['speedup']):.1f}x cheaper"
            cost += f", {float(g['cheaper_by']):g}x asked)" if g.get("cheaper_by") else ")"
        if g.get("max_ms_per_photo"):
            cost += f", budget {g['max_ms_per_photo']} ms"
        parts.append(cost)
    return "Promotion gate: " + "; ".join(parts)


class StoreError(Exception):
    """The tracking store cannot tell the page what it asked; ``str(e)`` says why and what to do."""


def parse_model_version(model_version: str) -> Optional[tuple[str, str]]:
    """``("animalclf", "3")`` from ``animalclf/3`` or ``models:/animalclf/3`` (what /metadata
    reports for registered models); ``None`` for checkpoints and run URIs."""
    ref = model_version[len("models:/"):] if model_version.startswith("models:/") else model_version
    if ":" in ref or "@" in ref or ref.count("/") != 1:
        return None
    name, version = ref.split("/")
    return (name, version) if name and version.isdigit() else None


@dataclass
class VersionInfo:
    """One registered version and everything the page shows about it."""

    name: str
    version: str
    aliases: list[str]
    run_id: str
    run: dict[str, Any]  # run_id, run_name, kind, status, experiment_id, start_time
    params: dict[str, str]  # the parameters that trained it (the best trial's for a search)
    report: Optional[dict[str, Any]] = None
    search: Optional[dict[str, Any]] = None  # run_id, metric, log_params, trials, space, study_figures
    trial: Optional[dict[str, Any]] = None  # trial_id, run_id, status
    notes: list[str] = field(default_factory=list)  # what is missing and why
    tags: dict[str, str] = field(default_factory=dict)  # the version's animalclf.* tags (e.g. the promotion gate's)

    @property
    def label(self) -> str:
        return f"v{self.version}" + "".join(f" @{a}" for a in self.aliases)

    def key_params(self) -> dict[str, str]:
        return {k: self.params[k] for k in _KEY_PARAMS if k in self.params}


class Registry:
    """Read-only view of the tracking store: registered versions, reports, searches, lineage."""

    def __init__(self) -> None:
        from mlflow import MlflowClient

        try:
            env = resolve_tracking()
        except UserError as e:
            raise StoreError(str(e)) from None
        self.uri = env["MLFLOW_TRACKING_URI"]
        if self.uri.startswith("sqlite:///"):
            db = Path(self.uri[len("sqlite:///"):])
            if not db.is_file():  # never create an empty store just by looking
                raise StoreError(f"No MLflow store at {db}: train or tune a model first (make demo), or set "
                                 f"MLFLOW_TRACKING_URI (or ANIMALCLF_HOME) to where the runs are.")
        else:
            try:
                check_tracking(self.uri, timeout=5)
            except UserError as e:
                raise StoreError(str(e)) from None
        os.environ.update({k: v for k, v in env.items() if k != "MLFLOW_TRACKING_URI"})  # credentials, if any
        self.client = MlflowClient(tracking_uri=self.uri)

    # --- registry -------------------------------------------------------------------------
    def versions(self, name: str) -> dict[str, list[str]]:
        """``{version: [aliases]}`` of registered model ``name``, newest first."""
        try:
            model = self.client.get_registered_model(name)
            found = self.client.search_model_versions(f"name = '{name}'")
        except Exception as e:
            raise StoreError(self._why(e, f"registered model {name!r}")) from None
        by_version: dict[str, list[str]] = {}
        for alias, v in (model.aliases or {}).items():
            by_version.setdefault(str(v), []).append(alias)
        return {str(mv.version): sorted(by_version.get(str(mv.version), []))
                for mv in sorted(found, key=lambda mv: -int(mv.version))}

    def version_info(self, name: str, version: str) -> VersionInfo:
        """The version's run, report, search and lineage; what is missing goes to ``notes``."""
        try:
            mv = self.client.get_model_version(name, version)
        except Exception as e:
            raise StoreError(self._why(e, f"{name} version {version}")) from None
        aliases = sorted(getattr(mv, "aliases", None) or [])
        if not mv.run_id:
            raise StoreError(f"{name} version {version} names no MLflow run, so it has no report or lineage.")
        try:
            run = self.client.get_run(mv.run_id)
        except Exception as e:
            raise StoreError(self._why(e, f"run {mv.run_id} of {name} version {version}")) from None
        tags = run.data.tags
        info = VersionInfo(name=name, version=str(version), aliases=aliases, run_id=mv.run_id, params=dict(run.data.params),
                           run={"run_id": mv.run_id, "run_name": run.info.run_name, "kind": tags.get("animalclf.kind", "?"),
                                "status": run.info.status, "experiment_id": run.info.experiment_id,
                                "start_time": run.info.start_time})
        info.tags = {k: v for k, v in sorted((mv.tags or {}).items()) if k.startswith("animalclf.")}
        info.report = self._json(mv.run_id, REPORT_ARTIFACT, info.notes)
        search_run = mv.run_id if tags.get("animalclf.kind") == "tune" else tags.get("mlflow.parentRunId")
        if tags.get("animalclf.kind") == "trial":
            info.trial = {"trial_id": tags.get("animalclf.trial_id"), "run_id": mv.run_id, "status": tags.get("animalclf.trial_status")}
        if search_run:
            self._add_search(info, search_run)
        else:
            info.notes.append(f"Run {mv.run_id} is a {info.run['kind']} run, not a search: no trials to show.")
        return info

    # --- helpers --------------------------------------------------------------------------
    def _add_search(self, info: VersionInfo, search_run: str) -> None:
        try:
            parent = self.client.get_run(search_run)
        except Exception as e:
            info.notes.append(self._why(e, f"search run {search_run}"))
            return
        params = parent.data.params
        trials = self._json(search_run, TRIALS_ARTIFACT, info.notes)
        metric = params.get("base.metric") or info.params.get("metric") or TrainConfig.metric
        log_params = [k[len("space."):] for k, v in params.items() if k.startswith("space.") and v.startswith("loguniform")]
        info.search = {"run_id": search_run, "run_name": parent.info.run_name, "metric": metric, "log_params": log_params,
                       "trials": trials or [], "space": {k[len("space."):]: v for k, v in params.items() if k.startswith("space.")},
                       "study_figures": self._study_figures(search_run, info.notes)}
        best = parent.data.tags.get("animalclf.best_trial")
        if info.trial is None and best:
            info.trial = {"trial_id": best, "run_id": None, "status": None}
            try:
                found = self.client.search_runs(
                    [parent.info.experiment_id],
                    f"tags.`mlflow.parentRunId` = '{search_run}' and tags.`animalclf.trial_id` = '{best}'", max_results=1)
            except Exception as e:
                info.notes.append(self._why(e, f"trial {best} of search run {search_run}"))
                found = []
            if found:
                child = found[0]
                info.trial.update(run_id=child.info.run_id, status=child.data.tags.get("animalclf.trial_status"))
                info.params = dict(child.data.params)  # the trial's own, full configuration
        if info.trial is None:
            info.notes.append(f"Search run {search_run} names no best trial.")

    def _study_figures(self, search_run: str, notes: list[str]) -> dict[str, Any]:
        """The Optuna study's figures (plotly JSON) the search logged, by name, in STUDY_FIGURES' order."""
        try:
            logged = {Path(a.path).name for a in self.client.list_artifacts(search_run, SEARCH_ARTIFACTS)}
        except Exception as e:
            notes.append(self._why(e, f"the artifacts of search run {search_run}"))
            return {}
        figs = {n: self._json(search_run, f"{SEARCH_ARTIFACTS}/{n}.json", notes) for n in STUDY_FIGURES if f"{n}.json" in logged}
        if not figs:
            notes.append(f"Search run {search_run} logged no Optuna study figures ({SEARCH_ARTIFACTS}/optimization_history.json"
                         f" and the rest): a search from before the study was kept, or one with no completed trial.")
        return {n: f for n, f in figs.items() if f is not None}

    def _json(self, run_id: str, artifact: str, notes: list[str]) -> Optional[Any]:
        import mlflow

        try:
            with tempfile.TemporaryDirectory() as d:
                path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact, dst_path=d,
                                                           tracking_uri=self.uri)
                return json.loads(Path(path).read_text())
        except Exception as e:
            notes.append(f"Run {run_id} has no readable {artifact} ({type(e).__name__}: {str(e)[:160]}).")
            return None

    def _why(self, e: Exception, what: str) -> str:
        code = getattr(e, "error_code", "")
        if code == "RESOURCE_DOES_NOT_EXIST":
            return f"No {what} in the MLflow store {self.uri}."
        return f"Could not read {what} from the MLflow store {self.uri} ({type(e).__name__}: {str(e)[:200]})."
