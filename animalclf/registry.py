"""The model registry: which version is the champion, and may a candidate replace it.

Train, tune, serve and the UI ask this module; nobody else spells the alias, the ref or the rule.
Loading and evaluating models stays with the caller (``promote`` takes a callable), so this module
imports no torch; the statistics are in :mod:`animalclf.evidence`.

Compare-and-set. MLflow has no "move the alias only if it still points to X", so ``promote``:

1. reads the champion X, evaluates it through the caller and runs the gate, holding nothing;
2. takes a short lease: a registered-model tag ``{owner, expires}``, written, then read back after
   ``settle_s``; whoever reads back its own owner holds it (verify-after-write), others wait;
3. under the lease re-reads the alias: still X, it moves the alias, waits ``settle_s`` and reads it
   back; moved to Y (before or after our write), it goes back to 1 against Y, at most
   ``max_rounds`` times; 4. releases the lease (deletes the tag if it is still ours).

This works the same on the sqlite store and on a remote server (plain tag and alias calls). What is
left: two writers hold the lease together only if one read "free" and wrote its tag more than
``settle_s`` after the other wrote (a stall between two calls longer than ``settle_s``); expiry is
judged by each writer's clock, so clocks skewed by more than the TTL, or a holder stalled past it,
break exclusion; a writer that ignores the lease (the MLflow UI, another tool) is caught only by the
read-back in step 3, and only if it wrote within ``settle_s`` of us.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import re
import socket
import tempfile
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator, Optional, Sequence

from animalclf.errors import UserError
from animalclf.evidence import DEFAULT_CONFIDENCE, DEFAULT_MIN_IMPROVEMENT, Decision, Evaluation, compare

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

__all__ = [
    "ALIAS", "CLASSES_TAG", "GATE_TAG", "LEASE_TAG", "RegistryError", "ChampionUnreadable", "ClassMismatch",
    "champion_ref", "version_ref", "is_model_ref", "current_champion", "classes_fingerprint", "tag_version",
    "version_classes", "Lease", "lease", "promote",
]

ALIAS = "champion"
MODEL_REF_PREFIXES = ("models:/", "runs:/")
CLASSES_TAG = "animalclf.classes"      # on a model version: its class list (JSON, or sha256 if long)
GATE_TAG = "animalclf.gate"            # prefix of the gate's tags on a candidate version
LEASE_TAG = "animalclf.promotion.lease"  # on the registered model, while a promotion writes
_MAX_TAG = 5000


class RegistryError(UserError):
    """The registry could not be read or written, or refused the promotion."""


class ChampionUnreadable(RegistryError):
    """The current champion (its alias or its model) could not be read."""


class ClassMismatch(RegistryError):
    """The candidate's class list differs from the champion's under the same model name."""


def champion_ref(model_name: str) -> str:
    return f"models:/{model_name}@{ALIAS}"


def version_ref(model_name: str, version: str | int) -> str:
    return f"models:/{model_name}/{version}"


def is_model_ref(s: str) -> bool:
    """An MLflow model URI (``models:/...`` or ``runs:/...``) rather than a checkpoint directory."""
    return str(s).startswith(MODEL_REF_PREFIXES)


def _client(client: Optional["MlflowClient"]) -> "MlflowClient":
    from mlflow import MlflowClient

    return client or MlflowClient()


def _cause(e: BaseException) -> str:
    text = str(e)
    m = re.search(r"error code (\d{3})", text) or re.search(r"too many (\d{3}) error", text)
    if m:
        return f"HTTP {m.group(1)}"
    if "Connection refused" in text or "NewConnectionError" in text:
        return "connection refused"
    if "timed out" in text.lower() or "timeout" in type(e).__name__.lower():
        return "timed out"
    first = text.strip().splitlines()[0][:160] if text.strip() else ""
    return f"{getattr(e, 'error_code', None) or type(e).__name__}{': ' + first if first else ''}"


@contextlib.contextmanager
def _guard(what: str) -> Iterator[None]:
    """Any registry failure inside becomes one line naming what failed."""
    try:
        yield
    except UserError:
        raise
    except Exception as e:
        raise RegistryError(f"MLflow registry: could not {what} ({_cause(e)}); check MLFLOW_TRACKING_URI "
                            f"and credentials, then retry.") from None


def current_champion(model_name: str, *, client: Optional["MlflowClient"] = None) -> Optional[str]:
    """The version ``@champion`` points to; ``None`` when the model or the alias does not exist.

    Anything else (network, 401, 5xx) raises :class:`ChampionUnreadable`: "cannot read" never means
    "no champion"."""
    try:
        aliases = _client(client).get_registered_model(model_name).aliases or {}
    except Exception as e:
        if getattr(e, "error_code", None) == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise ChampionUnreadable(f"Cannot read the champion of registered model {model_name!r} ({_cause(e)}): fix "
                                 f"MLFLOW_TRACKING_URI or credentials, or pass --force-promote to promote without "
                                 f"comparing.") from None
    version = aliases.get(ALIAS)
    return None if version is None else str(version)


def classes_fingerprint(classes: Sequence[str]) -> str:
    """What the class tag holds: the JSON list, or ``sha256:<hex>`` when it would not fit a tag."""
    text = json.dumps([str(c) for c in classes], separators=(",", ":"))
    return text if len(text) <= _MAX_TAG else "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def tag_version(model_name: str, version: str | int, classes: Sequence[str], tags: Optional[dict] = None, *,
                client: Optional["MlflowClient"] = None) -> None:
    """Tag a newly registered version with its class list (and ``tags``); call right after registering."""
    c = _client(client)
    with _guard(f"tag {model_name} v{version}"):
        c.set_model_version_tag(model_name, str(version), CLASSES_TAG, classes_fingerprint(classes))
        for k, v in (tags or {}).items():
            c.set_model_version_tag(model_name, str(version), k, str(v)[:_MAX_TAG])


def version_classes(model_name: str, version: str | int, *, client: Optional["MlflowClient"] = None) -> Optional[str]:
    """A version's class fingerprint: its tag, else (versions registered before the tag) its meta file."""
    import mlflow

    c = _client(client)
    with _guard(f"read {model_name} v{version}"):
        tag = c.get_model_version(model_name, str(version)).tags.get(CLASSES_TAG)
        if tag:
            return tag
        base = c.get_model_version_download_uri(model_name, str(version)).rstrip("/")
    from animalclf.checkpoint import META_FILE  # legacy path only: checkpoint imports torch

    for sub in (f"extra_files/{META_FILE}", META_FILE):
        with tempfile.TemporaryDirectory() as tmp:
            try:
                path = mlflow.artifacts.download_artifacts(artifact_uri=f"{base}/{sub}", dst_path=tmp)
                with open(path) as f:
                    return classes_fingerprint(json.load(f)["classes"])
            except Exception:  # noqa: BLE001 - not there; try the next place
                continue
    return None


@dataclass(frozen=True)
class Lease:
    """Timings of the promotion lease (seconds)."""

    ttl_s: float = 60.0     # a crashed holder blocks others at most this long
    settle_s: float = 0.5   # wait between a write and its read-back
    wait_s: float = 120.0   # give up waiting for another holder after this long


@contextlib.contextmanager
def lease(model_name: str, timing: Lease = Lease(), *, client: Optional["MlflowClient"] = None) -> Iterator[str]:
    """Hold the model's promotion lease (see the module docstring); yields the owner token."""
    c, me, failures = _client(client), uuid.uuid4().hex, 0
    deadline = time.monotonic() + timing.wait_s

    def holder() -> dict:
        with _guard(f"read the promotion lease of {model_name!r}"):
            raw = c.get_registered_model(model_name).tags.get(LEASE_TAG)
        try:
            return json.loads(raw) if raw else {}
        except ValueError:
            return {}

    while True:
        held = holder()
        if not held or float(held.get("expires", 0)) < time.time():
            if held:
                log.warning("Taking over the expired promotion lease of %r from %s", model_name, held.get("by"))
            value = {"owner": me, "by": f"{socket.gethostname()}:{os.getpid()}", "expires": time.time() + timing.ttl_s}
            try:
                c.set_registered_model_tag(model_name, LEASE_TAG, json.dumps(value))
            except Exception as e:  # sqlite: two first writes collide on the tag's primary key
                failures += 1
                if failures > 5:
                    raise RegistryError(f"MLflow registry: could not write the promotion lease of {model_name!r} "
                                        f"({_cause(e)}); check MLFLOW_TRACKING_URI and credentials, then retry.") from None
            time.sleep(timing.settle_s)
            held = holder()
            if held.get("owner") == me:
                break
        if time.monotonic() > deadline:
            raise RegistryError(f"Another promotion into {model_name!r} holds the lease ({held.get('by')}); retry later, "
                                f"or delete the registered-model tag {LEASE_TAG} if that job is gone.")
        time.sleep(random.uniform(0.05, 0.3))
    try:
        yield me
    finally:
        try:
            if holder().get("owner") == me:
                c.delete_registered_model_tag(model_name, LEASE_TAG)
        except Exception as e:  # noqa: BLE001 - it expires by itself
            log.warning("Could not release the promotion lease of %r (%s); it expires in %.0f s",
                        model_name, _cause(e), timing.ttl_s)


def _record(client: "MlflowClient", model_name: str, version: str, d: Decision) -> Decision:
    """Log the decision and tag the candidate version with it (a failed tag is a warning, not a failure)."""
    log.info("Gate for %s v%s against champion v%s: %s (%s)", model_name, version, d.champion_version, d.outcome, d.reason)
    tags = {"decision": d.outcome, "reason": d.reason[:_MAX_TAG], "champion_version": d.champion_version,
            "delta": d.delta, "p_value": d.p_value, "n": d.n or None, "candidate_acc": d.candidate_acc,
            "champion_acc": d.champion_acc, "ci": None if d.ci_low is None else f"[{d.ci_low:.4f}, {d.ci_high:.4f}]",
            "min_improvement": d.extra.get("min_improvement"), "confidence": d.extra.get("confidence")}
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


def _gate(model_name: str, cand: str, champ: Optional[str], candidate_eval: Evaluation,
          evaluate_champion: Callable[[str], Evaluation], force: bool, min_improvement: float,
          confidence: float) -> Decision:
    base = dict(candidate_acc=candidate_eval.accuracy, n=len(candidate_eval.ids), champion_version=champ,
                extra={"min_improvement": min_improvement, "confidence": confidence})
    if champ is None:
        return Decision(True, "no champion yet", outcome="first", **base)
    if champ == cand:
        return Decision(True, "already the champion", outcome="already-champion", **base)
    if force:
        return Decision(True, "--force-promote: not compared", outcome="forced", **base)
    try:
        champion_eval = evaluate_champion(champ)
    except Exception as e:  # the champion's model is part of "the champion cannot be read"
        log.debug("Evaluating champion v%s failed", champ, exc_info=True)
        raise ChampionUnreadable(f"Cannot evaluate champion v{champ} of {model_name!r} ({_cause(e)}): fix its "
                                 f"artifacts or pass --force-promote to promote without comparing.") from None
    d = compare(candidate_eval, champion_eval, min_improvement=min_improvement, confidence=confidence)
    d.champion_version = champ
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


def promote(model_name: str, candidate_version: str | int, candidate_eval: Evaluation,
            evaluate_champion: Callable[[str], Evaluation], *, classes: Sequence[str], eligible: bool = True,
            force: bool = False, min_improvement: float = DEFAULT_MIN_IMPROVEMENT, confidence: float = DEFAULT_CONFIDENCE,
            client: Optional["MlflowClient"] = None, max_rounds: int = 5, timing: Lease = Lease()) -> Decision:
    """Move ``@champion`` to ``candidate_version`` only if the evidence gate says so (compare-and-set).

    ``candidate_eval``: the candidate's predictions on the gate images; ``evaluate_champion(version)``
    must return the same for that version on the same images. ``eligible=False`` (a trial that did
    not complete) never promotes. ``force`` promotes without comparing, also when the champion cannot
    be read. Raises :class:`ChampionUnreadable` (unless ``force``), :class:`ClassMismatch`, or
    :class:`RegistryError` when the registry cannot be written."""
    c, cand, fp = _client(client), str(candidate_version), classes_fingerprint(classes)
    if not eligible:
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
        tag_version(model_name, cand, classes, client=c)
    if unreadable:
        _set_alias(c, model_name, cand)
        return _record(c, model_name, cand, Decision(True, "--force-promote: champion unreadable, not compared",
                                                     outcome="forced", n=len(candidate_eval.ids)))
    for _ in range(max_rounds):
        if champ is not None and champ != cand:
            _check_classes(c, model_name, cand, champ, fp, force)
        try:
            d = _gate(model_name, cand, champ, candidate_eval, evaluate_champion, force, min_improvement, confidence)
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
    raise RegistryError(f"@{ALIAS} of {model_name!r} kept moving ({max_rounds} rounds): other promotions are running; retry.")
