"""What survives a restart (animalclf.train.state): ``Progress.record`` keeps the best metric and
the early-stopping count, annotates each epoch's metrics and says when patience ran out."""

from animalclf.config import TrainConfig
from animalclf.train.state import Progress


def _epochs(cfg: TrainConfig, values) -> tuple[Progress, list[bool], list[dict]]:
    progress, stops, rows = Progress(), [], []
    for epoch, value in enumerate(values, 1):
        metrics = {"epoch": epoch, cfg.metric: value, "lr": 0.01, "note": "text"}
        stops.append(progress.record(cfg, metrics))
        rows.append(metrics)
    return progress, stops, rows


def test_patience_counts_epochs_without_improvement_and_a_tie_is_not_one():
    cfg = TrainConfig(metric="val_accuracy", patience=2, epochs=10)
    progress, stops, rows = _epochs(cfg, [0.5, 0.4, 0.6, 0.6, 0.55])
    assert stops == [False, False, False, False, True]
    assert (progress.epoch, progress.best, progress.bad_epochs) == (5, 0.6, 2)
    assert [r["best_val_accuracy"] for r in rows] == [0.5, 0.5, 0.6, 0.6, 0.6]
    assert [r["early_stopped"] for r in rows] == [0, 0, 0, 0, 1]
    assert progress.history[1] == {"epoch": 2, "val_accuracy": 0.4, "lr": 0.01, "best_val_accuracy": 0.5,
                                   "early_stopped": 0}  # numbers only: "note" is left out
    assert len(progress.history) == 5


def test_a_loss_is_minimised_and_neither_the_last_epoch_nor_patience_0_stops():
    cfg = TrainConfig(metric="val_loss", patience=1, epochs=3)
    progress, stops, rows = _epochs(cfg, [1.0, 0.8, 0.9])
    assert stops == [False, False, False]  # epoch 3 is the last anyway: not an early stop
    assert progress.best == 0.8 and rows[-1]["best_val_loss"] == 0.8 and rows[-1]["early_stopped"] == 0
    _, stops, _ = _epochs(cfg.replace(epochs=5), [1.0, 0.8, 0.9])
    assert stops == [False, False, True]
    _, stops, _ = _epochs(cfg.replace(patience=0, epochs=10), [1.0, 2.0, 3.0, 4.0])
    assert stops == [False] * 4


def test_a_restored_progress_continues_its_count():
    cfg = TrainConfig(metric="val_accuracy", patience=2, epochs=10)
    restored = Progress(epoch=4, history=[{"epoch": e} for e in range(1, 5)], best=0.7, bad_epochs=1)
    metrics = {"epoch": 5, "val_accuracy": 0.69}
    assert restored.record(cfg, metrics) is True
    assert restored.epoch == 5 and len(restored.history) == 5 and metrics["best_val_accuracy"] == 0.7
