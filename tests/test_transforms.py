"""Image preprocessing (animalclf.data.transforms): any PIL mode to upright RGB, and autocontrast in
the eval and training transforms."""

import io

import pytest
from PIL import Image

from animalclf.data.transforms import eval_transform, to_rgb, train_transform
from animalclf.models.build import preprocess_for


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "I;16", "LA", "1"])
def test_to_rgb_handles_modes(mode):
    im = Image.new("RGB", (10, 6), (120, 60, 30)).convert(mode) if mode != "I;16" else Image.new("I;16", (10, 6), 40000)
    out = to_rgb(im)
    assert out.mode == "RGB" and out.size == (10, 6)
    if mode == "I;16":
        assert 150 < out.getpixel((0, 0))[0] < 160  # 40000/65535*255 ~ 155, not clipped to 255


def test_to_rgb_applies_exif_rotation():
    im = Image.new("RGB", (20, 10))
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 CW on display
    buf = io.BytesIO()
    im.save(buf, "JPEG", exif=exif.tobytes())
    assert to_rgb(Image.open(buf)).size == (10, 20)


def _darkened(im, factor=0.25):
    return im.point(lambda v: int(v * factor))


def test_autocontrast_makes_a_darkened_photo_look_like_the_original(shared_data):
    photo = to_rgb(Image.open(sorted((shared_data / "Tiger").iterdir())[0]))
    plain, stretched = preprocess_for("efficientnet_lite0"), preprocess_for("efficientnet_lite0", autocontrast=True)
    assert stretched.autocontrast and not plain.autocontrast and stretched.crop_size == plain.crop_size

    def gap(p):
        t = eval_transform(p)
        return (t(photo) - t(_darkened(photo))).abs().mean().item()

    assert gap(stretched) < gap(plain) / 4, (gap(stretched), gap(plain))
    assert train_transform(stretched)(_darkened(photo)).shape == (3, 224, 224)


def test_invariant_augmentation_turns_and_darkens_before_autocontrast():
    import random

    import torch

    from animalclf.data.transforms import Brightness, QuarterTurn

    im = Image.new("RGB", (40, 20), (120, 120, 120))
    random.seed(0)
    sizes = {QuarterTurn()(im).size for _ in range(40)}
    assert sizes == {(40, 20), (20, 40)}  # upright and sideways both drawn
    levels = {Brightness()(im).getpixel((0, 0))[0] for _ in range(40)}
    assert min(levels) < 60 and max(levels) > 180  # from dusk to overexposed
    pre = preprocess_for("efficientnet_lite0", 32, autocontrast=True)
    random.seed(1)
    torch.manual_seed(1)
    x = train_transform(pre, "invariant")(Image.new("RGB", (64, 48), (90, 60, 30)))
    assert x.shape == (3, 32, 32)
    with pytest.raises(ValueError):
        train_transform(pre, "wild")
