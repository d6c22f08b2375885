import json

import pytest
import torch

from animalclf.evaluate.report import build_report, figures, format_table, write_report


def test_report_numbers_from_probabilities(tmp_path):
    classes = ["a", "b", "c"]
    targets = torch.tensor([0, 0, 1, 1, 2, 2])
    probs = torch.tensor([[.7, .2, .1], [.4, .5, .1], [.1, .8, .1], [.2, .6, .2], [.1, .1, .8], [.5, .2, .3]])
    r = build_report(probs, targets, classes, history=[{"epoch": 1, "val_loss": 1.0, "train_loss": 2.0}])
    assert r["accuracy"] == pytest.approx(4 / 6)
    assert r["per_class"]["b"] == pytest.approx({"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2,
                                                 "auroc": 1.0, "average_precision": 1.0})
    assert r["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    # curves come from probabilities: class a's ROC is not the 3-point curve hard labels would give
    assert len(r["roc"]["a"]["fpr"]) > 3
    assert r["per_class"]["a"]["auroc"] == pytest.approx(0.875)
    paths = write_report(tmp_path, r)
    names = {p.name for p in paths}
    assert names == {"report.json", "confusion_matrix.html", "pr_curves.html", "roc_curves.html", "learning_curves.html"}
    assert json.loads((tmp_path / "report.json").read_text())["support"] == 6
    assert "plotly" in (tmp_path / "roc_curves.html").read_text()
    assert set(figures(r)) == {"confusion_matrix", "pr_curves", "roc_curves", "learning_curves"}
    assert "macro avg" in format_table(r)
