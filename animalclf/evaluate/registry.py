"""The model registry: names and refs, which version is the champion, a version's class list,
and the lease that makes promotion a compare-and-set (:mod:`animalclf.evaluate.promotion` decides).

Train, tune, serve and the UI ask this module; nobody else spells the alias or the ref. No torch.

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
from typing import TYPE_CHECKING, Iterator, Optional, Sequence

from animalclf.errors import UserError

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

__all__ = [
    "ALIAS", "CLASSES_TAG", "GATE_TAG", "LEASE_TAG", "RegistryError", "ChampionUnreadable", "ClassMismatch",
    "champion_ref", "version_ref", "is_model_ref", "current_champion", "classes_fingerprint", "tag_version",
    "version_classes", "Lease", "lease",
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
    from animalclf.models.checkpoint import META_FILE  # legacy path only: these import torch
    from animalclf.models.predict import WEIGHTS_PATHS

    for sub in (*(f"{d}/{META_FILE}" for d in WEIGHTS_PATHS), META_FILE):
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
