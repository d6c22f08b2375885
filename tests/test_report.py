import json
import re
from pathlib import Path

import pytest
import torch

from animalclf.evaluate.report import build_report, figures, format_table, write_report

REPO = Path(__file__).resolve().parents[1]


def assert_offline(page: str) -> None:
    """A page that draws on an air-gapped machine and in MLflow's viewer: plotly.js inside it,
    exactly once, and no script loaded from anywhere (no CDN, no file beside it)."""
    assert page.count("* plotly.js v") == 1, "plotly.js embedded once"
    assert not re.search(r"<script[^>]*\bsrc\s*=", page), re.findall(r"<script[^>]*src[^>]*>", page)


def test_no_page_loads_plotly_from_a_cdn():
    written = [p for d in ("animalclf", "app", "serve", "ray_jobs") for p in (REPO / d).rglob("*.py")]
    assert written and not [p for p in written if re.search(r"include_plotlyjs\s*=\s*[\"']cdn", p.read_text())]


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
    assert {p.name for p in paths} == {"report.json", "report.html"}
    assert json.loads((tmp_path / "report.json").read_text())["support"] == 6
    page = (tmp_path / "report.html").read_text()
    assert_offline(page)
    assert all(f'id="{name}"' in page for name in ("confusion_matrix", "pr_curves", "roc_curves", "learning_curves"))
    assert set(figures(r)) == {"confusion_matrix", "pr_curves", "roc_curves", "learning_curves"}
    assert "macro avg" in format_table(r)
