"""Inference: one :class:`Predictor` used by Serve, the benchmarks and tests, with the exact
evaluation preprocessing stored in the checkpoint; plus safe decoding of untrusted image bytes.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from PIL import Image

from animalclf.data.decode import MAX_BYTES, MAX_DECODE_BYTES, MAX_PIXELS, bound_aspect, decode_image
from animalclf.data.transforms import eval_transform
from animalclf.errors import UserError
from animalclf.evaluate.registry import is_model_ref
from animalclf.models.build import Preprocess
from animalclf.models.checkpoint import MEMBERS, META_FILE, MODEL_FILE, load_model

# Where a registered version keeps model.pt + animalclf.json: the image model's artifacts
# (animalclf.models.pyfunc), or extra_files/ for versions logged with mlflow.pytorch before it.
WEIGHTS_PATHS = ("artifacts/animalclf", "extra_files")

log = logging.getLogger(__name__)

__all__ = ["Predictor", "class_probabilities", "pin_version"]

def pin_version(ref: str) -> str:
    """``models:/NAME@ALIAS`` -> ``models:/NAME/N`` (the version the alias names now); a
    ``models:/NAME/N`` as it is. The one place an alias is resolved."""
    from mlflow import MlflowClient

    name, sep, alias = ref[len("models:/"):].partition("@")
    if not sep:
        return ref
    try:
        return f"models:/{name}/{MlflowClient().get_model_version_by_alias(name, alias).version}"
    except Exception as e:
        raise UserError(f"Could not resolve {ref} in the MLflow registry ({type(e).__name__}: {e}); check the "
                        "model name, the alias and MLFLOW_TRACKING_URI.") from None


def class_probabilities(model: torch.nn.Module, x: torch.Tensor, tta_flip: bool = False) -> torch.Tensor:
    """Softmax of ``model`` on the NCHW batch ``x``; with ``tta_flip`` (horizontal-flip test-time
    augmentation) the mean of that and the softmax on the mirrored batch."""
    probs = model(x).float().softmax(dim=1)
    if tta_flip:
        probs = (probs + model(x.flip(-1)).float().softmax(dim=1)) / 2
    return probs


class FlipAverage(torch.nn.Module):
    """``model`` with flip TTA, as log-probabilities that evaluation code can treat as logits (their
    softmax is exactly what the Predictor serves with ``tta_flip``)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return class_probabilities(self.model, x, tta_flip=True).clamp_min(1e-12).log()


class Predictor:
    """A loaded model plus its classes and preprocessing; thread-compatible, no Ray needed.
    ``animalclf.json``'s ``tta_flip`` (default off) averages each image with its mirror image."""

    def __init__(self, model: torch.nn.Module, meta: dict[str, Any], version: str, device: str = "cpu"):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval().to(memory_format=torch.channels_last)
        self.meta = meta
        self.classes: list[str] = list(meta["classes"])
        self.preprocess = Preprocess.from_dict(meta["preprocess"])
        self.transform = eval_transform(self.preprocess)
        self.version = version
        self.tta_flip = bool(meta.get("tta_flip", False))

    @classmethod
    def from_checkpoint(cls, directory: str | Path, device: str = "cpu") -> "Predictor":
        model, meta = load_model(directory, device)
        return cls(model, meta, version=f"checkpoint:{Path(directory).resolve()}", device=device)

    @classmethod
    def from_mlflow(cls, uri: str, device: str = "cpu") -> "Predictor":
        """Load ``models:/NAME@alias``, ``models:/NAME/VERSION`` or ``runs:/ID/model`` without
        unpickling anything: only the model's weights folder (:data:`WEIGHTS_PATHS`: the state dict,
        read with ``weights_only=True``, and ``animalclf.json``) is downloaded. An alias is resolved once, here,
        and :attr:`version` names the version that was loaded."""
        import mlflow

        if uri.startswith("models:/"):
            pinned = pin_version(uri)
            name, number = pinned[len("models:/"):].rsplit("/", 1)
            from mlflow import MlflowClient

            base, version = MlflowClient().get_model_version_download_uri(name, number), f"{name}/{number}"
        else:
            base, version = uri, uri
        local, last = None, None
        for sub in WEIGHTS_PATHS:
            try:
                local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"{base.rstrip('/')}/{sub}"))
            except Exception as e:  # noqa: BLE001 - not at this place: try the next
                last = e
                continue
            if (local / MODEL_FILE).is_file() and (local / META_FILE).is_file():
                break
            local = None
        if local is None:
            why = f" ({type(last).__name__}: {last})" if last else ""
            raise UserError(f"Could not fetch the weights of {uri} ({version}) from MLflow{why}: no "
                            f"{' or '.join(WEIGHTS_PATHS)} with {MODEL_FILE} + {META_FILE} (pickled models are not "
                            "loaded); check the name/alias and MLFLOW_TRACKING_URI, or register it again.") from None
        model, meta = load_model(local, device)
        return cls(model, meta, version=version, device=device)

    @classmethod
    def load(cls, ref: str, device: str = "cpu") -> "Predictor":
        """A checkpoint directory or an MLflow model URI."""
        if is_model_ref(ref):
            return cls.from_mlflow(ref, device)
        return cls.from_checkpoint(ref, device)

    def decode(self, data: bytes, max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS,
               max_decode_bytes: int = MAX_DECODE_BYTES, on_cost: Optional[Callable[[int], None]] = None) -> Image.Image:
        """Untrusted bytes to an RGB image decoded only as large as this model's preprocessing
        needs (see :func:`decode_image`); what Serve does with every upload."""
        return decode_image(data, max_bytes, max_pixels, min_side=self.preprocess.resize_size,
                            max_decode_bytes=max_decode_bytes, on_cost=on_cost)

    def tensor(self, image: Image.Image) -> torch.Tensor:
        """Preprocess one RGB image to a CHW tensor (extreme aspect ratios keep their centre)."""
        return self.transform(bound_aspect(image))

    @torch.no_grad()
    def predict_tensors(self, batch: torch.Tensor) -> torch.Tensor:
        """Class probabilities for a preprocessed NCHW batch."""
        x = batch.to(self.device).contiguous(memory_format=torch.channels_last)
        return class_probabilities(self.model, x, self.tta_flip).cpu()

    def predict(self, images: Sequence[Image.Image], top_k: int = 5) -> list[list[dict[str, Any]]]:
        """Top-k ``{"class", "probability"}`` per image."""
        if not images:
            return []
        probs = self.predict_tensors(torch.stack([self.tensor(im) for im in images]))
        return [self.top_k(p, top_k) for p in probs]

    def top_k(self, probs: torch.Tensor, k: int) -> list[dict[str, Any]]:
        values, idx = probs.topk(min(k, len(self.classes)))
        return [{"class": self.classes[i], "probability": round(float(v), 6)} for v, i in zip(values, idx)]

    def metadata(self) -> dict[str, Any]:
        return {
            "classes": self.classes, "arch": self.meta["arch"], "model_version": self.version,
            "metrics": self.meta.get("metrics", {}), "preprocess": self.preprocess.to_dict(),
            "unfreeze": self.meta.get("unfreeze"), "epoch": self.meta.get("epoch"), "tta_flip": self.tta_flip,
            "rotation_pool": bool(self.meta.get("rotation_pool", False)), MEMBERS: int(self.meta.get(MEMBERS) or 1),
        }
