"""The Model page: which version serves, how good it is, the search that produced it, its lineage,
and a comparison with another registered version.

Sources: the endpoint's /metadata names the serving version; :mod:`app.model_info` reads the rest
from MLflow. A missing artifact or an unreachable store is a message on the page, never a traceback.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Optional

import plotly.graph_objects as go
import streamlit as st

from animalclf.config import TrainConfig
from animalclf.evaluate.figures import report_figures, search_figures
from animalclf.evaluate.registry import ALIAS
from app.model_info import Registry, StoreError, VersionInfo, gate_summary, parse_model_version

__all__ = ["model_page"]

_CACHE_S = 30  # how long the page reuses what it read from MLflow


@st.cache_data(ttl=_CACHE_S, show_spinner="Reading the registry…")
def _versions(uri: str, name: str) -> dict[str, list[str]]:  # uri: part of the cache key
    return Registry().versions(name)


@st.cache_data(ttl=_CACHE_S, show_spinner="Reading the version's run…")
def _info(uri: str, name: str, version: str) -> VersionInfo:
    return Registry().version_info(name, version)


def model_page(meta: Optional[dict[str, Any]], meta_error: Optional[str]) -> None:
    """Lay out the page from the endpoint's metadata (or the error reaching it) and the registry."""
    served = parse_model_version(meta["model_version"]) if meta else None
    if meta_error:
        st.warning(f"{meta_error} Showing the model registry without the serving version.")
    elif not served:
        _unregistered(meta)
        return
    if meta and meta.get("last_load_error"):
        st.warning(f"The last model update failed, the version below is still serving: {meta['last_load_error']}")
    elif meta and meta.get("load_error"):
        st.warning("The last model update failed, the version below is still serving (the reason is in the replica's "
                   "log, and in /metadata for callers with the API key).")
    try:
        uri = Registry().uri
        name = served[0] if served else TrainConfig.model_name
        versions = _versions(uri, name)
    except StoreError as e:
        st.error(str(e))
        return
    if not versions:
        st.info(f"Registered model {name!r} has no versions yet: train or tune one (make demo).")
        return
    serving = served[1] if served else None
    if serving and serving not in versions:
        st.warning(f"The endpoint serves {name} v{serving}, which the MLflow store {uri} does not have: "
                   f"the UI and Serve read different stores (set the same MLFLOW_TRACKING_URI or ANIMALCLF_HOME).")

    def label(v: str) -> str:
        return f"v{v}" + "".join(f" @{a}" for a in versions[v]) + (" (serving)" if v == serving else "")

    order = list(versions)  # newest first
    champion = next((v for v in order if ALIAS in versions[v]), None)
    shown_default = serving if serving in versions else champion or order[0]
    left, right = st.columns(2)
    shown = left.selectbox(f"Version of {name}", order, index=order.index(shown_default), format_func=label, key="model_version")
    others = [v for v in order if v != shown]
    older = [v for v in others if int(v) < int(shown)]
    # the champion against its predecessor; any other version against the champion
    other_default = champion if champion and champion != shown else (older or others or [None])[0]
    other = right.selectbox("Compare with", [None, *others], format_func=lambda v: "(none)" if v is None else label(v),
                            index=([None, *others].index(other_default)), key="compare_version")
    try:
        info = _info(uri, name, shown)
        peer = _info(uri, name, other) if other else None
    except StoreError as e:
        st.error(str(e))
        return
    st.subheader(f"{name} {info.label}" + (" — serving at the endpoint" if shown == serving else ""))
    if meta and shown == serving:
        _endpoint_caption(meta)
    _headline(info, peer)
    _evaluation(info)
    _search(info)
    _lineage(info, uri)
    if peer:
        _compare(info, peer)
    for note in info.notes:
        st.caption(note)


def _endpoint_caption(meta: dict[str, Any]) -> None:
    st.caption(f"Endpoint: {meta.get('arch')}, unfreeze {meta.get('unfreeze')}, epoch {meta.get('epoch')}, "
               f"{len(meta.get('classes') or [])} classes, input {(meta.get('preprocess') or {}).get('crop_size')} px.")


def _unregistered(meta: dict[str, Any]) -> None:
    st.subheader(f"Serving {meta['model_version']}")
    _endpoint_caption(meta)
    st.info("This endpoint serves a checkpoint, not a registered MLflow version: no report, search or lineage to show. "
            "Serve models:/NAME@ALIAS (or NAME/VERSION) to see them here.")
    m = meta.get("metrics") or {}
    cols = st.columns(2)
    if "val_accuracy" in m:
        cols[0].metric("Validation accuracy (checkpoint)", f"{m['val_accuracy']:.1%}")
    if "val_f1" in m:
        cols[1].metric("Macro F1 (checkpoint)", f"{m['val_f1']:.3f}")


def _headline(info: VersionInfo, peer: Optional[VersionInfo]) -> None:
    r, p = info.report, peer.report if peer else None
    if r is None:
        st.info(f"{info.label} has no evaluation report (report/report.json on run {info.run_id}): nothing to chart.")
        return
    acc, f1 = r["accuracy"], r["macro_avg"]["f1"]
    c = st.columns(4)
    oof = "evaluated_on" in r  # published after CV: out-of-fold predictions on every image
    c[0].metric("Out-of-fold accuracy" if oof else "Validation accuracy", f"{acc:.1%}",
                delta=f"{(acc - p['accuracy']) * 100:+.1f} pts vs v{peer.version}" if p else None)
    c[1].metric("Macro F1", f"{f1:.3f}", delta=f"{f1 - p['macro_avg']['f1']:+.3f} vs v{peer.version}" if p else None)
    c[2].metric("Images evaluated" if oof else "Validation images", r["support"])
    c[3].metric("Classes", len(r["classes"]))


def _evaluation(info: VersionInfo) -> None:
    r = info.report
    if r is None:
        return
    st.markdown("#### Evaluation on the validation split" if "evaluated_on" not in r else
                f"#### Evaluation: {r['evaluated_on']} (cross-validation; the model itself saw them all)")
    figs = report_figures(r)
    left, right = st.columns([5, 4])
    left.plotly_chart(figs["confusion_matrix"].update_layout(height=520), width="stretch", key="fig-confusion")
    rows = [{"class": c, "precision": m["precision"], "recall": m["recall"], "f1": m["f1"], "AUC": m["auroc"],
             "AP": m["average_precision"], "support": m["support"]} for c, m in r["per_class"].items()]
    right.dataframe(rows, width="stretch", height=520, hide_index=True,
                    column_config={k: st.column_config.NumberColumn(format="%.3f") for k in ("precision", "recall", "f1", "AUC", "AP")})
    left, right = st.columns(2)
    left.plotly_chart(figs["pr_curves"], width="stretch", key="fig-pr")
    right.plotly_chart(figs["roc_curves"], width="stretch", key="fig-roc")
    if "learning_curves" in figs:
        st.plotly_chart(figs["learning_curves"], width="stretch", key="fig-learning")
    else:
        st.caption("The report has no per-epoch history, so no learning curves.")


def _search(info: VersionInfo) -> None:
    s = info.search
    if s is None:
        return
    st.markdown(f"#### The search that produced it: run {s['run_name'] or s['run_id']}")
    space = ", ".join(f"{k} {v}" for k, v in s["space"].items())
    st.caption(f"Metric {s['metric']}" + (f"; space: {space}" if space else ""))
    trials = s["trials"]
    if not trials:
        st.info(f"Search run {s['run_id']} has no readable trials (search/trials.json).")
        return
    metric = s["metric"]
    best_id = info.trial and info.trial.get("trial_id")
    rows = [{"trial": t["trial_id"] + (" ★" if t["trial_id"] == best_id else ""), "status": t.get("status"), "epochs": t.get("epochs"),
             **(t.get("config") or {}), f"best {metric}": (t.get("best") or {}).get(metric),
             "at epoch": (t.get("best") or {}).get("epoch")} for t in trials]
    st.dataframe(rows, width="stretch", hide_index=True)
    figs = search_figures(trials, metric, s["log_params"])
    left, right = st.columns(2)
    left.plotly_chart(figs["parallel_coordinates"], width="stretch", key="fig-parcoords")
    right.plotly_chart(figs["trial_curves"], width="stretch", key="fig-trials")
    _study(s)


def _study(s: dict[str, Any]) -> None:
    """Optuna's own figures of the search's study (kept as search/optuna.db on the search run)."""
    figs = s.get("study_figures") or {}
    if not figs:
        return
    st.markdown("##### The Optuna study")
    st.caption("The whole study is the search run's artifact search/optuna.db: download it and open it with "
               "optuna.load_study or `optuna-dashboard sqlite:///optuna.db`.")
    names = list(figs)
    for name, where in zip(names, [*st.columns(2), *[st] * len(names)]):  # two side by side, the rest full width
        where.plotly_chart(go.Figure(figs[name]), width="stretch", key=f"fig-study-{name}")


def _lineage(info: VersionInfo, uri: str) -> None:
    st.markdown("#### Lineage")
    run = info.run
    started = dt.datetime.fromtimestamp(run["start_time"] / 1000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC") if run.get("start_time") else "?"
    rows = [("registered model", f"{info.name} {info.label}"),
            ("run", f"{run['run_id']} ({run['run_name']}, {run['kind']}, {run['status']}, started {started})"),
            ("experiment", run["experiment_id"]), ("tracking store", uri)]
    if info.search:
        rows.append(("search run", f"{info.search['run_id']} ({info.search['run_name']})"))
    if info.trial:
        t = info.trial
        rows.append(("trial", f"{t['trial_id']}" + (f" (run {t['run_id']}, {t['status'] or 'status unknown'})" if t.get("run_id") else "")))
    rows += [(k[len("animalclf."):], v if len(v) <= 200 else v[:200] + "…") for k, v in info.tags.items()]
    gate = gate_summary(info.tags)
    if gate:
        st.markdown(gate)
    st.table({"": [k for k, _ in rows], "value": [v for _, v in rows]})
    key = info.key_params()
    if key:
        st.markdown("Parameters: " + ", ".join(f"**{k}** {v}" for k, v in key.items()))
    with st.expander(f"All {len(info.params)} parameters"):
        st.json(info.params, expanded=True)


def _compare(info: VersionInfo, peer: VersionInfo) -> None:
    st.markdown(f"#### {info.label} against {peer.label}")
    a, b = info.report, peer.report
    if a is None or b is None:
        st.info(f"{(peer if b is None else info).label} has no report: nothing to compare.")
        return
    if a["classes"] != b["classes"]:
        st.warning("The two versions were trained on different class lists: their numbers do not compare.")
    elif a["support"] != b["support"]:
        st.caption(f"Evaluated on different validation splits ({a['support']} vs {b['support']} images): compare with care.")

    def col(i: VersionInfo, r: dict[str, Any]) -> dict[str, Any]:
        return {"accuracy": f"{r['accuracy']:.1%}", "macro F1": f"{r['macro_avg']['f1']:.3f}",
                "weighted F1": f"{r['weighted_avg']['f1']:.3f}", "validation images": str(r["support"]),
                **{k: str(v) for k, v in i.key_params().items()}}

    ca, cb = col(info, a), col(peer, b)
    keys = list(dict.fromkeys([*ca, *cb]))
    st.table({"": keys, info.label: [ca.get(k, "") for k in keys], peer.label: [cb.get(k, "") for k in keys]})
    classes = list(a["per_class"])
    fig = go.Figure(layout=dict(title="F1 per class", barmode="group", yaxis=dict(range=[0, 1], title="F1"), height=380))
    for i, r in ((info, a), (peer, b)):
        fig.add_bar(x=classes, y=[r["per_class"].get(c, {}).get("f1") for c in classes], name=i.label)
    st.plotly_chart(fig, width="stretch", key="fig-compare-f1")
