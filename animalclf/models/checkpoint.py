"""Self-describing checkpoints: a directory that loads without Ray.

::

    model.pt         the model's state dict (unwrapped, CPU)
    train_state.pt   optimizer state, epoch, history, early-stopping state (for resume)
    animalclf.json   arch, classes, preprocessing, unfreeze, dropout, metrics, resolved config;
                     "members": K for an ensemble (model.pt then holds ``members.<i>.`` weights)
    fold<i>/         a cross-validation checkpoint's other fold models (fold 0 is the root)
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from animalclf.errors import UserError
from animalclf.models.build import Ensemble, build_model

__all__ = ["META_FILE", "MEMBERS", "ray_checkpoints", "save_checkpoint", "read_meta", "load_model", "load_train_state", "unwrap", "fold_dir"]

META_FILE = "animalclf.json"
MEMBERS = "members"  # meta key: how many models an Ensemble checkpoint holds
MODEL_FILE = "model.pt"
STATE_FILE = "train_state.pt"


def fold_dir(root: str | Path, fold: int) -> Path:
    """Where fold ``fold``'s weights live in a cross-validation checkpoint: the root for fold 0 (so
    a checkpoint without CV is unchanged), ``fold<i>/`` for the others."""
    return Path(root) if fold == 0 else Path(root) / f"fold{fold}"


def ray_checkpoints(run_dir: str | Path) -> list[Path]:
    """A local Ray Train run's checkpoint directories, oldest first (Ray names them by time; files
    such as ``checkpoint_manager_snapshot.json`` are not checkpoints)."""
    return sorted(p for p in Path(run_dir).glob("checkpoint_*") if (p / META_FILE).is_file())


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DDP (or the model itself)."""
    return getattr(model, "module", model)


def save_checkpoint(
    directory: str | Path,
    model: nn.Module,
    meta: dict[str, Any],
    train_state: Optional[dict[str, Any]] = None,
) -> Path:
    """Write a checkpoint into ``directory`` (created); files appear whole or not at all."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}
    _atomic(d / MODEL_FILE, lambda p: torch.save(state, p))
    if train_state is not None:
        _atomic(d / STATE_FILE, lambda p: torch.save(train_state, p))
    _atomic(d / META_FILE, lambda p: Path(p).write_text(json.dumps(meta, indent=2, default=str)))
    return d


def _atomic(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_meta(directory: str | Path) -> dict[str, Any]:
    """The checkpoint's JSON description; a clear error when ``directory`` is not a checkpoint."""
    p = Path(directory) / META_FILE
    if not p.is_file():
        raise UserError(f"{str(directory)!r} is not an animalclf checkpoint (no {META_FILE}): pass a checkpoint directory.")
    return json.loads(p.read_text())


def load_model(directory: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model (an :class:`~animalclf.models.build.Ensemble` when the meta names ``members``) from a
    checkpoint, without any download, in eval mode, with its meta."""
    meta = read_meta(directory)

    def one() -> nn.Module:
        return build_model(meta["arch"], len(meta["classes"]), meta["unfreeze"], weights="none", dropout=meta.get("dropout", 0.2),
                           rotation_pool=bool(meta.get("rotation_pool", False)))

    model = Ensemble([one() for _ in range(int(meta[MEMBERS]))]) if meta.get(MEMBERS) else one()
    model.load_state_dict(torch.load(Path(directory) / MODEL_FILE, map_location="cpu", weights_only=True))
    return model.to(device).eval(), meta


def _numpy_scalars() -> list:
    """NumPy scalar types a metric history may hold (``np.float64`` is a ``float``): data, no code."""
    import numpy as np

    core = np._core if hasattr(np, "_core") else np.core
    return [core.multiarray.scalar, np.dtype,
            *(type(np.dtype(t)) for t in (np.float64, np.float32, np.float16, np.int64, np.int32, np.bool_))]


def load_train_state(directory: str | Path) -> Optional[dict[str, Any]]:
    """Optimizer/epoch state for resuming, or ``None`` for an export-only checkpoint; loaded with
    ``weights_only=True`` (tensors, numbers, strings, NumPy scalars: nothing is executed)."""
    p = Path(directory) / STATE_FILE
    if not p.is_file():
        return None
    with torch.serialization.safe_globals(_numpy_scalars()):
        return torch.load(p, map_location="cpu", weights_only=True)
