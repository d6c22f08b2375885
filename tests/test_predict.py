"""decode_image on every bad input and every valid mode; Predictor top-k on a real Lite0 model."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from animalclf.checkpoint import save_checkpoint
from animalclf.config import TrainConfig
from animalclf.errors import InvalidImage
from animalclf.model import build_model
from animalclf.predict import (MAX_ASPECT, MAX_BYTES, MAX_DECODE_BYTES, MAX_SIDE, Predictor, bound_aspect, decode_cost,
                               decode_image)
from animalclf.worker import checkpoint_meta

CLASSES = ["Bear", "Bird", "Cat", "Cow", "Deer", "Dog", "Dolphin", "Elephant", "Giraffe", "Horse",
           "Kangaroo", "Lion", "Panda", "Tiger", "Zebra"]


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


@pytest.fixture(scope="module")
def predictor(tmp_path_factory) -> Predictor:
    torch.manual_seed(0)
    cfg = TrainConfig(arch="efficientnet_lite0", weights="imagenet", unfreeze=0, image_size=64)
    d = save_checkpoint(tmp_path_factory.mktemp("pred") / "ck", build_model(cfg.arch, 15, 0, "imagenet"),
                        checkpoint_meta(cfg, CLASSES, {"val_accuracy": 0.5}, 1))
    return Predictor.load(str(d))


def test_predictor_top_k(predictor):
    ims = [photo(), photo(80, 80).convert("L").convert("RGB")]
    assert predictor.tensor(ims[0]).shape == (3, 64, 64)
    out = predictor.predict(ims, top_k=3)
    assert len(out) == 2 and all(len(o) == 3 for o in out)
    probs = predictor.predict_tensors(torch.stack([predictor.tensor(im) for im in ims]))
    assert probs.shape == (2, 15) and torch.allclose(probs.sum(1), torch.ones(2), atol=1e-5)
    order = probs[0].argsort(descending=True)[:3].tolist()
    assert [o["class"] for o in out[0]] == [CLASSES[i] for i in order]
    assert [o["probability"] for o in out[0]] == sorted((o["probability"] for o in out[0]), reverse=True)
    assert len(predictor.top_k(probs[0], 99)) == 15  # k clipped to the number of classes
    assert predictor.predict([]) == []
    meta = predictor.metadata()
    assert meta["classes"] == CLASSES and meta["arch"] == "efficientnet_lite0" and meta["preprocess"]["crop_size"] == 64
    assert predictor.version.startswith("checkpoint:")


def test_load_bad_ref_is_a_user_error(tmp_path):
    from animalclf.errors import UserError

    with pytest.raises(UserError, match="not an animalclf checkpoint"):
        Predictor.load(str(tmp_path))


# --- hostile but valid uploads stay cheap ------------------------------------------------------
def test_extreme_aspect_ratio_keeps_the_centre_and_is_fast(predictor):
    for size in [(16000, 1), (1, 16000), (3000, 20)]:
        data = encode(Image.new("RGB", size, (10, 200, 30)), "PNG")
        t0 = time.perf_counter()
        im = predictor.decode(data)
        x = predictor.tensor(im)
        assert time.perf_counter() - t0 < 0.1, size
        assert max(im.size) <= MAX_ASPECT * min(im.size) and x.shape == (3, 64, 64), (size, im.size)
    wide = photo(900, 100)  # red left, blue right: the centre column is where they meet
    assert bound_aspect(wide).size == (400, 100)
    assert predictor.tensor(wide).shape == (3, 64, 64)


def test_aspect_crop_barely_changes_the_prediction(predictor):
    rng = np.random.default_rng(3)
    # a smooth scene (like a photo at this scale); the crop moves the resampling grid by < 1 pixel
    im = Image.fromarray(rng.integers(0, 255, (8, 120, 3), np.uint8)).resize((1800, 120), Image.BICUBIC)
    full = predictor.transform(im)  # the transform on the whole strip
    assert (predictor.tensor(im) - full).abs().mean() < 0.05  # of a range of 2: about 1%
    p = predictor.predict_tensors(torch.stack([full, predictor.tensor(im)]))
    assert p[0].argmax() == p[1].argmax() and torch.allclose(p[0], p[1], atol=0.01)


def test_longest_side_is_bounded_before_decoding():
    with pytest.raises(InvalidImage) as e:
        decode_image(encode(Image.new("1", (MAX_SIDE + 1, 1)), "PNG"))
    assert e.value.status == 413 and "longest side" in str(e.value)


def test_large_jpeg_is_decoded_at_reduced_size(predictor):
    big = encode(photo(4000, 3000), "JPEG", quality=85)
    im = predictor.decode(big)
    need = predictor.preprocess.resize_size
    assert need <= min(im.size) < 2 * need * 2 and im.size[0] > im.size[1], im.size  # draft: 1/8 scale
    assert decode_image(big).size == (4000, 3000)  # without a target: full size
    left, right = np.asarray(im)[im.size[1] // 2, 2].astype(int), np.asarray(im)[im.size[1] // 2, -3].astype(int)
    assert left[0] > left[2] + 80 and right[2] > right[0] + 80


def test_large_png_is_box_reduced(predictor):
    im = predictor.decode(encode(photo(3000, 2000), "PNG"))
    need = predictor.preprocess.resize_size
    assert 2 * need <= min(im.size) < 4 * need, im.size


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


# --- registry versions load without unpickling ---------------------------------------------------
class _Payload:
    """Unpickling this creates ``path``: proof that a pickle was executed."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def register_version(name: str, classes=CLASSES, seed: int = 0) -> tuple[str, Predictor]:
    """Log a Lite0 (random weights) to the current MLflow store as a new version of ``name``."""
    import tempfile

    from animalclf.checkpoint import META_FILE
    from animalclf.tracking import Tracker

    torch.manual_seed(seed)
    cfg = TrainConfig(arch="efficientnet_lite0", weights="none", unfreeze=0, image_size=64)
    model = build_model(cfg.arch, len(classes), 0, "none").eval()
    d = save_checkpoint(Path(tempfile.mkdtemp()) / "ck", model, checkpoint_meta(cfg, classes, {"val_accuracy": 0.5}, 1))
    tracker = Tracker.start("pickles", "run")
    version = tracker.log_model(model, d / META_FILE, torch.zeros(1, 3, 64, 64), name)
    tracker.end()
    return version, Predictor.from_checkpoint(d)


def test_registry_versions_load_without_unpickling(project, tmp_path, monkeypatch):
    import mlflow
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    version, local = register_version("pwn")
    client = MlflowClient()
    client.set_registered_model_alias("pwn", "champion", version)
    model_dir = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/pwn/{version}"))
    stored = Path(client.get_model_version_download_uri("pwn", version).removeprefix("file://"))
    pickles = list(stored.rglob("*.pth")) + list(stored.rglob("*.pkl"))
    assert pickles and (stored / "extra_files" / "model.pt").is_file(), sorted(p.name for p in stored.rglob("*"))
    marker = tmp_path / "pwned"
    for p in pickles:  # the attacker overwrites the pickled model in the artifact store
        torch.save(_Payload(str(marker)), p)

    x = torch.stack([local.tensor(photo(90, 70))])
    for ref in ("models:/pwn@champion", f"models:/pwn/{version}"):
        p = Predictor.load(ref)
        assert p.version == f"pwn/{version}" and p.classes == CLASSES
        assert torch.allclose(p.predict_tensors(x), local.predict_tensors(x), atol=1e-5)
    assert not marker.exists(), "loading through Predictor ran the planted pickle"
    assert (model_dir / "MLmodel").is_file()  # still an MLflow model for MLflow users ...
    with pytest.raises(Exception):
        mlflow.pytorch.load_model(f"models:/pwn/{version}")  # ... and the payload is live:
    assert marker.exists()  # MLflow's own loader runs it, so the check above could fail


def test_unknown_alias_is_a_user_error(project, tmp_path, monkeypatch):
    import mlflow

    from animalclf.errors import UserError

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    with pytest.raises(UserError, match="Could not resolve models:/nothing@champion"):
        Predictor.load("models:/nothing@champion")


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
