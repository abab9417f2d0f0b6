"""Wide residual networks (Zagoruyko and Komodakis, 2016) in RobustBench's two layouts.

* :class:`WideResNet`: the pre-activation WideResNet of the TRADES code, used
  by most CIFAR entries of RobustBench (``robustbench/model_zoo/architectures/
  wide_resnet.py``). It does not normalise its input.
* :class:`DMWideResNet`: DeepMind's variant (``dm_wide_resnet.py``), used by the
  large entries (WRN-28-10, 70-16, 106-16 of Gowal et al., Rebuffi et al., Wang
  et al., ...). It normalises by the dataset mean and std inside the model,
  uses Swish (SiLU) activations, and pads its strided convolutions as
  TensorFlow's ``"SAME"`` does (one row and column at the end).

Both take ``[batch, 32, 32, 3]`` NHWC inputs in ``[0, 1]`` and return logits
``[batch, num_classes]``. ``depth = 6 n + 4`` with ``n`` blocks per group and the
groups ``16 * width``, ``32 * width``, ``64 * width`` channels wide. Batch norm
runs in inference mode (running statistics), so the variables are
``{"params": ..., "batch_stats": ...}``.
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


def _blocks_per_group(depth: int) -> int:
    if depth < 10 or (depth - 4) % 6:
        raise ValueError(f"a WideResNet needs depth = 6 n + 4 with n >= 1 (10, 16, 22, 28, ...), got {depth}")
    return (depth - 4) // 6


class _Block(nn.Module):
    in_planes: int
    out_planes: int
    stride: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        activated = nn.relu(batch_norm("bn1")(x))
        same = self.in_planes == self.out_planes
        out = conv(self.out_planes, 3, stride=self.stride, padding=1, name="conv1")(activated)
        out = nn.relu(batch_norm("bn2")(out))
        out = conv(self.out_planes, 3, padding=1, name="conv2")(out)
        if same:
            return x + out
        # A widening block projects the *activated* input.
        return conv(self.out_planes, 1, stride=self.stride, name="convShortcut")(activated) + out


class WideResNet(nn.Module):
    """RobustBench's ``WideResNet(depth, widen_factor)``, e.g. WRN-28-10 and WRN-34-10.

    Attributes:
      depth: ``6 n + 4``.
      width: the widening factor.
      num_classes: logits returned.
      bias_last: whether the classifier ``fc`` has a bias (RobustBench's ``bias_last``).
      mean: per-channel mean subtracted first (entries with ``mu``/``sigma``
        buffers); ``None``, the reference model's behaviour, skips it.
      std: per-channel std divided by next; ``None`` skips it.
      remat: recompute each residual block's activations in the backward pass
        (:func:`flax.linen.remat`) instead of storing them: less memory for
        gradients, one more forward pass of compute. Same variables.
    """

    depth: int = 28
    width: int = 10
    num_classes: int = 10
    bias_last: bool = True
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    remat: bool = False

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """``[batch, h, w, 3] -> [batch, num_classes]``."""
        n = _blocks_per_group(self.depth)
        channels = (16, 16 * self.width, 32 * self.width, 64 * self.width)
        x = conv(channels[0], 3, padding=1, name="conv1")(normalise(x, self.mean, self.std))
        block = block_class(_Block, self.remat)
        for group, stride in enumerate((1, 2, 2)):
            for i in range(n):
                in_planes = channels[group] if i == 0 else channels[group + 1]
                x = block(
                    in_planes,
                    channels[group + 1],
                    stride if i == 0 else 1,
                    name=f"block{group + 1}.layer.{i}",
                )(x)
        x = nn.relu(batch_norm("bn1")(x))
        return nn.Dense(self.num_classes, use_bias=self.bias_last, name="fc")(global_average(x))


class _DMBlock(nn.Module):
    in_planes: int
    out_planes: int
    stride: int
    activation: Activation

    @nn.compact
    def __call__(self, x: Array) -> Array:
        activated = self.activation(batch_norm("batchnorm_0")(x))
        pad = ((1, 1), (1, 1)) if self.stride == 1 else ((0, 1), (0, 1))
        out = conv(self.out_planes, 3, stride=self.stride, padding=pad, name="conv_0")(activated)
        out = self.activation(batch_norm("batchnorm_1")(out))
        out = conv(self.out_planes, 3, padding=1, name="conv_1")(out)
        if self.in_planes == self.out_planes:
            return x + out
        return conv(self.out_planes, 1, stride=self.stride, name="shortcut")(activated) + out


class DMWideResNet(nn.Module):
    """RobustBench's ``DMWideResNet(num_classes, depth, width, activation_fn=Swish, mean, std)``.

    Attributes:
      depth: ``6 n + 4`` (28, 34, 70, 106 on the leaderboards).
      width: the widening factor (10, 16, 20).
      num_classes: logits returned.
      mean: the per-channel mean subtracted inside the model; ``None`` picks
        RobustBench's CIFAR statistics (CIFAR-100's when ``num_classes == 100``,
        CIFAR-10's otherwise), as its model zoo does.
      std: the per-channel std divided by; ``None`` as for ``mean``.
      activation: ``nn.swish`` (RobustBench's ``Swish`` and ``nn.SiLU``); pass
        ``nn.relu`` for the class's ReLU default.
      remat: recompute each block's activations in the backward pass (see
        :class:`WideResNet`).
    """

    depth: int = 70
    width: int = 16
    num_classes: int = 10
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    activation: Activation = nn.swish
    remat: bool = False

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """``[batch, h, w, 3] -> [batch, num_classes]``."""
        n = _blocks_per_group(self.depth)
        default_mean, default_std = cifar_statistics(self.num_classes)
        mean = default_mean if self.mean is None else self.mean
        std = default_std if self.std is None else self.std
        channels = (16, 16 * self.width, 32 * self.width, 64 * self.width)
        x = conv(channels[0], 3, padding=1, name="init_conv")(normalise(x, mean, std))
        block = block_class(_DMBlock, self.remat)
        for group, stride in enumerate((1, 2, 2)):
            for i in range(n):
                x = block(
                    channels[group] if i == 0 else channels[group + 1],
                    channels[group + 1],
                    stride if i == 0 else 1,
                    self.activation,
                    name=f"layer.{group}.block.{i}",
                )(x)
        x = self.activation(batch_norm("batchnorm")(x))
        return nn.Dense(self.num_classes, name="logits")(global_average(x))
