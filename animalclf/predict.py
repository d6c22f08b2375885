"""Inference: one :class:`Predictor` used by Serve, the benchmarks and tests, with the exact
evaluation preprocessing stored in the checkpoint; plus safe decoding of untrusted image bytes.
"""

from __future__ import annotations

import io
import logging
import warnings
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from PIL import Image, UnidentifiedImageError

from animalclf.checkpoint import MEMBERS, META_FILE, MODEL_FILE, load_model
from animalclf.transforms import eval_transform, to_rgb
from animalclf.errors import InvalidImage, UserError
from animalclf.model import Preprocess
from animalclf.registry import is_model_ref

EXTRA_FILES = "extra_files"  # where mlflow.pytorch.log_model(extra_files=...) puts them

log = logging.getLogger(__name__)

__all__ = ["Predictor", "class_probabilities", "pin_version", "decode_image", "bound_aspect", "decode_cost", "MAX_BYTES", "MAX_PIXELS", "MAX_SIDE",
           "MAX_ASPECT", "MAX_DECODE_BYTES"]

MAX_BYTES = 10 * 1024 * 1024  # 10 MiB per image
MAX_PIXELS = 40_000_000  # well under Pillow's ~179 MP bomb error; a 8000x5000 photo fits
MAX_SIDE = 20_000  # longest side accepted; a 200 MP phone sensor is 16320 px wide
MAX_ASPECT = 4.0  # wider/taller images keep only their central part (the model sees the centre)
MAX_DECODE_BYTES = 64 << 20  # memory one image may take to decode: a 16 MP PNG, a JPEG of any size (draft)
SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF", "MPO")


def bound_aspect(im: Image.Image, max_aspect: float = MAX_ASPECT) -> Image.Image:
    """The central part of ``im`` whose long side is at most ``max_aspect`` times the short side.

    The eval transform scales the *short* side and keeps only a centre crop, so predictions
    barely change (a wide margin around the crop is kept), while a 16000x1 strip no longer becomes a 4096000x256 tensor."""
    w, h = im.size
    short = max(1, min(w, h))
    keep = max(1, int(short * max_aspect))
    if w > keep:
        left = (w - keep) // 2
        return im.crop((left, 0, left + keep, h))
    if h > keep:
        top = (h - keep) // 2
        return im.crop((0, top, w, top + keep))
    return im


def _shrink(im: Image.Image, min_side: int) -> Image.Image:
    """Box-reduce by an integer factor keeping the short side >= 2 x ``min_side`` (like Pillow's
    ``thumbnail`` with ``reducing_gap=2``); unchanged for modes ``reduce`` does not support."""
    factor = min(im.size) // (2 * min_side)
    if factor < 2:
        return im
    try:
        return im.reduce(factor)
    except ValueError:
        return im


# Bytes per pixel Pillow holds for a mode (RGB is stored in 4), and the full-size copy a mode that
# ``reduce`` cannot shrink needs first (palette -> RGB(A), 1-bit -> L, 16-bit -> 32-bit).
_STORED_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}
_WIDEN = {"P": "RGBA", "1": "L", "I;16": "I", "I;16L": "I", "I;16B": "I", "I;16N": "I"}
# Formats whose decoder fills a buffer of its own (RGBA) that Pillow then copies.
_DECODER_BUFFER = {"WEBP": 4}


def decode_cost(im: Image.Image) -> int:
    """Bytes it takes to decode ``im`` (opened, not loaded) at its size now and bring it to a mode
    that can be reduced: what a decode budget is checked against before any pixel is decoded."""
    w, h = im.size
    per_pixel = _STORED_BYTES.get(im.mode, 4) + _DECODER_BUFFER.get(im.format or "", 0)
    if im.mode in _WIDEN:
        per_pixel += _STORED_BYTES.get(_WIDEN[im.mode], 4)
    return w * h * per_pixel


def _reducible(im: Image.Image) -> Image.Image:
    """``im`` in a mode ``reduce`` accepts (the one full-size copy :func:`decode_cost` counts)."""
    if im.mode not in _WIDEN:
        return im
    if im.mode == "P":
        return im.convert("RGBA" if "transparency" in im.info else "RGB")
    return im.convert(_WIDEN[im.mode])


def decode_image(data: bytes, max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS,
                 *, min_side: Optional[int] = None, max_decode_bytes: int = MAX_DECODE_BYTES,
                 on_cost: Optional[Callable[[int], None]] = None) -> Image.Image:
    """Bytes from a client to an upright RGB image, or :class:`InvalidImage` with an HTTP status.

    Limits hold before any pixel is decoded: bytes, pixels, longest side, and the memory decoding
    takes (``max_decode_bytes``: pixels x bytes per pixel at the size decoded, :func:`decode_cost`).
    With ``min_side`` (the short side the model's preprocessing needs) a large JPEG is decoded at
    1/2, 1/4 or 1/8 scale (Pillow's draft mode, short side still >= ``min_side``), and the budget is
    checked at that scale; other formats decode at full size, so a PNG, WebP, TIFF, GIF or BMP over
    the budget is refused (413), and what is decoded is box-reduced (short side still >= 2 x
    ``min_side``) before any conversion. Extreme aspect ratios keep their centre
    (:func:`bound_aspect`). Animated GIF/WebP/PNG: the first frame. ``on_cost`` is told the
    decode cost before decoding (a server releases memory after large ones).
    """
    if not data:
        raise InvalidImage("empty body: send the image bytes (multipart field 'file' or the raw body)", 400)
    if len(data) > max_bytes:
        raise InvalidImage(f"image is {len(data)} bytes; the limit is {max_bytes} bytes", 413)
    try:
        im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise InvalidImage("not an image: send a JPEG, PNG, WebP, BMP, GIF or TIFF file", 415) from None
    except Exception as e:
        raise InvalidImage(f"unreadable image ({e})", 400) from None
    if im.format not in SUPPORTED_FORMATS:
        raise InvalidImage(f"unsupported image format {im.format}: send JPEG, PNG, WebP, BMP, GIF or TIFF", 415)
    w, h = im.size
    if w * h > max_pixels:
        raise InvalidImage(f"image is {w}x{h} = {w * h} pixels; the limit is {max_pixels} pixels", 413)
    if max(w, h) > MAX_SIDE:
        raise InvalidImage(f"image is {w}x{h} pixels; the longest side may be at most {MAX_SIDE} pixels", 413)
    try:
        if min_side and im.format in ("JPEG", "MPO"):
            im.draft(None, (min_side, min_side))  # DCT scaling: never below min_side
    except Exception as e:
        raise InvalidImage(f"corrupt or truncated image ({e})", 400) from None
    cost = decode_cost(im)
    if on_cost is not None:
        on_cost(cost)
    if cost > max_decode_bytes:
        mib = 1 << 20
        raise InvalidImage(f"a {w}x{h} {im.format} ({im.mode}) takes {cost / mib:.0f} MiB to decode; the limit is "
                           f"{max_decode_bytes / mib:.0f} MiB per image: send it smaller (a JPEG is decoded at "
                           f"reduced size)", 413)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im.load()
        im = bound_aspect(im)
        if min_side:
            im = _shrink(_reducible(im), min_side)
        im = to_rgb(im)
        return _shrink(im, min_side) if min_side else im
    except Exception as e:  # truncated data, bad Huffman tables, ...
        raise InvalidImage(f"corrupt or truncated image ({e})", 400) from None


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
        unpickling anything: only the model's ``extra_files/`` (the state dict, read with
        ``weights_only=True``, and ``animalclf.json``) are downloaded; the pickled MLflow model
        beside them, there for MLflow users, is never fetched. An alias is resolved once, here,
        and :attr:`version` names the version that was loaded."""
        import mlflow

        if uri.startswith("models:/"):
            pinned = pin_version(uri)
            name, number = pinned[len("models:/"):].rsplit("/", 1)
            from mlflow import MlflowClient

            base, version = MlflowClient().get_model_version_download_uri(name, number), f"{name}/{number}"
        else:
            base, version = uri, uri
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"{base.rstrip('/')}/{EXTRA_FILES}"))
        except Exception as e:
            raise UserError(f"Could not fetch the weights of {uri} from MLflow ({type(e).__name__}: {e}); check the "
                            "name/alias and MLFLOW_TRACKING_URI.") from None
        if not (local / MODEL_FILE).is_file() or not (local / META_FILE).is_file():
            raise UserError(f"Model {uri} ({version}) has no {EXTRA_FILES}/{MODEL_FILE} + {META_FILE}: it was logged "
                            "before animalclf stored a state dict, and pickles are not loaded; register it again.")
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
