"""animalclf.data.decode: untrusted bytes to RGB on every bad input and every valid mode, within
limits that hold before any pixel is decoded (bytes, pixels, side, decode budget per format)."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from PIL import Image

from animalclf.data.decode import MAX_BYTES, MAX_DECODE_BYTES, MAX_SIDE, decode_cost, decode_image
from animalclf.errors import InvalidImage


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def photo(w: int = 60, h: int = 40) -> Image.Image:
    """Left half red, right half blue: orientation is visible in the pixels."""
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:, : w // 2] = (220, 20, 20)
    arr[:, w // 2:] = (20, 20, 220)
    return Image.fromarray(arr)


def _truncated() -> bytes:
    data = encode(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)), "JPEG")
    return data[: len(data) // 2]


def _corrupt() -> bytes:
    data = bytearray(encode(Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), np.uint8)), "JPEG"))
    data[200:] = bytes(len(data) - 200)
    return bytes(data)


@pytest.mark.parametrize("name,data,status,word", [
    ("empty", b"", 400, "empty"),
    ("text", b"definitely not a picture", 415, "not an image"),
    ("pdf", b"%PDF-1.4\n1 0 obj<<>>endobj\n", 415, "not an image"),
    ("ppm", encode(photo(), "PPM"), 415, "unsupported"),
    ("ico", encode(photo(32, 32), "ICO"), 415, "unsupported"),
    ("truncated", _truncated(), 400, "truncated"),
    ("corrupt", _corrupt(), 400, "corrupt"),
    ("too_many_pixels", encode(Image.new("1", (8000, 6000)), "PNG"), 413, "pixels"),
])
def test_bad_inputs(name, data, status, word):
    with pytest.raises(InvalidImage) as e:
        decode_image(data)
    assert e.value.status == status, (name, str(e.value))
    assert word in str(e.value).lower()


def test_too_many_bytes_and_custom_limits():
    with pytest.raises(InvalidImage) as e:
        decode_image(b"\xff\xd8" + bytes(MAX_BYTES))
    assert e.value.status == 413 and str(MAX_BYTES) in str(e.value)
    small = encode(photo(), "PNG")
    with pytest.raises(InvalidImage) as e:
        decode_image(small, max_bytes=len(small) - 1)
    assert e.value.status == 413
    with pytest.raises(InvalidImage) as e:
        decode_image(small, max_pixels=60 * 40 - 1)
    assert e.value.status == 413 and "2400 pixels" in str(e.value)


@pytest.mark.parametrize("mode,fmt", [
    ("RGB", "JPEG"), ("L", "PNG"), ("RGBA", "PNG"), ("P", "GIF"), ("P", "PNG"), ("CMYK", "JPEG"),
    ("RGB", "WEBP"), ("RGB", "BMP"), ("RGB", "TIFF"),
])
def test_valid_modes_become_rgb(mode, fmt):
    im = decode_image(encode(photo().convert(mode), fmt))
    assert im.mode == "RGB" and im.size == (60, 40)
    left, right = np.asarray(im)[20, 5].astype(int), np.asarray(im)[20, 55].astype(int)
    if mode != "L":
        assert left[0] > left[2] + 80 and right[2] > right[0] + 80, (left, right)  # colours survive


def test_16_bit_grayscale_is_scaled_not_clipped():
    arr = np.full((40, 60), 40000, np.uint16)
    im = decode_image(encode(Image.fromarray(arr), "PNG"))
    assert im.mode == "RGB" and 150 < np.asarray(im)[0, 0, 0] < 160  # 40000/65535*255 ≈ 156


def test_transparent_rgba_goes_on_white():
    im = decode_image(encode(Image.new("RGBA", (10, 10), (0, 0, 0, 0)), "PNG"))
    assert tuple(np.asarray(im)[5, 5]) == (255, 255, 255)


def test_exif_rotation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was turned: display rotated 90° clockwise
    im = decode_image(encode(photo(), "JPEG", exif=exif))
    assert im.size == (40, 60)
    top, bottom = np.asarray(im)[5, 20].astype(int), np.asarray(im)[55, 20].astype(int)
    assert top[0] > top[2] + 80 and bottom[2] > bottom[0] + 80  # red (left) is now on top


def test_longest_side_is_bounded_before_decoding():
    with pytest.raises(InvalidImage) as e:
        decode_image(encode(Image.new("1", (MAX_SIDE + 1, 1)), "PNG"))
    assert e.value.status == 413 and "longest side" in str(e.value)


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"])
def test_animated_images_use_the_first_frame(fmt):
    frames = [Image.new("RGB", (50, 40), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    buf = io.BytesIO()
    frames[0].save(buf, fmt, save_all=True, append_images=frames[1:], duration=50, loop=0,
                   **({"lossless": True} if fmt == "WEBP" else {}))
    assert Image.open(io.BytesIO(buf.getvalue())).n_frames == 3
    im = decode_image(buf.getvalue())
    assert im.mode == "RGB" and im.size == (50, 40)
    r, g, b = im.getpixel((5, 5))
    assert r > 200 and g < 50 and b < 50


def test_16_bit_tiff_is_scaled():
    arr = np.full((40, 60), 40000, np.uint16)
    data = encode(Image.fromarray(arr), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    im = decode_image(data)
    assert im.mode == "RGB" and im.size == (60, 40) and 150 < np.asarray(im)[0, 0, 0] < 160


# --- every upload's decode cost is bounded before it is decoded ---------------------------------
def rle8_bmp(width: int, height: int) -> bytes:
    """An 8-bit RLE BMP whose header says ``width`` x ``height``: a few hundred bytes."""
    import struct

    palette = b"".join(bytes((i, 255 - i, i // 2, 0)) for i in range(256))  # colours: mode P
    data = bytes((255, 7)) * 4 + b"\x00\x01"  # a few runs, then end of bitmap
    offset = 14 + 40 + len(palette)
    header = b"BM" + struct.pack("<IHHI", offset + len(data), 0, 0, offset)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(data), 2835, 2835, 256, 0)
    return header + info + palette + data


def bombs() -> dict[str, bytes]:
    """Small files that would take well over the decode budget at full size, one per format."""
    out = {
        "png": encode(Image.new("RGB", (6000, 6000)), "PNG"),
        "png16": encode(Image.new("I;16", (6000, 6000)), "PNG"),
        "webp": encode(Image.new("RGB", (6000, 6000)), "WEBP", lossless=True),
        "tiff": encode(Image.new("RGB", (6000, 6000)), "TIFF", compression="tiff_deflate"),
        "gif": encode(Image.new("P", (6000, 6000)), "GIF"),
        "bmp": rle8_bmp(6000, 6000),
    }
    buf = io.BytesIO()
    frames = [Image.new("P", (4000, 4000), i) for i in range(20)]
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    out["gif_frames"] = buf.getvalue()
    return out


@pytest.mark.parametrize("name", ["png", "png16", "webp", "tiff", "gif", "bmp", "gif_frames"])
def test_decompression_bombs_are_refused_from_their_header(name):
    data = bombs()[name]
    assert len(data) < 2_000_000
    assert Image.open(io.BytesIO(data)).size[0] * Image.open(io.BytesIO(data)).size[1] < 40_000_000  # under the pixel limit
    t0 = time.perf_counter()
    with pytest.raises(InvalidImage) as e:
        decode_image(data, min_side=224)
    assert time.perf_counter() - t0 < 0.05, "decoded before refusing"
    assert e.value.status == 413 and "MiB to decode" in str(e.value) and "64 MiB" in str(e.value)


def test_decode_cost_counts_wide_modes_and_decoder_buffers():
    def cost(mode, fmt="PNG", size=(100, 100)):
        return decode_cost(Image.open(io.BytesIO(encode(Image.new(mode, size), fmt))))

    assert cost("RGB") == 100 * 100 * 4  # Pillow stores RGB in 4 bytes
    assert cost("L") == 100 * 100
    assert cost("I;16") == 100 * 100 * (2 + 4)  # and the 32-bit copy that can be reduced
    assert cost("P", "GIF") == 100 * 100 * (1 + 4)
    assert cost("RGB", "WEBP") == 100 * 100 * (4 + 4)  # libwebp's own buffer, then Pillow's
    jpeg = Image.open(io.BytesIO(encode(Image.new("RGB", (4000, 3000)), "JPEG")))
    jpeg.draft(None, (256, 256))
    assert decode_cost(jpeg) == 500 * 375 * 4  # a JPEG counts at the scale it is decoded


def test_16_bit_png_at_the_budget_decodes_right_sized():
    arr = (np.arange(3200 * 3200, dtype=np.uint32) % 65536).astype(np.uint16).reshape(3200, 3200)
    data = encode(Image.fromarray(arr), "PNG")
    im0 = Image.open(io.BytesIO(data))
    assert im0.mode == "I;16" and decode_cost(im0) <= MAX_DECODE_BYTES < decode_cost(im0) * 1.2
    seen = []
    im = decode_image(data, min_side=224, on_cost=seen.append)
    assert seen == [decode_cost(im0)]
    assert im.mode == "RGB" and 448 <= min(im.size) < 896, im.size  # box-reduced before any 8-bit copy
    with pytest.raises(InvalidImage, match="MiB to decode"):
        decode_image(data, min_side=224, max_decode_bytes=decode_cost(im0) - 1)


def test_a_large_jpeg_fits_the_budget_through_draft_mode():
    big = encode(photo(6000, 4000), "JPEG", quality=80)  # 24 MP: 92 MiB at full size
    assert decode_image(big, min_side=224).size[0] < 6000
    with pytest.raises(InvalidImage, match="MiB to decode"):
        decode_image(big)  # without a target size nothing is reduced: over the budget
