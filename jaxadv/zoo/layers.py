"""Layers shared by the zoo's architectures, written to match PyTorch's arithmetic.

Every layer is named after the PyTorch module it mirrors, dots included
(``"block1.layer.0.conv1"``), so that a Flax variable's path joined with ``.``
is the key of the PyTorch state dict entry it comes from
(:mod:`jaxadv.zoo.convert` relies on this).

PyTorch pads convolutions symmetrically (``padding=1`` pads one row above *and*
below even with stride 2), which Flax's ``"SAME"`` does not do for even inputs,
so convolutions here always take explicit padding.
"""

from __future__ import annotations

from typing import Callable, Sequence, TypeVar, cast

import flax.linen as nn
import jax.numpy as jnp

from jaxadv.typing import Array

#: A ``[(lo, hi), (lo, hi)]`` spatial padding, or one integer for all sides.
Padding = int | Sequence[tuple[int, int]]
Activation = Callable[[Array], Array]
ModuleT = TypeVar("ModuleT", bound=type[nn.Module])

#: CIFAR-10 per-channel mean, as RobustBench's CIFAR-10 models normalise with.
CIFAR10_MEAN: tuple[float, ...] = (0.4914, 0.4822, 0.4465)
#: CIFAR-10 per-channel std (RobustBench's).
CIFAR10_STD: tuple[float, ...] = (0.2471, 0.2435, 0.2616)
#: CIFAR-100 per-channel mean (RobustBench's).
CIFAR100_MEAN: tuple[float, ...] = (0.5071, 0.4865, 0.4409)
#: CIFAR-100 per-channel std (RobustBench's).
CIFAR100_STD: tuple[float, ...] = (0.2673, 0.2564, 0.2762)
#: ImageNet per-channel mean (torchvision's and RobustBench's ImageNet models).
IMAGENET_MEAN: tuple[float, ...] = (0.485, 0.456, 0.406)
#: ImageNet per-channel std.
IMAGENET_STD: tuple[float, ...] = (0.229, 0.224, 0.225)


def conv(
    features: int, kernel: int, *, stride: int = 1, padding: Padding = 0, bias: bool = False, name: str
) -> nn.Conv:
    """A square ``kernel x kernel`` convolution (NHWC, kernel ``HWIO``), PyTorch-style padding."""
    pad = [(padding, padding)] * 2 if isinstance(padding, int) else list(padding)
    return nn.Conv(
        features, (kernel, kernel), strides=(stride, stride), padding=pad, use_bias=bias, name=name
    )


def batch_norm(name: str) -> nn.BatchNorm:
    """Inference-mode batch norm: ``(x - mean) / sqrt(var + 1e-5) * scale + bias`` (PyTorch's eps)."""
    return nn.BatchNorm(use_running_average=True, epsilon=1e-5, name=name)


def layer_norm(name: str, *, epsilon: float = 1e-6) -> nn.LayerNorm:
    """Layer norm with the two-pass variance PyTorch computes."""
    return nn.LayerNorm(epsilon=epsilon, use_fast_variance=False, name=name)


def normalise(x: Array, mean: Sequence[float] | None, std: Sequence[float] | None) -> Array:
    """``(x - mean) / std`` over the last (channel) axis; ``None`` skips that part."""
    if mean is not None:
        x = x - jnp.asarray(mean, x.dtype)
    if std is not None:
        x = x / jnp.asarray(std, x.dtype)
    return x


def global_average(x: Array) -> Array:
    """``[batch, h, w, c] -> [batch, c]``: the mean over all spatial positions."""
    return jnp.mean(x, axis=(1, 2))


def cifar_statistics(num_classes: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """RobustBench's normalisation for a CIFAR model: CIFAR-100's for 100 classes, else CIFAR-10's."""
    if num_classes == 100:
        return CIFAR100_MEAN, CIFAR100_STD
    return CIFAR10_MEAN, CIFAR10_STD


_REMATERIALISED: dict[type[nn.Module], type[nn.Module]] = {}


def block_class(cls: ModuleT, remat: bool) -> ModuleT:
    """``cls``, or ``flax.linen.remat(cls)`` when ``remat``: the block's activations are then
    recomputed in the backward pass instead of stored. Same variables, same names."""
    if not remat:
        return cls
    if cls not in _REMATERIALISED:  # one lifted class per block class
        _REMATERIALISED[cls] = nn.remat(cls)
    return cast(ModuleT, _REMATERIALISED[cls])
