"""Model zoo: Flax versions of RobustBench's architectures, and PyTorch weight import.

Robust models are mostly published as PyTorch checkpoints (RobustBench's model
zoo). This package defines the same architectures as Flax linen modules (NHWC,
batch norm in inference mode, logits out) and converts their state dicts, so a
published model can be attacked with every attack of :mod:`jaxadv`::

    from jaxadv import zoo

    module, variables = zoo.from_torch("dm-wrn-70-16", torch_model.state_dict())
    logits_fn = jaxadv.from_flax(module, variables)
    x_adv = jaxadv.pgd(logits_fn, x, y, key=key, eps=8 / 255, steps=10)

Inputs are NHWC images in ``[0, 1]`` (``eps`` in that space); each module
applies the normalisation its PyTorch original applies. PyTorch is needed only
to read ``.pt`` files or tensors, never to run the models.
"""

from jaxadv.zoo.convert import from_torch, load_state_dict
from jaxadv.zoo.layers import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
)
from jaxadv.zoo.registry import ARCHITECTURES, build
from jaxadv.zoo.resnet import CifarResNet, DMPreActResNet, PreActResNet, ResNet
from jaxadv.zoo.vit import VisionTransformer
from jaxadv.zoo.wide_resnet import DMWideResNet, WideResNet

__all__ = [
    "ARCHITECTURES",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CifarResNet",
    "DMPreActResNet",
    "DMWideResNet",
    "PreActResNet",
    "ResNet",
    "VisionTransformer",
    "WideResNet",
    "build",
    "from_torch",
    "load_state_dict",
]
