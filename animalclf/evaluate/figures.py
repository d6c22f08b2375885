"""Plotly figures drawn from the JSON a run leaves behind: an evaluation report (``report.json``)
and a search's trials (``search/trials.json``), and the one way they become a page: a single HTML
file with plotly.js embedded once (no CDN: it works offline, on an air-gapped cluster and in
MLflow's artifact viewer). Pure plotly, no torch: the report writer, the tuning job and the
Streamlit UI (an HTTP client that must not load torch) all draw with these.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import plotly.graph_objects as go

__all__ = ["report_figures", "search_figures", "write_page", "HISTORY_KEYS"]

HISTORY_KEYS = ("train_loss", "val_loss", "train_accuracy", "val_accuracy", "train_f1", "val_f1")


def report_figures(report: Mapping[str, Any]) -> dict[str, go.Figure]:
    """Plotly figures of a report: confusion matrix, PR, ROC, learning curves (when it has a history)."""
    classes = report["classes"]
    figs: dict[str, go.Figure] = {}
    figs["confusion_matrix"] = go.Figure(
        go.Heatmap(z=report["confusion_matrix"], x=classes, y=classes, colorscale="Blues", text=report["confusion_matrix"], texttemplate="%{text}"),
        layout=dict(title="Confusion matrix (validation)", xaxis_title="predicted", yaxis_title="true", yaxis_autorange="reversed"),
    )
    pr = go.Figure(layout=dict(title="Precision-recall per class (from probabilities)", xaxis_title="recall", yaxis_title="precision"))
    roc = go.Figure(layout=dict(title="ROC per class (from probabilities)", xaxis_title="false positive rate", yaxis_title="true positive rate"))
    for c in classes:
        pc = report["per_class"][c]
        pr.add_scatter(x=report["pr"][c]["recall"], y=report["pr"][c]["precision"], mode="lines", name=f"{c} (AP {pc['average_precision']:.3f})")
        roc.add_scatter(x=report["roc"][c]["fpr"], y=report["roc"][c]["tpr"], mode="lines", name=f"{c} (AUC {pc['auroc']:.3f})")
    roc.add_scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dash", color="grey"), name="chance")
    figs["pr_curves"], figs["roc_curves"] = pr, roc
    hist = report.get("history") or []
    if hist:
        lc = go.Figure(layout=dict(title="Learning curves", xaxis_title="epoch"))
        epochs = [h.get("epoch") for h in hist]
        for key in HISTORY_KEYS:
            if key in hist[0]:
                lc.add_scatter(x=epochs, y=[h.get(key) for h in hist], mode="lines+markers", name=key)
        figs["learning_curves"] = lc
    return figs


def search_figures(trials: Sequence[Mapping[str, Any]], metric: str, log_params: Iterable[str] = ()) -> dict[str, go.Figure]:
    """Parallel coordinates (parameters vs each trial's best ``metric``) and per-trial curves.

    ``trials`` are the rows of ``search/trials.json`` (``trial_id``, ``status``, ``config``,
    ``history``, ``best``); parameters named in ``log_params`` are drawn on a log10 axis.
    """
    log_params = set(log_params)
    done = [t for t in trials if t.get("best") and t["best"].get(metric) is not None]
    params = list(done[0]["config"]) if done else []
    dims = []
    for k in params:
        vals = [t["config"].get(k) for t in done]
        if k in log_params and all(isinstance(v, (int, float)) and v > 0 for v in vals):
            dims.append(dict(label=f"log10 {k}", values=[math.log10(v) for v in vals]))
        else:
            dims.append(dict(label=k, values=vals))
    score = [t["best"][metric] for t in done]
    dims.append(dict(label=metric, values=score))
    parcoords = go.Figure(go.Parcoords(line=dict(color=score, colorscale="Viridis", showscale=True), dimensions=dims),
                          layout=dict(title=f"Search: parameters vs best {metric}", margin=dict(l=70, r=40)))  # room for axis labels
    curves = go.Figure(layout=dict(title=f"Per-trial {metric} (dashed: stopped by ASHA)", xaxis_title="epoch", yaxis_title=metric))
    for t in trials:
        h = t.get("history") or []
        curves.add_scatter(x=[e.get("epoch") for e in h], y=[e.get(metric) for e in h], mode="lines+markers",
                           name=f"{t['trial_id']} {t.get('config')}",
                           line=dict(dash="dash" if t.get("status") == "STOPPED_BY_ASHA" else "solid"))
    return {"parallel_coordinates": parcoords, "trial_curves": curves}


def write_page(path: str | Path, title: str, figures: Mapping[str, go.Figure], notes: Sequence[str] = ()) -> Path:
    """Write ``figures`` as one self-contained HTML page with plotly.js embedded once (about 4.8 MB,
    instead of once per figure): no script comes from a CDN or a file beside it, so the page draws
    offline and in MLflow's artifact viewer (which shows HTML from a blob URL, where a relative
    script cannot load). ``notes`` are shown under the title (e.g. why a figure is missing)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    divs = [fig.to_html(full_html=False, include_plotlyjs=i == 0, div_id=name, default_height="520px")
            for i, (name, fig) in enumerate(figures.items())]
    paras = "".join(f"<p>{html.escape(n)}</p>" for n in notes)
    path.write_text(f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title></head>"
                    f"<body style=\"font-family: sans-serif\"><h1>{html.escape(title)}</h1>{paras}\n"
                    + "\n".join(divs) + "\n</body></html>\n", encoding="utf-8")
    return path
