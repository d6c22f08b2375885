"""The search space: which ``TrainConfig`` fields a trial can vary, parsed from ``--space`` items and
a YAML ``space:`` mapping into Ray Tune distributions, each range checked once, here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import yaml

from animalclf.errors import UserError
from animalclf.models.archs import arch_spec, check_unfreeze

__all__ = ["ParamSpec", "SEARCHABLE", "default_space", "parse_space"]

# name -> kind; what a trial can vary of TrainConfig
SEARCHABLE = {"lr": "loguniform", "weight_decay": "loguniform", "unfreeze": "int", "batch_size": "choice",
              "label_smoothing": "uniform", "dropout": "uniform", "kd_weight": "uniform", "kd_temperature": "uniform"}


@dataclass(frozen=True)
class ParamSpec:
    """One search dimension: a range (``low``..``high``) or a list of ``values``."""

    kind: str
    low: Optional[float] = None
    high: Optional[float] = None
    values: tuple = ()

    def to_tune(self):
        from ray import tune

        if self.kind == "loguniform":
            return tune.loguniform(self.low, self.high)
        if self.kind == "uniform":
            return tune.uniform(self.low, self.high)
        if self.kind == "int":
            return tune.randint(int(self.low), int(self.high) + 1)  # high inclusive
        return tune.choice(list(self.values))

    def describe(self) -> str:
        return f"{self.kind}{list(self.values)}" if self.kind == "choice" else f"{self.kind}[{self.low}, {self.high}]"


def default_space(arch: str) -> dict[str, ParamSpec]:
    """Learning rate (log-uniform) and unfreeze depth over the whole range the model defines."""
    return {"lr": ParamSpec("loguniform", 1e-4, 1e-2), "unfreeze": ParamSpec("int", 0, arch_spec(arch).layers)}


def _spec(name: str, value: Any, arch: str) -> ParamSpec:
    if name not in SEARCHABLE:
        raise UserError(f"Unknown search parameter {name!r}: choose from {', '.join(SEARCHABLE)}.")
    kind = SEARCHABLE[name]
    if isinstance(value, str) and ":" in value:
        lo, hi = value.split(":", 1)
        value = {"low": lo, "high": hi}
    if isinstance(value, str):
        value = [v for v in value.split(",") if v]
    if isinstance(value, Mapping):
        try:
            low, high = float(value["low"]), float(value["high"])
        except (KeyError, ValueError):
            raise UserError(f"Search range for {name!r} must be LOW:HIGH numbers, got {value!r}.") from None
        if not low < high and not (kind == "int" and low == high):
            raise UserError(f"Search range for {name!r} is empty or inverted ({low}:{high}): give LOW < HIGH.")
        if kind == "loguniform" and low <= 0:
            raise UserError(f"Search range for {name!r} is log-uniform: LOW must be > 0, got {low}.")
        if name == "unfreeze":
            check_unfreeze(arch, low, high)
        if kind == "choice":
            raise UserError(f"{name!r} takes a list of values (e.g. {name}=32,64), not a range.")
        return ParamSpec(kind, low, high)
    values = tuple(value) if isinstance(value, (list, tuple)) else (value,)
    if not values:
        raise UserError(f"Search values for {name!r} are empty: give at least one.")
    cast = int if name in ("batch_size", "unfreeze") else float
    try:
        values = tuple(cast(v) for v in values)
    except ValueError:
        raise UserError(f"Search values for {name!r} must be numbers, got {list(values)}.") from None
    return ParamSpec("choice", values=values)


def parse_space(items: Sequence[str] = (), file: Optional[str] = None, arch: str = "efficientnet_b0") -> dict[str, ParamSpec]:
    """Default space, updated from a YAML file (``space: {lr: "1e-4:1e-2", batch_size: [32, 64]}``)
    and then from ``NAME=LOW:HIGH`` / ``NAME=V1,V2`` items. ``NAME=`` (empty) removes a dimension."""
    space = default_space(arch)
    raw: dict[str, Any] = {}
    if file:
        p = Path(file)
        if not p.is_file():
            raise UserError(f"Search space file {file!r} does not exist.")
        loaded = yaml.safe_load(p.read_text()) or {}
        raw.update((loaded.get("space") if isinstance(loaded, dict) and "space" in loaded else loaded) or {})
    for item in items:
        if "=" not in item:
            raise UserError(f"--space {item!r}: write NAME=LOW:HIGH or NAME=V1,V2 (e.g. lr=1e-4:1e-2).")
        k, v = item.split("=", 1)
        raw[k.strip()] = v.strip()
    for k, v in raw.items():
        if v in ("", None):
            if k not in SEARCHABLE:
                raise UserError(f"Unknown search parameter {k!r}: choose from {', '.join(SEARCHABLE)}.")
            space.pop(k, None)
        else:
            space[k] = _spec(k, v, arch)
    if not space:
        raise UserError("The search space is empty: keep at least one of " + ", ".join(SEARCHABLE) + ".")
    return space
