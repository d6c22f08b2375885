"""What a finished search's trials were (animalclf.tune.results): one row per trial from Tune's
results (status, epochs, the searched config, numeric history, best epoch), and the search's
trials.json and plots written beside the report. Tune's results are stood in for by plain objects."""

import json
import re
from dataclasses import dataclass
from typing import Any, Optional

import pandas as pd
import plotly.io

from animalclf.config import TrainConfig
from animalclf.tune.results import trial_rows, write_search_plots
from animalclf.tune.space import ParamSpec

SPACE = {"lr": ParamSpec("loguniform", 1e-4, 1e-2), "unfreeze": ParamSpec("int", 0, 3)}


@dataclass
class Result:
    """What trial_rows reads of a ``ray.tune.Result``."""

    metrics_dataframe: Optional[pd.DataFrame]
    metrics: Optional[dict[str, Any]]
    config: dict[str, Any]
    path: str
    error: Optional[Exception] = None


def history(values, key="val_accuracy"):
    return pd.DataFrame([{"epoch": e, key: v, "date": "2026-12-01"} for e, v in enumerate(values, 1)])


def results():
    return [
        Result(history([0.5, 0.7, 0.6]), {"epoch": 3, "trial_id": "a1"}, {"lr": 1e-3, "unfreeze": 2, "data": "x"}, "/r/t_a1"),
        Result(history([0.4, 0.45]), {"epoch": 2, "early_stopped": 1, "trial_id": "b2"}, {"lr": 1e-2, "unfreeze": 0}, "/r/t_b2"),
        Result(history([0.2]), {"epoch": 1}, {"lr": 1e-4}, "/r/trial_c3"),
        Result(None, None, {"lr": 5e-3, "unfreeze": 1}, "/r/trial_d4", error=RuntimeError("worker died")),
    ]


def test_trial_rows_statuses_configs_and_best_epochs():
    rows = trial_rows(results(), TrainConfig(epochs=3, metric="val_accuracy"), SPACE)
    assert [(r["trial_id"], r["status"], r["epochs"]) for r in rows] == [
        ("a1", "COMPLETED", 3), ("b2", "EARLY_STOPPED", 2), ("trial_c3", "STOPPED_BY_ASHA", 1), ("trial_d4", "ERROR", 0)]
    assert [r["config"] for r in rows] == [{"lr": 1e-3, "unfreeze": 2}, {"lr": 1e-2, "unfreeze": 0},
                                           {"lr": 1e-4, "unfreeze": None}, {"lr": 5e-3, "unfreeze": 1}]  # searched keys only
    assert rows[0]["best"]["epoch"] == 2 and rows[0]["best"]["val_accuracy"] == 0.7
    assert rows[0]["history"][0] == {"epoch": 1, "val_accuracy": 0.5}  # numbers only: no date
    assert rows[3]["history"] == [] and rows[3]["best"] is None
    json.dumps(rows)  # what write_search_plots stores


def test_a_loss_picks_its_lowest_epoch():
    r = Result(history([0.9, 0.4, 0.5], key="val_loss"), {"epoch": 3}, {"lr": 1e-3, "unfreeze": 1}, "/r/t")
    (row,) = trial_rows([r], TrainConfig(epochs=5, metric="val_loss"), SPACE)
    assert row["best"]["epoch"] == 2 and row["status"] == "STOPPED_BY_ASHA"


def test_write_search_plots_writes_the_trials_each_figure_and_one_offline_page(tmp_path):
    import plotly.graph_objects as go

    cfg = TrainConfig(epochs=3, metric="val_accuracy")
    rows = trial_rows(results(), cfg, SPACE)
    out = tmp_path / "search" / "plots"
    extra = {"optimization_history": go.Figure(layout=dict(title="Optimization History Plot"))}
    page_path = write_search_plots(out, rows, SPACE, cfg, extra=extra, notes=["Importances need 2 trials & more"])
    assert json.loads((out / "trials.json").read_text()) == rows
    assert sorted(p.name for p in out.iterdir()) == ["optimization_history.json", "parallel_coordinates.json",
                                                     "search.html", "trial_curves.json", "trials.json"]
    assert page_path == out / "search.html"
    page = page_path.read_text()
    assert page.count("* plotly.js v") == 1 and not re.search(r"<script[^>]*\bsrc\s*=", page)  # offline: embedded once
    assert "log10 lr" in page  # lr is log-uniform: a log axis
    assert "Optimization History Plot" in page and "Importances need 2 trials &amp; more" in page
    curves = plotly.io.from_json((out / "trial_curves.json").read_text())
    assert [t.name.split()[0] for t in curves.data] == ["a1", "b2", "trial_c3", "trial_d4"]
