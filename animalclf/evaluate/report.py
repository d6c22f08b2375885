"""Evaluation report: per-class precision/recall/F1, confusion matrix, PR and ROC curves from
predicted probabilities, learning curves. Numbers go to ``report.json``; the figures to one
``report.html`` that works offline (plotly.js embedded, no CDN). The figures are drawn from the
JSON by :mod:`animalclf.evaluate.figures` (torch-free, so the UI uses it too).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

import torch
from torchmetrics.functional.classification import (
    multiclass_auroc,
    multiclass_average_precision,
    multiclass_confusion_matrix,
    multiclass_precision_recall_curve,
    multiclass_roc,
)

from animalclf.evaluate.figures import report_figures as figures
from animalclf.evaluate.figures import write_page

log = logging.getLogger(__name__)

__all__ = ["build_report", "figures", "write_report", "REPORT_JSON", "REPORT_HTML"]

REPORT_JSON = "report.json"
REPORT_HTML = "report.html"
_MAX_POINTS = 200


def _thin(xs: torch.Tensor, ys: torch.Tensor) -> tuple[list[float], list[float]]:
    if len(xs) > _MAX_POINTS:
        idx = torch.linspace(0, len(xs) - 1, _MAX_POINTS).round().long()
        xs, ys = xs[idx], ys[idx]
    return [round(float(v), 5) for v in xs], [round(float(v), 5) for v in ys]


def build_report(probs: torch.Tensor, targets: torch.Tensor, classes: Sequence[str],
                 history: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """All report numbers as plain JSON-able data."""
    n = len(classes)
    probs, targets = probs.float(), targets.long()
    cm = multiclass_confusion_matrix(probs, targets, n)
    tp = cm.diag().float()
    support = cm.sum(1).float()
    predicted = cm.sum(0).float()
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), torch.zeros_like(tp))
    recall = torch.where(support > 0, tp / support.clamp(min=1), torch.zeros_like(tp))
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12), torch.zeros_like(tp))
    auroc = multiclass_auroc(probs, targets, n, average=None)
    ap = multiclass_average_precision(probs, targets, n, average=None)
    fpr, tpr, _ = multiclass_roc(probs, targets, n)
    prec_c, rec_c, _ = multiclass_precision_recall_curve(probs, targets, n)
    per_class = {
        c: {"precision": precision[i].item(), "recall": recall[i].item(), "f1": f1[i].item(),
            "support": int(support[i].item()), "auroc": auroc[i].item(), "average_precision": ap[i].item()}
        for i, c in enumerate(classes)
    }
    total = support.sum().item()
    w = support / max(total, 1)
    return {
        "classes": list(classes),
        "accuracy": (tp.sum() / max(total, 1)).item(),
        "macro_avg": {"precision": precision.mean().item(), "recall": recall.mean().item(), "f1": f1.mean().item()},
        "weighted_avg": {"precision": (precision * w).sum().item(), "recall": (recall * w).sum().item(), "f1": (f1 * w).sum().item()},
        "support": int(total),
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
        "roc": {c: dict(zip(("fpr", "tpr"), _thin(fpr[i], tpr[i]))) for i, c in enumerate(classes)},
        "pr": {c: dict(zip(("recall", "precision"), _thin(rec_c[i], prec_c[i]))) for i, c in enumerate(classes)},
        "history": [dict(h) for h in history],
    }


def write_report(out_dir: str | Path, report: dict[str, Any]) -> list[Path]:
    """Write ``report.json`` and ``report.html`` (every figure on one page that works offline,
    plotly.js embedded once) into ``out_dir``; return the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / REPORT_JSON]
    paths[0].write_text(json.dumps(report, indent=1))
    title = f"Evaluation report: accuracy {report['accuracy']:.4f}, macro F1 {report['macro_avg']['f1']:.4f}"
    paths.append(write_page(out / REPORT_HTML, title, figures(report)))
    log.info("Report written to %s (accuracy %.4f, macro F1 %.4f)", out, report["accuracy"], report["macro_avg"]["f1"])
    return paths


def format_table(report: dict[str, Any]) -> str:
    """The per-class report as text, like scikit-learn's classification_report."""
    lines = [f"{'':>12} {'precision':>9} {'recall':>9} {'f1-score':>9} {'support':>9}"]
    for c, m in report["per_class"].items():
        lines.append(f"{c:>12} {m['precision']:9.2f} {m['recall']:9.2f} {m['f1']:9.2f} {m['support']:9d}")
    lines.append(f"{'accuracy':>12} {'':9} {'':9} {report['accuracy']:9.2f} {report['support']:9d}")
    for k in ("macro_avg", "weighted_avg"):
        m = report[k]
        lines.append(f"{k.replace('_', ' '):>12} {m['precision']:9.2f} {m['recall']:9.2f} {m['f1']:9.2f} {report['support']:9d}")
    return "\n".join(lines)
