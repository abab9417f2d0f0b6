"""Architectures by name: ``build("wrn-28-10", num_classes=10)`` -> a Flax linen module.

Names are patterns; the digits are free where the architecture allows:

=============================  =====================================  ===========================
name                           module                                 RobustBench / PyTorch class
=============================  =====================================  ===========================
``wrn-{depth}-{width}``        :class:`~jaxadv.zoo.WideResNet`        ``WideResNet``
``dm-wrn-{depth}-{width}``     :class:`~jaxadv.zoo.DMWideResNet`      ``DMWideResNet`` (Swish)
``preact-resnet-{18,34}``      :class:`~jaxadv.zoo.PreActResNet`      ``PreActResNet``
``dm-preact-resnet-{18,34}``   :class:`~jaxadv.zoo.DMPreActResNet`    ``DMPreActResNet`` (Swish)
``cifar-resnet-{depth}``       :class:`~jaxadv.zoo.CifarResNet`       ``ResNet`` (``ResNet18()``)
``resnet-{depth}``             :class:`~jaxadv.zoo.ResNet`            ``torchvision.models.resnet*``
``wide-resnet-{50,101}-2``     :class:`~jaxadv.zoo.ResNet`            ``torchvision.models.wide_resnet*_2``
``vit-{ti,s,b,l}-{patch}``     :class:`~jaxadv.zoo.VisionTransformer` ``timm`` ``vit_*_patch{patch}_*``
=============================  =====================================  ===========================

ResNet depths are 18, 34, 50, 101, 152. The CIFAR models take 32x32 inputs;
the ImageNet ones 224x224 (a ViT's ``image_size`` is configurable).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, NamedTuple

import flax.linen as nn

from jaxadv.zoo.resnet import CifarResNet, DMPreActResNet, PreActResNet, ResNet
from jaxadv.zoo.vit import SIZES, VisionTransformer
from jaxadv.zoo.wide_resnet import DMWideResNet, WideResNet

#: The names RobustBench's leaderboards use most (:func:`build` accepts the
#: other depths and widths of each pattern too).
ARCHITECTURES: tuple[str, ...] = (
    "wrn-28-10",
    "wrn-34-10",
    "wrn-34-20",
    "dm-wrn-28-10",
    "dm-wrn-34-20",
    "dm-wrn-70-16",
    "dm-wrn-106-16",
    "preact-resnet-18",
    "dm-preact-resnet-18",
    "cifar-resnet-18",
    "resnet-18",
    "resnet-50",
    "wide-resnet-50-2",
    "vit-s-16",
    "vit-b-16",
)


class Spec(NamedTuple):
    """What :func:`build` and :func:`~jaxadv.zoo.from_torch` need to know about a name.

    Attributes:
      cls: the Flax module class.
      config: its attributes fixed by the name (depth, width...).
      head: the classifier's name (its PyTorch key prefix), read for ``num_classes``.
      num_classes: the default number of classes (10 for CIFAR, 1000 for ImageNet).
      image_size: the input side used to trace the model.
    """

    cls: type[nn.Module]
    config: dict[str, Any]
    head: str
    num_classes: int
    image_size: int


def _vit(size: str, patch: str) -> Spec:
    dim, depth, heads = SIZES[size]
    config = {"dim": dim, "depth": depth, "num_heads": heads, "patch_size": int(patch)}
    return Spec(VisionTransformer, config, "head", 1000, 224)


_PATTERNS: tuple[tuple[str, Callable[..., Spec]], ...] = (
    (
        r"wrn-(\d+)-(\d+)",
        lambda d, w: Spec(WideResNet, {"depth": int(d), "width": int(w)}, "fc", 10, 32),
    ),
    (
        r"dm-wrn-(\d+)-(\d+)",
        lambda d, w: Spec(DMWideResNet, {"depth": int(d), "width": int(w)}, "logits", 10, 32),
    ),
    (r"preact-resnet-(\d+)", lambda d: Spec(PreActResNet, {"depth": int(d)}, "linear", 10, 32)),
    (r"dm-preact-resnet-(\d+)", lambda d: Spec(DMPreActResNet, {"depth": int(d)}, "logits", 10, 32)),
    (r"cifar-resnet-(\d+)", lambda d: Spec(CifarResNet, {"depth": int(d)}, "linear", 10, 32)),
    (r"resnet-(\d+)", lambda d: Spec(ResNet, {"depth": int(d)}, "fc", 1000, 224)),
    (
        r"wide-resnet-(\d+)-2",
        lambda d: Spec(ResNet, {"depth": int(d), "width_factor": 2}, "fc", 1000, 224),
    ),
    (r"vit-(ti|s|b|l)-(\d+)", _vit),
)


def spec(name: str) -> Spec:
    """Parse an architecture name (see the table above).

    Raises:
      ValueError: for a name that is not a string or matches no pattern.
    """
    if not isinstance(name, str):
        raise ValueError(
            f"the architecture must be a name (a string such as {ARCHITECTURES[0]!r}), got {name!r}; "
            "jaxadv.zoo.ARCHITECTURES lists them"
        )
    for pattern, make in _PATTERNS:
        if m := re.fullmatch(pattern, name):
            return make(*m.groups())
    raise ValueError(
        f"unknown architecture {name!r}; names look like {', '.join(ARCHITECTURES)} "
        "(see jaxadv.zoo.registry for the patterns)"
    )


def _fields(cls: type[nn.Module]) -> set[str]:
    return {f.name for f in dataclasses.fields(cls) if f.name not in ("parent", "name")}


def build(name: str, *, num_classes: int | None = None, remat: bool = False, **config: Any) -> nn.Module:
    """The Flax linen module called ``name``, with fresh (unset) variables.

    ``build("wrn-28-10", num_classes=10)`` is ``WideResNet(depth=28, width=10,
    num_classes=10)``; initialise it with ``module.init(key, x)`` or fill it from
    a PyTorch checkpoint with :func:`~jaxadv.zoo.from_torch`.

    Args:
      name: an architecture name (see :data:`ARCHITECTURES` and the patterns of
        :mod:`jaxadv.zoo.registry`).
      num_classes: logits returned; ``None``: 10 for the CIFAR models, 1000 for
        the ImageNet ones.
      remat: wrap every residual block (transformer block for a ViT) in
        :func:`flax.linen.remat`: its activations are recomputed in the backward
        pass instead of stored, trading one more forward pass for the memory of
        a gradient's activations. The logits, the gradients and the variables
        (names, shapes, a converted checkpoint) are those of ``remat=False``.
      **config: other attributes of the module (``mean``, ``std``,
        ``bn_before_fc``, ``image_size``...), overriding the name's.

    Returns:
      An unbound ``flax.linen.Module`` mapping ``[batch, h, w, 3]`` NHWC inputs
      to ``[batch, num_classes]`` logits.

    Raises:
      ValueError: for an unknown name, or a ``config`` key the module does not have.
    """
    s = spec(name)
    unknown = set(config) - _fields(s.cls)
    if unknown:
        raise ValueError(
            f"{s.cls.__name__} has no attribute {sorted(unknown)}; it takes {sorted(_fields(s.cls))}"
        )
    kwargs = {
        **s.config,
        "num_classes": s.num_classes if num_classes is None else num_classes,
        "remat": remat,
        **config,
    }
    return s.cls(**kwargs)
