"""What a finished search's trials were: one row per trial (status, epochs, config, history, best
epoch), their MLflow child runs closed with it, and the search's plots written beside the report
(one page that works offline, and each figure's plotly JSON)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence

from animalclf.config import TrainConfig, better
from animalclf.evaluate.figures import search_figures, write_page
from animalclf.tune.space import ParamSpec

if TYPE_CHECKING:
    import plotly.graph_objects as go

log = logging.getLogger(__name__)

__all__ = ["trial_rows", "mark_children", "write_search_plots", "SEARCH_HTML"]

SEARCH_HTML = "search.html"


def trial_rows(results, cfg: TrainConfig, space: Mapping[str, ParamSpec]) -> list[dict[str, Any]]:
    rows = []
    for r in results:
        df = r.metrics_dataframe
        hist = [] if df is None else df.to_dict("records")
        last = r.metrics or {}
        epochs = int(last.get("epoch", 0) or 0)
        if r.error:
            status = "ERROR"
        elif epochs >= cfg.epochs:
            status = "COMPLETED"
        elif last.get("early_stopped"):
            status = "EARLY_STOPPED"  # our patience rule
        else:
            status = "STOPPED_BY_ASHA"
        best_i = None
        for i, h in enumerate(hist):
            if h.get(cfg.metric) is not None and better(h[cfg.metric], hist[best_i][cfg.metric] if best_i is not None else None, cfg.mode):
                best_i = i
        rows.append({
            "trial_id": last.get("trial_id") or Path(r.path).name, "status": status, "epochs": epochs,
            "config": {k: r.config.get(k) for k in space}, "history": [{k: v for k, v in h.items() if isinstance(v, (int, float))} for h in hist],
            "best": hist[best_i] if best_i is not None else None,
        })
    return rows


def mark_children(parent, rows) -> None:
    """Close each trial's child run with its real outcome (ASHA-stopped trials end KILLED)."""
    if not parent:
        return
    from mlflow import MlflowClient

    client = MlflowClient()
    exp_id = client.get_run(parent.run_id).info.experiment_id
    children = client.search_runs([exp_id], f"tags.`mlflow.parentRunId` = '{parent.run_id}'")
    by_trial = {c.data.tags.get("animalclf.trial_id"): c for c in children}
    for t in rows:
        child = by_trial.get(t["trial_id"])
        if child is None:
            continue
        client.set_tag(child.info.run_id, "animalclf.trial_status", t["status"])
        client.set_tag(child.info.run_id, "animalclf.epochs_run", t["epochs"])
        status = {"ERROR": "FAILED", "STOPPED_BY_ASHA": "KILLED"}.get(t["status"], "FINISHED")
        client.set_terminated(child.info.run_id, status)


def write_search_plots(out: Path, rows: list[dict[str, Any]], space: Mapping[str, ParamSpec], cfg: TrainConfig,
                       extra: Optional[Mapping[str, "go.Figure"]] = None, notes: Sequence[str] = ()) -> Path:
    """Write ``trials.json``, each figure's plotly JSON (``<name>.json``: the trials' parallel
    coordinates and curves, then ``extra``, e.g. the Optuna study's) and all of them on one
    ``search.html`` that works offline (plotly.js embedded once); return the page's path."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "trials.json").write_text(json.dumps(rows, indent=1, default=str))
    log_params = [k for k, spec in space.items() if spec.kind == "loguniform"]
    figs = {**search_figures(rows, cfg.metric, log_params), **(extra or {})}
    for name, fig in figs.items():
        (out / f"{name}.json").write_text(fig.to_json())
    return write_page(out / SEARCH_HTML, f"Search: {len(rows)} trials, metric {cfg.metric}", figs, notes)
