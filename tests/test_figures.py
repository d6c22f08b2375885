"""Plotly figures from what a run leaves behind (animalclf.evaluate.figures): a report's confusion
matrix, PR, ROC and learning curves, and a search's parallel coordinates and per-trial curves."""

import plotly.graph_objects as go

from animalclf.evaluate.figures import HISTORY_KEYS, report_figures, search_figures

REPORT = {
    "classes": ["Cat", "Dog"],
    "confusion_matrix": [[3, 1], [0, 4]],
    "per_class": {"Cat": {"average_precision": 0.9, "auroc": 0.95}, "Dog": {"average_precision": 0.8, "auroc": 0.85}},
    "pr": {"Cat": {"recall": [0, 0.5, 1], "precision": [1, 1, 0.75]}, "Dog": {"recall": [0, 1], "precision": [1, 0.8]}},
    "roc": {"Cat": {"fpr": [0, 0.25, 1], "tpr": [0, 1, 1]}, "Dog": {"fpr": [0, 1], "tpr": [0, 1]}},
}


def test_report_figures_draw_one_trace_per_class_and_the_history_it_has():
    figs = report_figures({**REPORT, "history": [{"epoch": 1, "val_loss": 0.9, "train_loss": 1.2, "val_accuracy": 0.5},
                                                 {"epoch": 2, "val_loss": 0.7, "train_loss": 0.8, "val_accuracy": 0.75}]})
    assert list(figs) == ["confusion_matrix", "pr_curves", "roc_curves", "learning_curves"]
    assert all(isinstance(f, go.Figure) for f in figs.values())
    (heat,) = figs["confusion_matrix"].data
    assert heat.type == "heatmap" and [list(r) for r in heat.z] == [[3, 1], [0, 4]] and list(heat.x) == ["Cat", "Dog"]
    pr = figs["pr_curves"].data
    assert [t.name for t in pr] == ["Cat (AP 0.900)", "Dog (AP 0.800)"] and list(pr[0].x) == [0, 0.5, 1]
    roc = figs["roc_curves"].data
    assert [t.name for t in roc] == ["Cat (AUC 0.950)", "Dog (AUC 0.850)", "chance"] and roc[2].line.dash == "dash"
    curves = figs["learning_curves"].data
    assert [t.name for t in curves] == ["train_loss", "val_loss", "val_accuracy"]  # HISTORY_KEYS order, those present
    assert list(curves[1].x) == [1, 2] and list(curves[1].y) == [0.9, 0.7]
    assert [t.name for t in curves] == [k for k in HISTORY_KEYS if k in ("train_loss", "val_loss", "val_accuracy")]


def test_a_report_without_history_has_no_learning_curves():
    assert list(report_figures(REPORT)) == ["confusion_matrix", "pr_curves", "roc_curves"]
    assert "learning_curves" not in report_figures({**REPORT, "history": []})


def _trial(tid, status, lr, unfreeze, accs):
    hist = [{"epoch": e, "val_accuracy": a} for e, a in enumerate(accs, 1)]
    return {"trial_id": tid, "status": status, "config": {"lr": lr, "unfreeze": unfreeze}, "history": hist,
            "best": max(hist, key=lambda h: h["val_accuracy"]) if hist else None}


def test_search_figures_put_finished_trials_on_axes_and_every_trial_on_the_curves():
    trials = [_trial("t1", "COMPLETED", 1e-3, 1, [0.4, 0.6]), _trial("t2", "STOPPED_BY_ASHA", 1e-2, 0, [0.3]),
              _trial("t3", "ERROR", 1e-4, 2, [])]
    figs = search_figures(trials, "val_accuracy", log_params=["lr"])
    assert list(figs) == ["parallel_coordinates", "trial_curves"]
    (par,) = figs["parallel_coordinates"].data
    dims = {d.label: list(d.values) for d in par.dimensions}
    assert list(dims) == ["log10 lr", "unfreeze", "val_accuracy"]
    assert [round(v, 6) for v in dims["log10 lr"]] == [-3, -2] and dims["unfreeze"] == [1, 0]  # t3 has no best
    assert dims["val_accuracy"] == [0.6, 0.3] and list(par.line.color) == [0.6, 0.3]
    curves = figs["trial_curves"].data
    assert [t.name.split()[0] for t in curves] == ["t1", "t2", "t3"]
    assert [t.line.dash for t in curves] == ["solid", "dash", "solid"]  # dashed: stopped by ASHA
    assert list(curves[0].y) == [0.4, 0.6] and list(curves[2].x) == []


def test_a_parameter_with_a_zero_stays_linear_and_no_finished_trial_gives_empty_axes():
    trials = [_trial("a", "COMPLETED", 0.0, 1, [0.5]), _trial("b", "COMPLETED", 1e-3, 2, [0.7])]
    dims = search_figures(trials, "val_accuracy", ["lr"])["parallel_coordinates"].data[0].dimensions
    assert [d.label for d in dims] == ["lr", "unfreeze", "val_accuracy"]  # log10(0) is no axis
    assert list(dims[0].values) == [0.0, 1e-3]
    empty = search_figures([_trial("x", "ERROR", 1e-3, 0, [])], "val_accuracy", ["lr"])
    assert [d.label for d in empty["parallel_coordinates"].data[0].dimensions] == ["val_accuracy"]
    assert len(empty["trial_curves"].data) == 1
