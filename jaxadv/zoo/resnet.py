"""Residual networks (He et al., 2016) in the layouts RobustBench's checkpoints use.

* :class:`PreActResNet`: RobustBench's CIFAR ``PreActResNet`` (``resnet.py``),
  e.g. PreAct-ResNet-18 of Wong et al. and Rice et al.
* :class:`DMPreActResNet`: DeepMind's PreAct-ResNet (``dm_wide_resnet.py``):
  Swish, normalisation inside, ``"SAME"``-style strided padding, and a 3x3
  projection shortcut.
* :class:`CifarResNet`: RobustBench's CIFAR ``ResNet`` (``ResNet18()``...): a
  3x3 stem without max pooling.
* :class:`ResNet`: torchvision's ImageNet ResNet (``torchvision.models.resnet50``
  and friends, version 1.5: the stride sits on the 3x3 convolution), which
  RobustBench's ImageNet entries wrap with a normaliser.

All take NHWC inputs (``[batch, 32, 32, 3]`` for the CIFAR models,
``[batch, 224, 224, 3]`` for ImageNet), use batch norm in inference mode, and
return logits ``[batch, num_classes]``.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn

from jaxadv.typing import Array
from jaxadv.zoo.layers import (
    Activation,
    batch_norm,
    block_class,
    cifar_statistics,
    conv,
    global_average,
    normalise,
)

#: Blocks per stage for each depth (BasicBlock up to 34, Bottleneck from 50).
STAGES: dict[int, tuple[int, int, int, int]] = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}


def _stages(depth: int, allowed: Sequence[int]) -> tuple[int, int, int, int]:
    if depth not in allowed:
        raise ValueError(f"unsupported depth {depth}; expected one of {tuple(allowed)}")
    return STAGES[depth]


class _PreActBlock(nn.Module):
    in_planes: int
    planes: int
    stride: int
    out_shortcut: bool

    @nn.compact
    def __call__(self, x: Array) -> Array:
        activated = nn.relu(batch_norm("bn1")(x))
        shortcut = x
        if self.stride != 1 or self.in_planes != self.planes:
            source = activated if self.out_shortcut else x
            shortcut = conv(self.planes, 1, stride=self.stride, name="shortcut.0")(source)
        out = conv(self.planes, 3, stride=self.stride, padding=1, name="conv1")(activated)
        out = conv(self.planes, 3, padding=1, name="conv2")(nn.relu(batch_norm("bn2")(out)))
        return out + shortcut


class PreActResNet(nn.Module):
    """RobustBench's ``PreActResNet(PreActBlock, [2, 2, 2, 2])`` (PreAct-ResNet-18) and its options.

    Attributes:
      depth: 18 or 34.
      num_classes: logits returned.
      bn_before_fc: a final batch norm and ReLU before pooling (``bn_before_fc``).
      out_shortcut: projection shortcuts read the activated input
        (``out_shortcut=True``, or blocks of type ``PreActBlockV2``) instead of the raw one.
      mean: per-channel mean subtracted first (some entries keep it in a
        ``mu`` buffer); ``None`` skips it.
      std: per-channel std divided by next (``sigma``); ``None`` skips it.
      remat: recompute each residual block's activations in the backward pass
        (:func:`flax.linen.remat`) instead of storing them: less memory for
        gradients, one more forward pass of compute. Same variables.
    """

    depth: int = 18
    num_classes: int = 10
    bn_before_fc: bool = False
    out_shortcut: bool = False
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    remat: bool = False

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """``[batch, h, w, 3] -> [batch, num_classes]``."""
        stages = _stages(self.depth, (18, 34))
        x = conv(64, 3, padding=1, name="conv1")(normalise(x, self.mean, self.std))
        in_planes = 64
        block = block_class(_PreActBlock, self.remat)
        for s, (blocks, planes) in enumerate(zip(stages, (64, 128, 256, 512), strict=True)):
            for i in range(blocks):
                stride = 2 if s > 0 and i == 0 else 1
                x = block(in_planes, planes, stride, self.out_shortcut, name=f"layer{s + 1}.{i}")(x)
                in_planes = planes
        if self.bn_before_fc:
            x = nn.relu(batch_norm("bn")(x))
        return nn.Dense(self.num_classes, name="linear")(global_average(x))


class _DMPreActBlock(nn.Module):
    in_planes: int
    planes: int
    stride: int
    activation: Activation

    @nn.compact
    def __call__(self, x: Array) -> Array:
        pad = ((1, 1), (1, 1)) if self.stride == 1 else ((0, 1), (0, 1))
        activated = self.activation(batch_norm("batchnorm_0")(x))
        shortcut = x
        if self.stride != 1 or self.in_planes != self.planes:
            shortcut = conv(self.planes, 3, stride=self.stride, padding=pad, name="shortcut")(x)
        out = conv(self.planes, 3, stride=self.stride, padding=pad, name="conv_2d_1")(activated)
        out = self.activation(batch_norm("batchnorm_1")(out))
        return conv(self.planes, 3, padding=1, name="conv_2d_2")(out) + shortcut


class DMPreActResNet(nn.Module):
    """RobustBench's ``DMPreActResNet(num_classes, depth=18, activation_fn=Swish, mean, std)``.

    Attributes:
      depth: 18 or 34.
      num_classes: logits returned.
      mean: the per-channel mean subtracted inside the model; ``None`` picks
        RobustBench's CIFAR statistics for ``num_classes`` (CIFAR-100's for 100 classes).
      std: the per-channel std divided by; ``None`` as for ``mean``.
      activation: ``nn.swish`` (Swish); ``nn.relu`` for the class's default.
      remat: recompute each block's activations in the backward pass (see
        :class:`PreActResNet`).
    """

    depth: int = 18
    num_classes: int = 10
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    activation: Activation = nn.swish
    remat: bool = False

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """``[batch, h, w, 3] -> [batch, num_classes]``."""
        stages = _stages(self.depth, (18, 34))
        default_mean, default_std = cifar_statistics(self.num_classes)
        mean = default_mean if self.mean is None else self.mean
        std = default_std if self.std is None else self.std
        x = conv(64, 3, padding=1, name="conv_2d")(normalise(x, mean, std))
        in_planes = 64
        block = block_class(_DMPreActBlock, self.remat)
        for s, (blocks, planes) in enumerate(zip(stages, (64, 128, 256, 512), strict=True)):
            for i in range(blocks):
                stride = 2 if s > 0 and i == 0 else 1
                x = block(in_planes, planes, stride, self.activation, name=f"layer_{s}.{i}")(x)
                in_planes = planes
        x = self.activation(batch_norm("batchnorm")(x))
        return nn.Dense(self.num_classes, name="logits")(global_average(x))


class _Block(nn.Module):
    """BasicBlock (``bottleneck=False``) or Bottleneck, post-activation."""

    in_planes: int
    planes: int
    stride: int
    bottleneck: bool
    width: int  # the bottleneck's inner width
    shortcut_name: str  # "shortcut" (RobustBench) or "downsample" (torchvision)

    @nn.compact
    def __call__(self, x: Array) -> Array:
        if self.bottleneck:
            out = nn.relu(batch_norm("bn1")(conv(self.width, 1, name="conv1")(x)))
            out = conv(self.width, 3, stride=self.stride, padding=1, name="conv2")(out)
            out = nn.relu(batch_norm("bn2")(out))
            out = batch_norm("bn3")(conv(4 * self.planes, 1, name="conv3")(out))
            out_planes = 4 * self.planes
        else:
            out = conv(self.planes, 3, stride=self.stride, padding=1, name="conv1")(x)
            out = nn.relu(batch_norm("bn1")(out))
            out = batch_norm("bn2")(conv(self.planes, 3, padding=1, name="conv2")(out))
            out_planes = self.planes
        shortcut = x
        if self.stride != 1 or self.in_planes != out_planes:
            shortcut = conv(out_planes, 1, stride=self.stride, name=f"{self.shortcut_name}.0")(x)
            shortcut = batch_norm(f"{self.shortcut_name}.1")(shortcut)
        return nn.relu(out + shortcut)


def _residual_stages(
    x: Array, depth: int, *, width_factor: int, shortcut_name: str, allowed: Sequence[int], remat: bool
) -> Array:
    stages = _stages(depth, allowed)
    bottleneck = depth >= 50
    in_planes = 64
    block = block_class(_Block, remat)
    for s, (blocks, planes) in enumerate(zip(stages, (64, 128, 256, 512), strict=True)):
        for i in range(blocks):
            stride = 2 if s > 0 and i == 0 else 1
            x = block(
                in_planes,
                planes,
                stride,
                bottleneck,
                planes * width_factor,
                shortcut_name,
                name=f"layer{s + 1}.{i}",
            )(x)
            in_planes = 4 * planes if bottleneck else planes
    return x


class CifarResNet(nn.Module):
    """RobustBench's CIFAR ``ResNet`` (``ResNet18()``, ``ResNet50()``...): 3x3 stem, no max pooling.

    Attributes:
      depth: 18, 34, 50, 101 or 152.
      num_classes: logits returned.
      mean: per-channel mean subtracted first (``mu``); ``None`` skips it.
      std: per-channel std divided by next (``sigma``); ``None`` skips it.
      remat: recompute each residual block's activations in the backward pass
        (:func:`flax.linen.remat`) instead of storing them: less memory for
        gradients, one more forward pass of compute. Same variables.
    """

    depth: int = 18
    num_classes: int = 10
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    remat: bool = False

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """``[batch, h, w, 3] -> [batch, num_classes]``."""
        x = conv(64, 3, padding=1, name="conv1")(normalise(x, self.mean, self.std))
        x = nn.relu(batch_norm("bn1")(x))
        x = _residual_stages(
            x, self.depth, width_factor=1, shortcut_name="shortcut", allowed=tuple(STAGES), remat=self.remat
        )
        return nn.Dense(self.num_classes, name="linear")(global_average(x))


class ResNet(nn.Module):
    """torchvision's ImageNet ResNet (``resnet18``, ``resnet50``, ``wide_resnet50_2``...).

    Attributes:
      depth: 18, 34, 50, 101 or 152.
      num_classes: logits returned (1000 for ImageNet).
      width_factor: the bottleneck's inner width multiplier (2 for
        ``wide_resnet50_2``; torchvision's ``width_per_group / 64``).
      mean: per-channel mean subtracted first; RobustBench's ImageNet models use
        :data:`IMAGENET_MEAN`, which :func:`~jaxadv.zoo.from_torch` reads from
        the checkpoint. ``None`` skips it.
      std: per-channel std divided by next (:data:`IMAGENET_STD`); ``None`` skips it.
      remat: recompute each residual block's activations in the backward pass
        (:func:`flax.linen.remat`) instead of storing them: less memory for
        gradients, one more forward pass of compute. Same variables.
    """

    depth: int = 50
    num_classes: int = 1000
    width_factor: int = 1
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    remat: bool = False

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """``[batch, h, w, 3] -> [batch, num_classes]``."""
        if self.width_factor != 1 and self.depth < 50:
            raise ValueError("width_factor applies to bottleneck ResNets (depth >= 50)")
        x = conv(64, 7, stride=2, padding=3, name="conv1")(normalise(x, self.mean, self.std))
        x = nn.relu(batch_norm("bn1")(x))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))  # pads with -inf
        x = _residual_stages(
            x,
            self.depth,
            width_factor=self.width_factor,
            shortcut_name="downsample",
            allowed=tuple(STAGES),
            remat=self.remat,
        )
        return nn.Dense(self.num_classes, name="fc")(global_average(x))
