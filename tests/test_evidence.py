"""The evidence gate's statistics on hand-made prediction vectors (pure numpy, no MLflow)."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from animalclf.evaluate.evidence import Costs, Evaluation, bootstrap_ci, compare, mcnemar_p, noninferiority_p


def evaluation(correct, classes: int = 3) -> Evaluation:
    """An evaluation where image i is right exactly when ``correct[i]``."""
    correct = np.asarray(correct, dtype=bool)
    labels = np.arange(len(correct)) % classes
    return Evaluation(tuple(f"img{i}.jpg" for i in range(len(correct))), labels,
                      np.where(correct, labels, (labels + 1) % classes))


def pair(n: int, both: int, only_candidate: int, only_champion: int) -> tuple[Evaluation, Evaluation]:
    """Candidate and champion on ``n`` images with the given agreement pattern."""
    cand = np.zeros(n, bool)
    champ = np.zeros(n, bool)
    cand[:both] = champ[:both] = True
    cand[both:both + only_candidate] = True
    champ[both + only_candidate:both + only_candidate + only_champion] = True
    return evaluation(cand), evaluation(champ)


def test_mcnemar_exact_values():
    assert mcnemar_p(0, 0) == 1.0
    assert mcnemar_p(5, 0) == pytest.approx(1 / 32)
    assert mcnemar_p(4, 0) == pytest.approx(1 / 16)
    assert mcnemar_p(0, 5) == pytest.approx(1.0)
    assert mcnemar_p(3, 3) == pytest.approx(42 / 64)
    for b, c in [(7, 2), (12, 9), (1, 30), (40, 25)]:  # against the binomial sum done with integers
        m = b + c
        assert mcnemar_p(b, c) == pytest.approx(sum(math.comb(m, k) for k in range(b, m + 1)) / 2 ** m, rel=1e-9)
    t = time.perf_counter()
    assert 0 < mcnemar_p(60_000, 59_000) < 0.01  # large sets: no big integers, fast
    assert time.perf_counter() - t < 1.0
    with pytest.raises(ValueError):
        mcnemar_p(-1, 2)


def test_bootstrap_is_seeded_and_brackets_the_gain():
    a = bootstrap_ci(12, 2, 60, 0.95, seed=3)
    assert a == bootstrap_ci(12, 2, 60, 0.95, seed=3)
    low, high = a
    assert low < 10 / 60 < high
    assert bootstrap_ci(0, 0, 60) == (0.0, 0.0)
    wide, narrow = bootstrap_ci(12, 2, 60, 0.99), bootstrap_ci(12, 2, 60, 0.80)
    assert wide[0] <= low <= narrow[0] and narrow[1] <= high <= wide[1]


def test_identical_predictions_are_not_promoted():
    cand, champ = pair(60, 45, 0, 0)
    d = compare(cand, champ)
    assert not d.promote and d.outcome == "kept"
    assert d.delta == 0 and d.p_value == 1.0 and (d.ci_low, d.ci_high) == (0.0, 0.0)
    assert d.candidate_acc == d.champion_acc == 0.75 and d.n == 60
    assert "not better beyond noise" in d.reason


def test_a_big_real_gain_is_promoted():
    cand, champ = pair(60, 40, 15, 1)
    d = compare(cand, champ)
    assert d.promote and d.outcome == "promoted"
    assert d.delta == pytest.approx(14 / 60)
    assert d.p_value < 0.001 and 0 < d.ci_low < d.delta < d.ci_high
    assert d.extra["b"] == 15 and d.extra["c"] == 1


def test_gain_within_noise_is_not_promoted_even_where_the_bootstrap_would():
    # 4 more photos right out of 57 (7 points): the bootstrap interval excludes 0, but four fair
    # coin tosses all landing heads happens 1 time in 16, so the gate (McNemar) keeps the champion.
    cand, champ = pair(57, 50, 4, 0)
    d = compare(cand, champ)
    assert d.ci_low > 0
    assert d.p_value == pytest.approx(1 / 16)
    assert not d.promote and "not better beyond noise" in d.reason


def test_worse_and_tied_candidates_are_kept():
    assert not compare(*pair(60, 40, 1, 10)).promote
    tie = compare(*pair(60, 40, 6, 6))
    assert not tie.promote and tie.delta == 0 and tie.p_value > 0.5


def test_min_improvement_blocks_significant_but_tiny_gains():
    cand, champ = pair(20_000, 18_000, 150, 50)  # +0.5 points, p ~ 1e-12
    strict = compare(cand, champ, min_improvement=0.01)
    assert strict.p_value < 1e-9 and not strict.promote and "--min-improvement" in strict.reason
    assert compare(cand, champ, min_improvement=0.0).promote
    with pytest.raises(ValueError):
        compare(cand, champ, min_improvement=1.5)
    with pytest.raises(ValueError):
        compare(cand, champ, confidence=1.0)


def test_evaluations_must_be_on_the_same_images():
    cand, champ = pair(10, 5, 2, 0)
    other = Evaluation(tuple(f"other{i}.jpg" for i in range(10)), champ.labels, champ.predicted)
    with pytest.raises(ValueError, match="same images"):
        compare(cand, other)
    with pytest.raises(ValueError, match="one id, label and prediction"):
        Evaluation(("a", "b"), [0, 1], [0])


def test_from_probabilities_takes_the_argmax():
    probs = np.array([[0.1, 0.9], [0.8, 0.2], [0.4, 0.6]])
    e = Evaluation.from_probabilities(["a", "b", "c"], [1, 0, 0], probs)
    assert e.predicted.tolist() == [1, 0, 1] and e.accuracy == pytest.approx(2 / 3)


# ---------------------------------------------------------------- the cheaper-model rule (non-inferiority)

def test_noninferiority_p_matches_hand_values_and_needs_images():
    # no disagreement: Z = sqrt(n m / (1 - m)) (the restricted MLE of the champion-only cell is m)
    for n, m in ((60, 0.01), (269, 0.01), (60, 0.05), (1000, 0.02)):
        z = math.sqrt(n * m / (1 - m))
        assert noninferiority_p(0, 0, n, m) == pytest.approx(0.5 * math.erfc(z / math.sqrt(2)), rel=1e-9)
    assert noninferiority_p(0, 0, 60, 0.01) > 0.2  # 60 photos cannot show "within one point" at all
    assert noninferiority_p(0, 0, 269, 0.01) < 0.05 < noninferiority_p(0, 0, 260, 0.01)
    # more candidate-only wins, or a wider margin, make "no worse" easier to show; champion-only wins harder
    assert noninferiority_p(5, 0, 60, 0.01) < noninferiority_p(0, 0, 60, 0.01) < noninferiority_p(0, 3, 60, 0.01)
    assert noninferiority_p(2, 2, 500, 0.05) < noninferiority_p(2, 2, 500, 0.01)
    assert noninferiority_p(0, 0, 60, 0.0) == 1.0  # margin 0, nothing to tell apart
    with pytest.raises(ValueError):
        noninferiority_p(40, 30, 60, 0.01)


def test_noninferiority_test_holds_its_size_at_the_margin():
    """Pairs drawn exactly at H0's boundary (the candidate 3 points worse) are declared non-inferior
    at a 3-point margin about 5% of the time, not more: the test is calibrated."""
    rng = np.random.default_rng(0)
    n, margin, p_c = 400, 0.03, 0.06
    draws = rng.multinomial(n, [p_c - margin, p_c, 1 - 2 * p_c + margin], size=4000)
    rejected = np.mean([noninferiority_p(int(b), int(c), n, margin) < 0.05 for b, c, _ in draws])
    assert 0.03 <= rejected <= 0.07, rejected
    # and it has power where the two are truly equal
    equal = rng.multinomial(n, [0.04, 0.04, 0.92], size=500)
    assert np.mean([noninferiority_p(int(b), int(c), n, margin) < 0.05 for b, c, _ in equal]) > 0.6


def test_a_cheaper_candidate_no_worse_by_the_margin_is_promoted():
    cand, champ = pair(600, 560, 6, 8)  # 2 images behind of 600 (-0.33 points), within a 2-point margin
    kept = compare(cand, champ, margin=0.02, costs=Costs(20.0, 200.0), cheaper_by=3)
    assert kept.promote and kept.outcome == "promoted-cheaper" and kept.extra["ni_p_value"] < 0.05
    assert kept.extra["speedup"] == pytest.approx(10.0) and "10.00x cheaper" in kept.reason
    # the same evidence but only 2x cheaper, or no cost measured, or the rule off: kept
    assert compare(cand, champ, margin=0.02, costs=Costs(100.0, 200.0), cheaper_by=3).outcome == "kept"
    assert "not 3x cheaper" in compare(cand, champ, margin=0.02, costs=Costs(100.0, 200.0), cheaper_by=3).reason
    assert not compare(cand, champ, margin=0.02).promote
    assert not compare(cand, champ, margin=0.0, costs=Costs(20.0, 200.0)).promote
    # 10x cheaper but clearly worse: not shown non-inferior
    worse, champ2 = pair(600, 540, 2, 30)
    d = compare(worse, champ2, margin=0.02, costs=Costs(20.0, 200.0))
    assert not d.promote and "non-inferiority by 0.0200 not shown" in d.reason
