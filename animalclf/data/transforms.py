"""Image preprocessing shared by training, evaluation and serving: any PIL image to upright RGB,
the weights' own eval transform, and the training augmentation."""

from __future__ import annotations

import random
from typing import Callable

from PIL import Image, ImageEnhance, ImageOps
from torchvision import transforms as T

from animalclf.models.build import Preprocess

__all__ = ["to_rgb", "autocontrast", "eval_transform", "train_transform", "QuarterTurn", "Brightness"]


def to_rgb(im: Image.Image) -> Image.Image:
    """Upright RGB from any mode: EXIF rotation, grayscale, 16-bit, palette, RGBA, CMYK."""
    im = ImageOps.exif_transpose(im)
    if im.mode.startswith("I"):  # 16/32-bit grayscale: scale to 8 bits rather than clip
        im = im.convert("I")
        scale = 255.0 / 65535.0 if im.getextrema()[1] > 255 else 1.0
        im = im.point(lambda v: v * scale).convert("L")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        bg = Image.new("RGB", im.size, (255, 255, 255))
        bg.paste(im, mask=im.getchannel("A"))
        return bg
    return im.convert("RGB")


def autocontrast(im: Image.Image) -> Image.Image:
    """Each colour channel stretched to the full 0-255 range, ignoring its darkest and brightest 1%:
    a photo taken in the dark (or a darkened copy) looks like a normal one to the model."""
    return ImageOps.autocontrast(im, cutoff=1)


_INTERP = {"bicubic": T.InterpolationMode.BICUBIC, "bilinear": T.InterpolationMode.BILINEAR}


def eval_transform(p: Preprocess) -> Callable:
    """(Autocontrast,) resize, centre-crop, to tensor, normalise: the weights' own eval preprocessing."""
    return T.Compose([
        *([autocontrast] if p.autocontrast else []),
        T.Resize(p.resize_size, interpolation=_INTERP[p.interpolation], antialias=True),
        T.CenterCrop(p.crop_size),
        T.ToTensor(),
        T.Normalize(p.mean, p.std),
    ])


_TURNS = (None, Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270)


class QuarterTurn:
    """Turn a PIL image by a random multiple of 90 degrees (each equally likely)."""

    def __call__(self, im: Image.Image) -> Image.Image:
        turn = random.choice(_TURNS)
        return im if turn is None else im.transpose(turn)


class Brightness:
    """Scale a PIL image's brightness by a random factor in ``[low, high]`` (0.3-1.7: from a photo
    taken at dusk to an overexposed one)."""

    def __init__(self, low: float = 0.3, high: float = 1.7):
        self.low, self.high = low, high

    def __call__(self, im: Image.Image) -> Image.Image:
        return ImageEnhance.Brightness(im).enhance(random.uniform(self.low, self.high))


def train_transform(p: Preprocess, augment: str = "standard") -> Callable:
    """(Autocontrast,) random resized crop, horizontal flip and mild colour jitter, then the eval
    normalisation. ``augment="invariant"`` first turns the image by a random quarter turn and
    changes its brightness (x0.3-1.7), before the autocontrast: what the rotation pool and the
    autocontrast make a model invariant to, for a student to learn from its data."""
    if augment not in ("standard", "invariant"):
        raise ValueError(f"unknown augment {augment!r}")
    return T.Compose([
        *([QuarterTurn(), Brightness()] if augment == "invariant" else []),
        *([autocontrast] if p.autocontrast else []),
        T.RandomResizedCrop(p.crop_size, scale=(0.5, 1.0), interpolation=_INTERP[p.interpolation], antialias=True),
        T.RandomHorizontalFlip(),
        T.ColorJitter(0.2, 0.2, 0.2),
        T.ToTensor(),
        T.Normalize(p.mean, p.std),
    ])
