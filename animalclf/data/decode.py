"""Untrusted image bytes to an upright RGB image within limits that hold before any pixel is
decoded: bytes, pixels, the longest side and the memory decoding takes; large images are decoded
(JPEG) or box-reduced (the rest) only as large as the model needs."""

from __future__ import annotations

import io
import warnings
from typing import Callable, Optional

from PIL import Image, UnidentifiedImageError

from animalclf.data.transforms import to_rgb
from animalclf.errors import InvalidImage

__all__ = ["decode_image", "bound_aspect", "decode_cost", "MAX_BYTES", "MAX_PIXELS", "MAX_SIDE", "MAX_ASPECT",
           "MAX_DECODE_BYTES", "SUPPORTED_FORMATS"]

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
