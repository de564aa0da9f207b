"""Classifier backbones by name: CheXNet's DenseNet-121 (torchvision), the offline mini stand-in, or any timm model.

``classifier.arch`` names the backbone, a name of the registry BACKBONES (``register``) or of timm:
  - ``densenet121``: torchvision's DenseNet-121, CheXNet's (the thesis's classifier);
  - ``densenet-mini``: the offline CPU stand-in (MINI);
  - a preset of Schaudt et al. 2023 (seed 001): ``resnet50``, ``efficientnet-b0``, ``efficientnet-b1``,
    ``convnext-t``, ``convnext-s``, and ``densenet121-timm`` for timm's DenseNet-121;
  - any other timm model name (``timm.list_models()``), e.g. ``resnet18`` or ``convnext_nano``.
``classifier.weights``: ``none`` builds random weights offline; ``imagenet`` loads the pre-trained weights
(torchvision's for densenet121, timm's default tag otherwise) from the local cache or by download; a path
loads that file (a state dict or a timm/safetensors checkpoint; a head of another size is left out).
Grayscale images are replicated to 3 ImageNet-normalised channels (lib.evaluate.classifier.CheXNet), so ImageNet
weights apply unchanged. An unknown name is an error that lists the closest timm names.

Nothing here imports torch or timm at module level: check_config, registered with lib.core.config.checks,
judges the names when a parameter file loads, cheaply; timm is imported only for a name that is not built in.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..core import config

# The offline stand-in: the same DenseNet family (dense blocks, transitions, BN-ReLU-conv), small
# enough to train in seconds on 2 CPU cores at 32 px. Real runs use torchvision's densenet121.
MINI = dict(growth_rate=12, block_config=(2, 2, 2, 2), num_init_features=16, bn_size=2)
# Short names of the related studies' backbones -> timm model names (Schaudt et al. 2023, Table 7).
PRESETS = {"resnet50": "resnet50", "efficientnet-b0": "efficientnet_b0", "efficientnet-b1": "efficientnet_b1",
           "convnext-t": "convnext_tiny", "convnext-s": "convnext_small", "densenet121-timm": "densenet121"}
WEIGHTS = ("none", "imagenet")


class BackboneError(ValueError):
    """A backbone name or weights setting that cannot be built."""


@dataclass(frozen=True)
class Backbone:
    """``build(weights, n_classes)``: a torch module from 3-channel ImageNet-normalised images to n_classes logits
    (weights: 'none', 'imagenet' or a file's path); ``features(net, x)``: the pooled features its last layer
    reads (fidelity.extractor classifier); ``head(net)``: that last layer. ``pretrained``: whether weights other
    than 'none' exist for it (checked when a parameter file loads)."""
    build: Callable
    features: Callable
    head: Callable
    pretrained: bool = True


BACKBONES: dict[str, Backbone] = {}


def register(name: str, features: Callable, head: Callable, pretrained: bool = True):
    """Decorator: ``build(weights, n_classes)`` becomes the backbone ``name`` (classifier.arch)."""
    def add(build: Callable):
        if name in BACKBONES:
            raise ValueError(f"classifier.arch {name!r} is registered twice.")
        BACKBONES[name] = Backbone(build, features, head, pretrained)
        return build
    return add


def backbone(arch: str) -> Backbone:
    """The registered backbone ``arch``, else timm's model of that name (an unknown name is a BackboneError)."""
    return BACKBONES[arch] if arch in BACKBONES else timm_backbone(timm_name(arch))


def _timm_names() -> list[str]:
    import timm

    return timm.list_models()


def timm_name(arch: str) -> str | None:
    """The timm model an arch builds (None for a registered backbone that is not a preset); an unknown name is
    an error that lists the closest timm names and the presets."""
    if arch in BACKBONES and arch not in PRESETS:
        return None
    name = PRESETS.get(arch, arch.removeprefix("timm/"))
    names = _timm_names()
    if name in names:
        return name
    own = [b for b in BACKBONES if b not in PRESETS]
    close = list(dict.fromkeys(difflib.get_close_matches(name, names + list(PRESETS) + own, n=8,
                                                         cutoff=0.5)))[:6]
    raise BackboneError(
        f"unknown classifier.arch {arch!r}: not built in ({', '.join(own)}), not a preset "
        f"({', '.join(PRESETS)}) and not a timm model. "
        + (f"Closest names: {', '.join(close)}." if close else "See timm.list_models() for the names."))


def check(arch: str, weights: str) -> None:
    """Load-time check of classifier.arch and classifier.weights (no model is built)."""
    spec = backbone(arch)
    if weights not in WEIGHTS and not Path(weights).expanduser().is_file():
        from ..core import paths

        if not paths.resolve(weights).is_file():
            raise BackboneError(f"classifier.weights = {weights!r} is neither 'none', 'imagenet' nor an existing "
                                "weights file (a relative path is resolved from the project root).")
    if not spec.pretrained and weights != "none":
        raise BackboneError(f"classifier.weights = {weights!r} needs a pre-trained backbone; the {arch} "
                            "stand-in has no pre-trained weights (use densenet121, a preset or a timm name).")


@config.checks.register("classifier")
def check_config(cfg) -> None:
    """classifier.arch and classifier.weights when a parameter file loads (a ParamError, as the schema's own)."""
    try:
        check(cfg.classifier.arch, cfg.classifier.weights)
    except BackboneError as exc:
        raise config.ParamError(str(exc)) from None


def _weights_file(weights: str) -> Path | None:
    if weights in WEIGHTS:
        return None
    from ..core import paths

    p = Path(weights).expanduser()
    return p if p.is_file() else paths.resolve(weights)


def build_torchvision(weights: str):
    """torchvision's DenseNet-121 (ImageNet weights on request, or a state dict from a file); its head is replaced
    by the caller."""
    import torch
    import torchvision

    w = torchvision.models.DenseNet121_Weights.IMAGENET1K_V1 if weights == "imagenet" else None
    try:
        net = torchvision.models.densenet121(weights=w)
    except Exception as exc:  # offline, or a broken download
        raise RuntimeError("could not fetch torchvision's ImageNet DenseNet-121 weights "
                           f"({exc}); set classifier.weights: none to train from scratch offline.") from exc
    f = _weights_file(weights)
    if f is not None:
        state = torch.load(f, map_location="cpu")
        state = {k: v for k, v in state.get("state_dict", state).items() if not k.startswith("classifier.")}
        missing, _ = net.load_state_dict(state, strict=False)
        if [k for k in missing if not k.startswith("classifier.")]:
            raise BackboneError(f"{f} is not a torchvision DenseNet-121 state dict (missing {missing[:3]} ...).")
    return net


def densenet_features(net, x):
    """DenseNet's features, ReLU and global average pooling: what its classifier reads."""
    from torch import nn

    return nn.functional.adaptive_avg_pool2d(nn.functional.relu(net.features(x)), 1).flatten(1)


def _with_head(net, n_classes: int):
    from torch import nn

    net.classifier = nn.Linear(net.classifier.in_features, n_classes)
    return net


@register("densenet121", features=densenet_features, head=lambda net: net.classifier)
def densenet121(weights: str, n_classes: int):
    return _with_head(build_torchvision(weights), n_classes)


@register("densenet-mini", features=densenet_features, head=lambda net: net.classifier, pretrained=False)
def densenet_mini(weights: str, n_classes: int):
    import torchvision

    return _with_head(torchvision.models.DenseNet(**MINI), n_classes)


def build_timm(name: str, weights: str, n_classes: int):
    """timm's model ``name`` with an n_classes head; pretrained weights from the cache/download or from a file."""
    import timm

    f = _weights_file(weights)
    kw = {"num_classes": n_classes}
    if weights == "none":
        return timm.create_model(name, pretrained=False, **kw)
    if f is not None:
        kw["pretrained_cfg_overlay"] = {"file": str(f)}
    try:
        return timm.create_model(name, pretrained=True, **kw)
    except Exception as exc:  # offline without a cached copy, or an unreadable file
        where = f"from {f}" if f is not None else "from the Hugging Face cache or by download"
        raise RuntimeError(f"could not load pre-trained weights for timm model {name!r} {where} ({exc}); "
                           "set classifier.weights: none to train from scratch offline, or give a weights "
                           "file's path.") from exc


def timm_backbone(name: str) -> Backbone:
    """timm's model ``name`` (a name timm.list_models() gives) as a backbone."""
    return Backbone(lambda weights, n_classes: build_timm(name, weights, n_classes),
                    lambda net, x: net.forward_head(net.forward_features(x), pre_logits=True),
                    lambda net: net.get_classifier())


for _short, _name in PRESETS.items():      # the related studies' backbones, by their short names
    BACKBONES[_short] = timm_backbone(_name)
