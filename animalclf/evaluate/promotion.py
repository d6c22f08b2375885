"""Promotion: may a candidate version replace ``@champion``? The evidence gate
(:mod:`animalclf.evaluate.evidence`) on the same images for both, then a compare-and-set move of the
alias under the registry's lease (:mod:`animalclf.evaluate.registry`, whose docstring says how).
Loading and evaluating models stays with the caller (``promote`` takes a callable): no torch here."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Optional, Sequence

from animalclf.evaluate.evidence import (
    DEFAULT_CHEAPER_BY,
    DEFAULT_CONFIDENCE,
    DEFAULT_MIN_IMPROVEMENT,
    Costs,
    Decision,
    Evaluation,
    compare,
)
from animalclf.evaluate.registry import (
    _MAX_TAG,
    ALIAS,
    CLASSES_TAG,
    GATE_TAG,
    ChampionUnreadable,
    ClassMismatch,
    Lease,
    RegistryError,
    _cause,
    _client,
    _guard,
    classes_fingerprint,
    current_champion,
    lease,
    tag_version,
    version_classes,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

__all__ = ["Candidate", "Costs", "CostsOf", "GateRules", "promote"]


@dataclass(frozen=True)
class Candidate:
    """A registered version that asks to be the champion: its predictions on the gate images, its
    class list, and whether it may take part at all (a trial that did not complete may not)."""

    version: str
    evaluation: Evaluation
    classes: Sequence[str]
    eligible: bool = True


@dataclass(frozen=True)
class GateRules:
    """How the gate decides: the improvement and confidence it needs; the cheaper-model rule (no
    worse by ``margin``, 0 = off, and ``cheaper_by`` times cheaper per photo); the cost budget
    ``max_ms_per_photo`` no candidate may exceed; ``force`` (promote without comparing, also when
    the champion cannot be read); and the compare-and-set's rounds and lease."""

    min_improvement: float = DEFAULT_MIN_IMPROVEMENT
    confidence: float = DEFAULT_CONFIDENCE
    margin: float = 0.0
    cheaper_by: float = DEFAULT_CHEAPER_BY
    max_ms_per_photo: Optional[float] = None
    force: bool = False
    max_rounds: int = 5
    timing: Lease = field(default_factory=Lease)


def _record(client: "MlflowClient", model_name: str, version: str, d: Decision) -> Decision:
    """Log the decision and tag the candidate version with it (a failed tag is a warning, not a failure)."""
    log.info("Gate for %s v%s against champion v%s: %s (%s)", model_name, version, d.champion_version, d.outcome, d.reason)
    tags = {"decision": d.outcome, "reason": d.reason[:_MAX_TAG], "champion_version": d.champion_version,
            "delta": d.delta, "p_value": d.p_value, "n": d.n or None, "candidate_acc": d.candidate_acc,
            "champion_acc": d.champion_acc, "ci": None if d.ci_low is None else f"[{d.ci_low:.4f}, {d.ci_high:.4f}]",
            **{k: d.extra.get(k) for k in ("min_improvement", "confidence", "ni_margin", "ni_p_value", "cheaper_by",
                                            "candidate_ms_per_photo", "champion_ms_per_photo", "speedup",
                                            "max_ms_per_photo")}}
    try:
        for k, v in tags.items():
            if v is not None:
                text = f"{v:.6g}" if isinstance(v, float) else str(v)
                client.set_model_version_tag(model_name, version, f"{GATE_TAG}.{k}", text)
    except Exception as e:  # noqa: BLE001
        log.warning("Could not tag %s v%s with the gate decision (%s)", model_name, version, _cause(e))
    return d


def _set_alias(client: "MlflowClient", model_name: str, version: str) -> None:
    with _guard(f"move @{ALIAS} of {model_name!r} to v{version}"):
        client.set_registered_model_alias(model_name, ALIAS, version)


CostsOf = Callable[[Optional[str]], Costs]
"""``costs(champion_version)``: the candidate's ms per photo and, for a version, the champion's,
measured side by side (:mod:`animalclf.evaluate.cost`); ``None``: the candidate's alone."""


def _gate(model_name: str, candidate: Candidate, champ: Optional[str], evaluate_champion: Callable[[str], Evaluation],
          rules: GateRules, costs_of: Optional[CostsOf] = None) -> Decision:
    cand, candidate_eval = str(candidate.version), candidate.evaluation
    base = dict(candidate_acc=candidate_eval.accuracy, n=len(candidate_eval.ids), champion_version=champ,
                extra={"min_improvement": rules.min_improvement, "confidence": rules.confidence})
    if champ == cand:
        return Decision(True, "already the champion", outcome="already-champion", **base)
    if rules.force:
        return Decision(True, "--force-promote: not compared", outcome="forced", **base)
    budget = rules.max_ms_per_photo is not None
    costs = None
    if costs_of is not None and (budget or (champ is not None and rules.margin > 0)):
        costs = costs_of(champ)  # the champion's cost too when there is one, timed side by side
    if costs is not None and budget and costs.candidate_ms > rules.max_ms_per_photo:
        base["extra"].update(candidate_ms_per_photo=costs.candidate_ms, champion_ms_per_photo=costs.champion_ms,
                             max_ms_per_photo=rules.max_ms_per_photo)
        return Decision(False, f"over the cost budget: {costs.candidate_ms:.1f} ms per photo > --max-ms-per-photo "
                               f"{rules.max_ms_per_photo:g}", outcome="over-budget", **base)
    if champ is None:
        return Decision(True, "no champion yet", outcome="first", **base)
    try:
        champion_eval = evaluate_champion(champ)
    except Exception as e:  # the champion's model is part of "the champion cannot be read"
        log.debug("Evaluating champion v%s failed", champ, exc_info=True)
        raise ChampionUnreadable(f"Cannot evaluate champion v{champ} of {model_name!r} ({_cause(e)}): fix its "
                                 f"artifacts or pass --force-promote to promote without comparing.") from None
    d = compare(candidate_eval, champion_eval, min_improvement=rules.min_improvement, confidence=rules.confidence,
                margin=rules.margin, cheaper_by=rules.cheaper_by, costs=costs)
    d.champion_version = champ
    if rules.max_ms_per_photo is not None:
        d.extra["max_ms_per_photo"] = rules.max_ms_per_photo
    return d


def _check_classes(client: "MlflowClient", model_name: str, cand: str, champ: str, fp: str, force: bool) -> None:
    theirs = version_classes(model_name, champ, client=client)
    if theirs is None and not force:
        raise ChampionUnreadable(f"Cannot read the class list of champion v{champ} of {model_name!r} (no {CLASSES_TAG} "
                                 f"tag, no meta file): tag it with registry.tag_version or pass --force-promote.")
    if theirs is not None and theirs != fp:
        msg = (f"{model_name} v{cand} has other classes than champion v{champ}: they cannot be compared or served "
               f"under one name; pass another --model-name for this class list.")
        _record(client, model_name, cand, Decision(False, msg, outcome="refused-classes", champion_version=champ))
        raise ClassMismatch(msg)


def promote(model_name: str, candidate: Candidate, evaluate_champion: Callable[[str], Evaluation],
            rules: GateRules = GateRules(), *, client: Optional["MlflowClient"] = None,
            costs_of: Optional[CostsOf] = None) -> Decision:
    """Move ``@champion`` to ``candidate.version`` only if the evidence gate says so (compare-and-set).

    ``evaluate_champion(version)`` must return, for that version, what ``candidate.evaluation`` is for
    the candidate: predictions on the same images. ``costs_of`` measures what both cost per photo
    (the cheaper-model rule and the budget need it; without it both are off). An ineligible
    candidate never promotes. Raises
    :class:`ChampionUnreadable` (unless ``rules.force``), :class:`ClassMismatch`, or
    :class:`RegistryError` when the registry cannot be written."""
    c, cand, fp = _client(client), str(candidate.version), classes_fingerprint(candidate.classes)
    candidate_eval, force, timing = candidate.evaluation, rules.force, rules.timing
    if not candidate.eligible:
        return _record(c, model_name, cand, Decision(False, "not eligible: only completed trials take part",
                                                     outcome="ineligible", n=len(candidate_eval.ids)))
    try:
        champ, unreadable = current_champion(model_name, client=c), False
    except ChampionUnreadable as e:
        if not force:
            _record(c, model_name, cand, Decision(False, str(e), outcome="refused-unreadable"))
            raise
        log.warning("%s Forced: moving @%s without a lease.", e, ALIAS)
        champ, unreadable = None, True
    with _guard(f"read {model_name} v{cand}"):
        own = c.get_model_version(model_name, cand).tags.get(CLASSES_TAG)
    if own and own != fp:
        raise ClassMismatch(f"{model_name} v{cand} was registered with other classes than the ones passed to the gate.")
    if not own:
        tag_version(model_name, cand, candidate.classes, client=c)
    if unreadable:
        _set_alias(c, model_name, cand)
        return _record(c, model_name, cand, Decision(True, "--force-promote: champion unreadable, not compared",
                                                     outcome="forced", n=len(candidate_eval.ids)))
    for _ in range(rules.max_rounds):
        if champ is not None and champ != cand:
            _check_classes(c, model_name, cand, champ, fp, force)
        try:
            d = _gate(model_name, candidate, champ, evaluate_champion, rules, costs_of)
        except ChampionUnreadable as e:
            _record(c, model_name, cand, Decision(False, str(e), outcome="refused-unreadable", champion_version=champ))
            raise
        if not d.promote or d.outcome == "already-champion":
            return _record(c, model_name, cand, d)
        with lease(model_name, timing, client=c):
            now = current_champion(model_name, client=c)
            if now == champ or d.outcome == "forced":
                _set_alias(c, model_name, cand)
                time.sleep(timing.settle_s)
                now = current_champion(model_name, client=c)
                if now == cand:
                    return _record(c, model_name, cand, d)
        log.info("@%s of %s moved from v%s to v%s during this promotion: comparing v%s against v%s",
                 ALIAS, model_name, champ, now, cand, now)
        champ = now
    raise RegistryError(f"@{ALIAS} of {model_name!r} kept moving ({rules.max_rounds} rounds): other promotions are running; retry.")
