"""PyTorch twins of the digits models, for cross-checks against reference code.

The Flax models of :mod:`jaxadv.examples` take NHWC inputs; reference attack code
written for PyTorch expects NCHW. The twins here take NCHW inputs and reproduce
the Flax computation exactly:

* convolution kernels: Flax ``HWIO`` -> torch ``OIHW``;
* Flax ``padding="SAME"`` with stride 2 pads more at the end than at the start,
  which ``torch.nn.Conv2d(padding=...)`` cannot express: the twin pads
  explicitly with the same split;
* the dense layer reads features flattened in NHWC order, so the twin permutes
  back to NHWC before flattening.

Check the twins with :func:`max_logit_gap` before trusting a cross-check.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


def to_nchw(x: Any) -> torch.Tensor:
    """NHWC array -> NCHW float32 tensor."""
    return torch.from_numpy(np.ascontiguousarray(np.asarray(x, np.float32).transpose(0, 3, 1, 2)))


def to_nhwc(x: torch.Tensor) -> np.ndarray:
    """NCHW tensor -> NHWC float32 array."""
    return x.detach().cpu().numpy().transpose(0, 2, 3, 1).astype(np.float32)


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _tensor(a: Any) -> torch.Tensor:
    return torch.from_numpy(np.array(a, np.float32))


class TorchDigitsCNN(nn.Module):
    """``jaxadv.examples.DigitsCNN`` in PyTorch (NCHW input ``[n, 1, 8, 8]``)."""

    def __init__(self, variables: Any, input_size: int = 8) -> None:
        super().__init__()
        params = variables["params"]
        self.convs = nn.ModuleList()
        self.pads: list[tuple[int, int, int, int]] = []
        size = input_size
        for name in ("Conv_0", "Conv_1"):
            kernel = np.asarray(params[name]["kernel"])  # HWIO
            kh, kw, cin, cout = kernel.shape
            conv = nn.Conv2d(cin, cout, (kh, kw), stride=2, padding=0)
            conv.weight.data = _tensor(kernel.transpose(3, 2, 0, 1))
            conv.bias.data = _tensor(params[name]["bias"])
            self.convs.append(conv)
            top, bottom = _same_padding(size, kh, 2)
            left, right = _same_padding(size, kw, 2)
            self.pads.append((left, right, top, bottom))
            size = -(-size // 2)
        dense = params["Dense_0"]
        self.head = nn.Linear(*np.asarray(dense["kernel"]).shape)
        self.head.weight.data = _tensor(np.asarray(dense["kernel"]).T)
        self.head.bias.data = _tensor(dense["bias"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv, pad in zip(self.convs, self.pads, strict=True):
            x = F.relu(conv(F.pad(x, pad)))
        return self.head(x.permute(0, 2, 3, 1).reshape(x.shape[0], -1))


class TorchDigitsMLP(nn.Module):
    """``jaxadv.examples.DigitsMLP`` in PyTorch (NCHW input, flattened in NHWC order)."""

    def __init__(self, variables: Any) -> None:
        super().__init__()
        params = variables["params"]
        names = sorted((k for k in params if k.startswith("Dense_")), key=lambda k: int(k.split("_")[1]))
        layers = []
        for name in names:
            kernel = np.asarray(params[name]["kernel"])
            layer = nn.Linear(*kernel.shape)
            layer.weight.data = _tensor(kernel.T)
            layer.bias.data = _tensor(params[name]["bias"])
            layers.append(layer)
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)
        for layer in self.layers[:-1]:
            x = F.relu(layer(x))
        return self.layers[-1](x)


def max_logit_gap(torch_model: nn.Module, logits_fn: Any, x_nhwc: Any) -> float:
    """Largest absolute difference between the twin's and the JAX model's logits."""
    import jaxadv

    with torch.no_grad():
        ours = torch_model(to_nchw(x_nhwc)).numpy()
    theirs = np.asarray(jaxadv.logits(logits_fn, np.asarray(x_nhwc, np.float32)))
    return float(np.max(np.abs(ours - theirs)))
