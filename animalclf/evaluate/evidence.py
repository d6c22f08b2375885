"""The evidence gate: is a candidate better than the champion on the same images by more than noise?

Both models are evaluated on the same images; what matters is where they disagree. Of the ``n``
images, ``b`` are right only for the candidate and ``c`` right only for the champion; the
accuracy difference is ``(b - c) / n``.

Decision rule: promote when the exact one-sided McNemar test rejects "the candidate is no better"
(``p < 1 - confidence``) AND the observed gain is at least ``min_improvement``. Why McNemar and not
the bootstrap interval: on our evaluation sets (57 photos; one photo is 1.75 points) the
disagreements are a handful, and a percentile bootstrap of a handful is too sure of itself
(b=4, c=0 of 57 gives a 95% interval of [+1.8, +14.0] points, i.e. "significant", while the exact
chance of 4 heads in 4 fair tosses is 1/16, one-sided). The exact binomial test over ``b`` of ``b + c`` is
exact at any size, needs no random numbers and is what a reader can check by hand. The seeded
paired bootstrap interval is still computed and logged: it says how large the gain might be.

``min_improvement`` (default one accuracy point, 0.01) is the smallest gain worth a rollout. It
never binds on small sets (at 95% the test alone needs at least 5 more images right than wrong,
8.8 points of 57) and only matters on large ones, where significance alone would swap models for
gains (a few tenths of a point) far below the seed-to-seed spread we measured (5.5 points) and the
1.6 points by which the demo's champion trailed its own fine-tune on held-back photos.

A cheaper candidate may also replace the champion when it is *no worse* by more than a stated
``margin`` (default one point) and cheaper to serve by ``cheaper_by`` (default 3x, ms per photo
measured the same way for both: :mod:`animalclf.evaluate.cost`). "No worse" is a paired
non-inferiority test: H0 "the candidate trails by ``margin`` or more" is rejected at the same
confidence by Tango's score test for paired proportions (:func:`noninferiority_p`; Tango 1998,
the standard test for a margin on matched pairs). It asks for many images: with no disagreement at
all, 60 images give p=0.22 at a one-point margin and 269 give p=0.05, so on the demo's 60
validation photos only a larger margin can pass. Pure numpy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

__all__ = ["EVIDENCE_FILE", "DEFAULT_MIN_IMPROVEMENT", "DEFAULT_CONFIDENCE", "DEFAULT_NI_MARGIN", "DEFAULT_CHEAPER_BY",
           "Evaluation", "Decision", "Costs", "mcnemar_p", "noninferiority_p", "bootstrap_ci", "compare"]

EVIDENCE_FILE = "out_of_fold.json"
"""A CV-published version's out-of-fold predictions (:meth:`Evaluation.to_dict`), beside its report."""
DEFAULT_MIN_IMPROVEMENT = 0.01
DEFAULT_NI_MARGIN = 0.01  # a cheaper candidate may trail the champion by at most one point (non-inferiority)
DEFAULT_CHEAPER_BY = 3.0  # ... when it costs at most a third per photo
DEFAULT_CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0


@dataclass(frozen=True)
class Evaluation:
    """One model's predictions on a list of images: ``ids`` (e.g. paths), true and predicted labels."""

    ids: tuple[str, ...]
    labels: np.ndarray
    predicted: np.ndarray

    def __post_init__(self):
        object.__setattr__(self, "ids", tuple(str(i) for i in self.ids))
        object.__setattr__(self, "labels", np.asarray(self.labels, dtype=np.int64).reshape(-1))
        object.__setattr__(self, "predicted", np.asarray(self.predicted, dtype=np.int64).reshape(-1))
        if not (len(self.ids) == len(self.labels) == len(self.predicted)):
            raise ValueError(f"Evaluation needs one id, label and prediction per image; got "
                             f"{len(self.ids)}, {len(self.labels)}, {len(self.predicted)}.")

    @classmethod
    def from_probabilities(cls, ids: Sequence[str], labels, probabilities) -> "Evaluation":
        """From an ``(n, classes)`` probability (or logit) matrix: the prediction is the argmax."""
        return cls(tuple(ids), np.asarray(labels), np.asarray(probabilities).argmax(axis=1))

    def to_dict(self) -> dict:
        """Plain JSON data (ids, labels, predicted)."""
        return {"ids": list(self.ids), "labels": self.labels.tolist(), "predicted": self.predicted.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "Evaluation":
        return cls(tuple(d["ids"]), np.asarray(d["labels"]), np.asarray(d["predicted"]))

    def subset(self, samples: Sequence[tuple[str, int]]) -> Optional["Evaluation"]:
        """These predictions on ``samples`` (id, label), in their order; ``None`` when one is missing
        or has another label here."""
        row = {i: k for k, i in enumerate(self.ids)}
        idx = [row.get(str(i)) for i, _ in samples]
        if any(k is None for k in idx) or any(int(self.labels[k]) != int(label) for k, (_, label) in zip(idx, samples)):
            return None
        return Evaluation(tuple(str(i) for i, _ in samples), self.labels[idx], self.predicted[idx])

    @property
    def correct(self) -> np.ndarray:
        return self.labels == self.predicted

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean()) if len(self.ids) else float("nan")


@dataclass(frozen=True)
class Costs:
    """What the candidate and the champion cost per photo (ms; :mod:`animalclf.evaluate.cost`)."""

    candidate_ms: float
    champion_ms: Optional[float] = None

    @property
    def speedup(self) -> Optional[float]:
        """How many times cheaper the candidate is (``None`` without the champion's cost)."""
        return None if self.champion_ms is None else self.champion_ms / max(self.candidate_ms, 1e-9)


@dataclass
class Decision:
    """The gate's answer and the evidence behind it (accuracies and deltas as fractions, 0.01 = 1 point)."""

    promote: bool
    reason: str
    candidate_acc: Optional[float] = None
    champion_acc: Optional[float] = None
    delta: Optional[float] = None
    ci_low: Optional[float] = None
    ci_high: Optional[float] = None
    p_value: Optional[float] = None
    n: int = 0
    # promoted, promoted-cheaper, kept, first, already-champion, forced, ineligible, over-budget, refused-classes,
    # refused-unreadable
    outcome: str = ""
    champion_version: Optional[str] = None
    extra: dict = field(default_factory=dict)


def mcnemar_p(b: int, c: int) -> float:
    """Exact one-sided McNemar p-value: P(X >= b) for X ~ Binomial(b + c, 1/2)."""
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got b={b}, c={c}")
    m = b + c
    if m == 0:
        return 1.0
    k = np.arange(b, m + 1)
    # log C(m, k) from cumulative sums, so large m needs no big integers or scipy
    j = np.arange(1, m + 1, dtype=np.float64)
    log_comb = np.concatenate([[0.0], np.cumsum(np.log(m - j + 1) - np.log(j))])
    logs = log_comb[k] - m * math.log(2.0)
    top = logs.max()
    return float(min(1.0, math.exp(top) * np.exp(logs - top).sum()))


def noninferiority_p(b: int, c: int, n: int, margin: float) -> float:
    """One-sided p-value of H0 "candidate accuracy - champion accuracy <= -margin" on ``n`` paired
    images, ``b`` right only for the candidate, ``c`` only for the champion: Tango's score test
    (the variance of ``b - c`` at the restricted maximum-likelihood estimate under H0)."""
    if n <= 0 or b < 0 or c < 0 or b + c > n:
        raise ValueError(f"need 0 <= b, c and b + c <= n > 0; got b={b}, c={c}, n={n}")
    if not 0.0 <= margin < 1.0:
        raise ValueError(f"margin is a fraction of accuracy in [0, 1), got {margin}")
    d = -margin  # H0's boundary: delta = p_b - p_c = d
    # restricted MLE of p_c (the champion-only cell) under delta = d: 2n p^2 + B p + C = 0
    big_b = -b - c + (2 * n - b + c) * d
    big_c = -c * d * (1 - d)
    p_c = (-big_b + math.sqrt(max(big_b * big_b - 8 * n * big_c, 0.0))) / (4 * n)
    var = n * (2 * p_c + d - d * d)
    if var <= 0:  # margin 0 and no disagreement: nothing tells the two apart
        return 1.0
    z = (b - c - n * d) / math.sqrt(var)
    return float(0.5 * math.erfc(z / math.sqrt(2)))


def bootstrap_ci(b: int, c: int, n: int, confidence: float = DEFAULT_CONFIDENCE,
                 resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Two-sided percentile interval of the paired accuracy difference, resampling images.

    Resampling ``n`` images with replacement only changes how many of the ``b`` and ``c``
    disagreements are drawn, so a multinomial draw is the exact same bootstrap at O(resamples)."""
    if n <= 0:
        raise ValueError("bootstrap over no images")
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(n, [b / n, c / n, (n - b - c) / n], size=resamples)
    deltas = (draws[:, 0] - draws[:, 1]) / n
    tail = (1.0 - confidence) / 2
    low, high = np.quantile(deltas, [tail, 1.0 - tail])
    return float(low), float(high)


def compare(candidate: Evaluation, champion: Evaluation, *, min_improvement: float = DEFAULT_MIN_IMPROVEMENT,
            confidence: float = DEFAULT_CONFIDENCE, seed: int = BOOTSTRAP_SEED, margin: float = 0.0,
            cheaper_by: float = DEFAULT_CHEAPER_BY, costs: Optional[Costs] = None) -> Decision:
    """The paired gate on two evaluations of the same images (same ids, same labels, same order):
    better beyond noise by ``min_improvement``; or, with ``margin`` > 0 and ``costs``, no worse by
    ``margin`` (:func:`noninferiority_p`) and at least ``cheaper_by`` times cheaper per photo."""
    if not 0.5 <= confidence < 1.0:
        raise ValueError(f"confidence must be in [0.5, 1), got {confidence}")
    if not 0.0 <= min_improvement < 1.0:
        raise ValueError(f"min_improvement is a fraction of accuracy in [0, 1), got {min_improvement}")
    if candidate.ids != champion.ids or not np.array_equal(candidate.labels, champion.labels):
        raise ValueError("The candidate and the champion were not evaluated on the same images (ids or labels differ).")
    n = len(candidate.ids)
    if n == 0:
        raise ValueError("The gate needs at least one image.")
    a, z = candidate.correct, champion.correct
    b, c = int(np.sum(a & ~z)), int(np.sum(~a & z))
    delta = (b - c) / n
    p = mcnemar_p(b, c)
    low, high = bootstrap_ci(b, c, n, confidence, seed=seed)
    alpha = 1.0 - confidence
    numbers = (f"accuracy {a.mean():.4f} vs {z.mean():.4f} on {n} images, delta {delta:+.4f} "
               f"({confidence:.0%} CI {low:+.4f}..{high:+.4f}), {b} vs {c} disagreements won, McNemar p={p:.3g}")
    extra = {"b": b, "c": c, "min_improvement": min_improvement, "confidence": confidence}
    if costs is not None:
        extra.update(candidate_ms_per_photo=costs.candidate_ms, champion_ms_per_photo=costs.champion_ms,
                     speedup=costs.speedup)
    outcome = "kept"
    if p >= alpha:
        ok, why = False, f"not better beyond noise (p={p:.3g} >= {alpha:.3g}): {numbers}"
    elif delta < min_improvement:
        ok, why = False, f"gain {delta:+.4f} below --min-improvement {min_improvement:.4f}: {numbers}"
    else:
        ok, why, outcome = True, f"better beyond noise: {numbers}", "promoted"
    if not ok and margin > 0 and costs is not None and costs.speedup is not None:
        ni_p = noninferiority_p(b, c, n, margin)
        extra.update(ni_margin=margin, ni_p_value=ni_p, cheaper_by=cheaper_by)
        cost = f"{costs.candidate_ms:.1f} vs {costs.champion_ms:.1f} ms per photo ({costs.speedup:.2f}x cheaper)"
        if ni_p < alpha and costs.speedup >= cheaper_by:
            ok, outcome = True, "promoted-cheaper"
            why = (f"no worse by {margin:.4f} or more (non-inferiority p={ni_p:.3g} < {alpha:.3g}) and at least "
                   f"{cheaper_by:g}x cheaper: {cost}; {numbers}")
        else:
            short = [f"non-inferiority by {margin:.4f} not shown (p={ni_p:.3g} >= {alpha:.3g})" if ni_p >= alpha else "",
                     f"not {cheaper_by:g}x cheaper" if costs.speedup < cheaper_by else ""]
            why += f"; nor the cheaper-model rule: {', '.join(s for s in short if s)} ({cost})"
    return Decision(promote=ok, reason=why, candidate_acc=float(a.mean()), champion_acc=float(z.mean()), delta=delta,
                    ci_low=low, ci_high=high, p_value=p, n=n, outcome=outcome, extra=extra)
