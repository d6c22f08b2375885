"""The search's Optuna study, kept: an RDB (sqlite) storage in the search's folder, beside its
trials and plots, so the study outlives the driver (``optuna.load_study``, ``optuna-dashboard
sqlite:///.../optuna.db``), and Optuna's own figures of it: optimisation history, parameter
importances, parallel coordinates.

Nothing here imports optuna, ray or torch at module level: the UI reads :data:`STUDY_FIGURES`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna
    import plotly.graph_objects as go

log = logging.getLogger(__name__)

__all__ = ["STUDY_FILE", "STUDY_FIGURES", "storage_url", "open_storage", "study_figures"]

STUDY_FILE = "optuna.db"
# Optuna's figures of the study, by the name their plotly JSON and their place on a page take.
STUDY_FIGURES = ("optimization_history", "param_importances", "optuna_parallel_coordinate")


def storage_url(search_dir: str | Path) -> str:
    """The SQLAlchemy URL of the study kept in ``search_dir`` (what optuna-dashboard takes)."""
    return f"sqlite:///{(Path(search_dir) / STUDY_FILE).resolve()}"


def open_storage(search_dir: str | Path, fresh: bool) -> "optuna.storages.RDBStorage":
    """The study's storage in ``search_dir``; ``fresh`` drops a study file an earlier search of the
    same name left there (a new search starts a new study; a resumed one continues its own)."""
    import optuna

    db = Path(search_dir) / STUDY_FILE
    db.parent.mkdir(parents=True, exist_ok=True)
    if fresh and db.exists():
        log.info("Starting a new Optuna study: replacing %s, left by an earlier search of this name", db)
        db.unlink()
    return optuna.storages.RDBStorage(storage_url(search_dir))


def study_figures(search_dir: str | Path, name: str) -> tuple[dict[str, "go.Figure"], list[str]]:
    """Optuna's figures of study ``name`` kept in ``search_dir``, and a note for each it could not
    draw (too few finished trials for importances, say) instead of an error: the search's results
    stand without them."""
    import optuna
    from optuna import visualization as vis

    db = Path(search_dir) / STUDY_FILE
    try:
        if not db.is_file():  # e.g. a resumed search that began before studies were kept
            raise FileNotFoundError(f"no {db}")
        study = optuna.load_study(study_name=name, storage=storage_url(search_dir))
    except Exception as e:
        note = f"No Optuna study {name!r} kept ({type(e).__name__}: {e}): no study figures."
        log.info("%s", note)
        return {}, [note]
    done = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    figs: dict[str, go.Figure] = {}
    notes: list[str] = []
    if not done:
        note = f"Optuna study {name!r} has no completed trial: no optimisation history, importances or parallel coordinates."
        log.info("%s", note)
        return figs, [note]
    draw: dict[str, Any] = {"optimization_history": vis.plot_optimization_history,
                            "param_importances": vis.plot_param_importances,
                            "optuna_parallel_coordinate": vis.plot_parallel_coordinate}
    if len({t.value for t in done}) < 2:
        draw.pop("param_importances")
        notes.append(f"Parameter importances need at least 2 completed trials with different values; study "
                     f"{name!r} has {len(done)} completed, so there is no importance plot.")
    for key, plot in draw.items():
        try:
            figs[key] = plot(study)
        except Exception as e:  # a figure Optuna cannot draw for this study is a note, not a failed search
            notes.append(f"Optuna could not draw {key} ({type(e).__name__}: {e}).")
    for note in notes:
        log.info("%s", note)
    return figs, notes
