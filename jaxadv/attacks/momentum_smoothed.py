"""The momentum attacks that smooth their gradient (transfer attacks): VMI-FGSM, with the
variance of the gradient over a neighbourhood, and TI-FGSM, with the gradient
convolved by a Gaussian kernel; built like :func:`jaxadv.mifgsm` (see
:mod:`jaxadv.attacks.momentum`)."""

from __future__ import annotations

from typing import Literal, overload

import jax.numpy as jnp

from jaxadv.attacks.momentum import _run, _source, _transfer_norm
from jaxadv.compose.loop import Attack
from jaxadv.compose.sources import (
    TranslationInvariant,
    gaussian_kernel_1d,
)
from jaxadv.compose.updates import Momentum, VarianceTuning
from jaxadv.success import AttackResult
from jaxadv.typing import Array, ArrayLike, Bounds, LogitsFn, LoopMode, LossFn, Norm, PRNGKey

__all__ = ["tifgsm", "vmifgsm"]


@overload
def vmifgsm(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey | None = None,
    eps: ArrayLike,
    step_size: ArrayLike | None = None,
    steps: int = 10,
    decay: ArrayLike = 1.0,
    num_neighbors: int = 5,
    neighborhood: ArrayLike = 1.5,
    norm: Norm = "linf",
    targeted: bool = False,
    bounds: Bounds = (0.0, 1.0),
    loss: str | LossFn = "ce",
    diversity_prob: float = 0.0,
    resize_rate: ArrayLike = 0.9,
    spatial_axes: tuple[int, int] = (1, 2),
    early_stop: bool = False,
    loop: LoopMode = "auto",
    return_info: Literal[False] = False,
) -> Array: ...


@overload
def vmifgsm(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey | None = None,
    eps: ArrayLike,
    step_size: ArrayLike | None = None,
    steps: int = 10,
    decay: ArrayLike = 1.0,
    num_neighbors: int = 5,
    neighborhood: ArrayLike = 1.5,
    norm: Norm = "linf",
    targeted: bool = False,
    bounds: Bounds = (0.0, 1.0),
    loss: str | LossFn = "ce",
    diversity_prob: float = 0.0,
    resize_rate: ArrayLike = 0.9,
    spatial_axes: tuple[int, int] = (1, 2),
    early_stop: bool = False,
    loop: LoopMode = "auto",
    return_info: Literal[True],
) -> AttackResult: ...


@overload
def vmifgsm(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey | None = None,
    eps: ArrayLike,
    step_size: ArrayLike | None = None,
    steps: int = 10,
    decay: ArrayLike = 1.0,
    num_neighbors: int = 5,
    neighborhood: ArrayLike = 1.5,
    norm: Norm = "linf",
    targeted: bool = False,
    bounds: Bounds = (0.0, 1.0),
    loss: str | LossFn = "ce",
    diversity_prob: float = 0.0,
    resize_rate: ArrayLike = 0.9,
    spatial_axes: tuple[int, int] = (1, 2),
    early_stop: bool = False,
    loop: LoopMode = "auto",
    return_info: bool = False,
) -> Array | AttackResult: ...


def vmifgsm(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey | None = None,
    eps: ArrayLike,
    step_size: ArrayLike | None = None,
    steps: int = 10,
    decay: ArrayLike = 1.0,
    num_neighbors: int = 5,
    neighborhood: ArrayLike = 1.5,
    norm: Norm = "linf",
    targeted: bool = False,
    bounds: Bounds = (0.0, 1.0),
    loss: str | LossFn = "ce",
    diversity_prob: float = 0.0,
    resize_rate: ArrayLike = 0.9,
    spatial_axes: tuple[int, int] = (1, 2),
    early_stop: bool = False,
    loop: LoopMode = "auto",
    return_info: bool = False,
) -> Array | AttackResult:
    r"""Variance-tuned momentum iterative FGSM (VMI-FGSM; Wang & He, CVPR 2021).

    .. math::
        g_{t+1} = \mu g_t + \frac{\nabla_x J(x_t) + v_t}{\|\nabla_x J(x_t) + v_t\|_1},\qquad
        v_{t+1} = \frac1N \sum_{j=1}^{N} \nabla_x J(x_t + r_j) - \nabla_x J(x_t),

    :math:`r_j \sim U[-\beta\epsilon, \beta\epsilon]^n`, :math:`v_0 = 0`, and the
    step of :func:`mifgsm`. The variance term tunes the current gradient with
    the gradients around the previous iterate, which stabilises the update
    direction and improves transfer. Each step costs ``1 + num_neighbors``
    forward-backward passes.

    Args:
      num_neighbors: :math:`N`, neighbours per step (static).
      neighborhood: :math:`\beta`, the neighbourhood radius as a multiple of ``eps``, a
        finite number ``>= 0`` (traced).
      key: PRNG key for the neighbours (required).
      Others: as in :func:`mifgsm`.

    Returns:
      The adversarial batch, shape and dtype of ``x``.
    """
    if key is None:
        raise ValueError("key is required for the neighbours (pass key=jax.random.key(0))")
    if not isinstance(num_neighbors, int) or isinstance(num_neighbors, bool) or num_neighbors < 1:
        raise ValueError(f"num_neighbors must be a positive int, got {num_neighbors!r}")
    attack = Attack(
        _source(loss, diversity_prob, resize_rate, spatial_axes),
        VarianceTuning(
            jnp.asarray(decay, jnp.float32), jnp.asarray(neighborhood, jnp.float32), num_neighbors
        ),
        norm=_transfer_norm(norm, "vmifgsm"),
        keep_best=True,
        early_stop=early_stop,
        step_factor=1.0,
    )
    return _run(
        attack, logits_fn, x, y, key=key, eps=eps, step_size=step_size, steps=steps, targeted=targeted,
        bounds=bounds, loop=loop, return_info=return_info,
    )  # fmt: skip


@overload
def tifgsm(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey | None = None,
    eps: ArrayLike,
    step_size: ArrayLike | None = None,
    steps: int = 10,
    decay: ArrayLike = 0.0,
    kernel_size: int = 15,
    nsig: float = 3.0,
    norm: Norm = "linf",
    targeted: bool = False,
    bounds: Bounds = (0.0, 1.0),
    loss: str | LossFn = "ce",
    diversity_prob: float = 0.5,
    resize_rate: ArrayLike = 0.9,
    spatial_axes: tuple[int, int] = (1, 2),
    early_stop: bool = False,
    loop: LoopMode = "auto",
    return_info: Literal[False] = False,
) -> Array: ...


@overload
def tifgsm(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey | None = None,
    eps: ArrayLike,
    step_size: ArrayLike | None = None,
    steps: int = 10,
    decay: ArrayLike = 0.0,
    kernel_size: int = 15,
    nsig: float = 3.0,
    norm: Norm = "linf",
    targeted: bool = False,
    bounds: Bounds = (0.0, 1.0),
    loss: str | LossFn = "ce",
    diversity_prob: float = 0.5,
    resize_rate: ArrayLike = 0.9,
    spatial_axes: tuple[int, int] = (1, 2),
    early_stop: bool = False,
    loop: LoopMode = "auto",
    return_info: Literal[True],
) -> AttackResult: ...


@overload
def tifgsm(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey | None = None,
    eps: ArrayLike,
    step_size: ArrayLike | None = None,
    steps: int = 10,
    decay: ArrayLike = 0.0,
    kernel_size: int = 15,
    nsig: float = 3.0,
    norm: Norm = "linf",
    targeted: bool = False,
    bounds: Bounds = (0.0, 1.0),
    loss: str | LossFn = "ce",
    diversity_prob: float = 0.5,
    resize_rate: ArrayLike = 0.9,
    spatial_axes: tuple[int, int] = (1, 2),
    early_stop: bool = False,
    loop: LoopMode = "auto",
    return_info: bool = False,
) -> Array | AttackResult: ...


def tifgsm(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey | None = None,
    eps: ArrayLike,
    step_size: ArrayLike | None = None,
    steps: int = 10,
    decay: ArrayLike = 0.0,
    kernel_size: int = 15,
    nsig: float = 3.0,
    norm: Norm = "linf",
    targeted: bool = False,
    bounds: Bounds = (0.0, 1.0),
    loss: str | LossFn = "ce",
    diversity_prob: float = 0.5,
    resize_rate: ArrayLike = 0.9,
    spatial_axes: tuple[int, int] = (1, 2),
    early_stop: bool = False,
    loop: LoopMode = "auto",
    return_info: bool = False,
) -> Array | AttackResult:
    r"""Translation-invariant iterative FGSM (TI-FGSM; Dong et al., CVPR 2019).

    The gradient is convolved, per channel, with a Gaussian kernel :math:`W`
    (:func:`jaxadv.compose.gaussian_kernel`: ``kernel_size`` points on
    :math:`[-\text{nsig}, \text{nsig}]`) before the momentum update of
    :func:`mifgsm`:

    .. math::
        g_{t+1} = \mu g_t + \frac{W * \nabla_x J(T(x_t), y)}{\|W * \nabla_x J(T(x_t), y)\|_1}

    which approximates the gradient of an ensemble of translated images and
    makes examples transfer to models with other receptive fields. The defaults
    are the usual TI-DI-FGSM combination: input diversity ``T`` with
    probability 0.5 (``diversity_prob=0`` turns it off) and no momentum
    (``decay=0``; ``decay=1`` gives TI-DI-MI-FGSM). ``x`` must be images with
    two ``spatial_axes``.

    Args:
      kernel_size: side of the smoothing kernel (static).
      nsig: the kernel's extent in standard deviations, finite and ``> 0`` (static).
      key: PRNG key, required when ``diversity_prob > 0``.
      Others: as in :func:`mifgsm`.

    Returns:
      The adversarial batch, shape and dtype of ``x``.
    """
    kernel = jnp.asarray(gaussian_kernel_1d(kernel_size, nsig))  # separable: two banded products
    attack = Attack(
        TranslationInvariant(
            _source(loss, diversity_prob, resize_rate, spatial_axes),
            kernel,
            (spatial_axes[0], spatial_axes[1]),
        ),  # type: ignore[arg-type]
        Momentum(jnp.asarray(decay, jnp.float32)),
        norm=_transfer_norm(norm, "tifgsm"),
        keep_best=True,
        early_stop=early_stop,
        step_factor=1.0,
    )
    return _run(
        attack, logits_fn, x, y, key=key, eps=eps, step_size=step_size, steps=steps, targeted=targeted,
        bounds=bounds, loop=loop, return_info=return_info,
    )  # fmt: skip
