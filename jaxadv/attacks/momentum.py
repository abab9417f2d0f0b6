r"""The transfer family: momentum iterative FGSM and its variants (MI, NI, VMI, TI, DI).

MI-FGSM (Dong et al., 2018) accumulates a velocity of L1-normalised gradients
and steps along its steepest-ascent direction:

.. math::
    g_{t+1} = \mu\, g_t + \frac{\nabla_x J(x_t, y)}{\|\nabla_x J(x_t, y)\|_1},\qquad
    x_{t+1} = \Pi_{B_\epsilon(x) \cap [lo, hi]}\big(x_t + \alpha\, d_p(g_{t+1})\big)

(:math:`d_p = \mathrm{sign}` for L-inf, :math:`g/\|g\|_2` for L2). The momentum
stabilises the update direction, which makes the examples transfer better to
other models. The variants change one part of that step (see
:mod:`jaxadv.compose`): NI-FGSM takes the gradient at a Nesterov look-ahead
point, VMI-FGSM tunes it with the gradients of random neighbours, TI-FGSM
smooths it with a Gaussian kernel, and input diversity (DI, any of them with
``diversity_prob > 0``) takes it through a random resize-and-pad
(:func:`diverse_inputs`) of the input. VMI-FGSM and TI-FGSM live in
:mod:`jaxadv.attacks.momentum_smoothed`.
"""

from __future__ import annotations

from typing import Any, Literal, overload

import jax.numpy as jnp

from jaxadv.compose.loop import Attack
from jaxadv.compose.sources import (
    InputDiversity,
    LossGradient,
    diverse_inputs,
)
from jaxadv.compose.updates import Momentum, Nesterov
from jaxadv.losses import get_loss
from jaxadv.success import AttackResult
from jaxadv.typing import Array, ArrayLike, Bounds, LogitsFn, LoopMode, LossFn, Norm, PRNGKey
from jaxadv.validation import check_finite, check_norm

__all__ = ["diverse_inputs", "mifgsm", "nifgsm"]  # vmifgsm, tifgsm: jaxadv.attacks.momentum_smoothed


def _transfer_norm(norm: Norm, name: str) -> Norm:
    norm = check_norm(norm)
    if norm not in ("linf", "l2"):
        raise ValueError(f"{name} supports norm='linf' or 'l2', got {norm!r}")
    return norm


def _source(loss: str | LossFn, diversity_prob: Any, resize_rate: Any, spatial_axes: tuple[int, int]) -> Any:
    """The exact gradient of ``loss``, through input diversity unless ``diversity_prob`` is 0.

    Refuses (concrete values) ``diversity_prob`` outside ``[0, 1]`` and
    ``resize_rate`` outside ``(0, 1]``, NaN included, even when diversity is off."""
    check_finite(diversity_prob, "diversity_prob", minimum=0.0, maximum=1.0)
    check_finite(resize_rate, "resize_rate", minimum=0.0, maximum=1.0, above=True)
    source: Any = LossGradient(get_loss(loss))
    if isinstance(diversity_prob, (int, float)) and diversity_prob == 0:
        return source
    return InputDiversity(
        source,
        jnp.asarray(diversity_prob, jnp.float32),
        jnp.asarray(resize_rate, jnp.float32),
        tuple(spatial_axes),  # type: ignore[arg-type]
    )


def _run(
    attack: Attack,
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None,
    *,
    key: PRNGKey | None,
    eps: ArrayLike,
    step_size: ArrayLike | None,
    steps: int,
    targeted: bool,
    bounds: Bounds,
    loop: LoopMode,
    return_info: bool,
) -> Any:
    if attack.needs_key and key is None:
        raise ValueError("key is required when diversity_prob > 0 (pass key=jax.random.key(0))")
    return attack(
        logits_fn, x, y, key=key, eps=eps, step_size=step_size, steps=steps, targeted=targeted, bounds=bounds,
        loop=loop, return_info=return_info,
    )  # fmt: skip


@overload
def mifgsm(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey | None = None,
    eps: ArrayLike,
    step_size: ArrayLike | None = None,
    steps: int = 10,
    decay: ArrayLike = 1.0,
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
def mifgsm(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey | None = None,
    eps: ArrayLike,
    step_size: ArrayLike | None = None,
    steps: int = 10,
    decay: ArrayLike = 1.0,
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
def mifgsm(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey | None = None,
    eps: ArrayLike,
    step_size: ArrayLike | None = None,
    steps: int = 10,
    decay: ArrayLike = 1.0,
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


def mifgsm(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey | None = None,
    eps: ArrayLike,
    step_size: ArrayLike | None = None,
    steps: int = 10,
    decay: ArrayLike = 1.0,
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
    r"""Momentum iterative FGSM (Dong et al., 2018); DI-MI-FGSM with ``diversity_prob > 0``.

    Starts at :math:`x_0 = x`, :math:`g_0 = 0` and runs the update of the module
    docstring ``steps`` times. With ``decay=0`` and no diversity this is
    :func:`jaxadv.bim`.

    Every iterate is checked for success (prediction away from ``y``, or equal to
    it when ``targeted``) on the model itself, without the diversity transform.
    The returned example is the last iterate when it is adversarial, otherwise the
    last adversarial iterate seen, otherwise the last iterate: success is never
    lost by a later step. With ``early_stop`` an example stops moving once it is
    adversarial (the paper keeps stepping, which gives more confident, better
    transferring examples, hence the default ``False``).

    Examples on which the model's logits (or gradient) are not finite at ``x``
    are returned unchanged and never count as adversarial; a step from such an
    iterate goes back to ``x``. An empty batch is returned as it is.

    Args:
      logits_fn: model ``x -> logits [batch, C]``.
      x: ``[batch, ...]`` clean inputs inside ``bounds``.
      y: ``[batch]`` labels or ``[batch, C]`` one-hot (targets when ``targeted``);
        ``None``: the model's predictions.
      eps: radius, scalar or ``[batch]`` (traced).
      step_size: :math:`\alpha`, scalar or ``[batch]`` (traced); default
        ``eps / steps`` as in the paper.
      steps: number of iterations :math:`T` (static).
      decay: momentum decay :math:`\mu`, a finite number ``>= 0`` (traced; the paper
        uses 1.0).
      norm: ``"linf"`` or ``"l2"``.
      targeted: descend the loss of the target ``y``.
      bounds: ``(lo, hi)``, scalars or arrays broadcasting against ``x``.
      loss: per-example loss (default cross-entropy).
      diversity_prob: probability of the resize-and-pad transform per example and
        step, in ``[0, 1]`` (traced; ``0`` turns input diversity off, statically).
      resize_rate: smallest shrink factor of the transform, in ``(0, 1]`` (traced).
      spatial_axes: the two spatial axes of ``x`` (static; NHWC: ``(1, 2)``).
      key: PRNG key, required when ``diversity_prob > 0``.
      early_stop: freeze an example once it is adversarial.
      loop: ``"auto"``, ``"fori"``, ``"compiled"`` or ``"host"`` (see :mod:`jaxadv.engine`).

    Returns:
      The adversarial batch, shape and dtype of ``x``.
    """
    attack = Attack(
        _source(loss, diversity_prob, resize_rate, spatial_axes),
        Momentum(jnp.asarray(decay, jnp.float32)),
        norm=_transfer_norm(norm, "mifgsm"),
        keep_best=True,
        early_stop=early_stop,
        step_factor=1.0,
    )
    return _run(
        attack, logits_fn, x, y, key=key, eps=eps, step_size=step_size, steps=steps, targeted=targeted,
        bounds=bounds, loop=loop, return_info=return_info,
    )  # fmt: skip


@overload
def nifgsm(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey | None = None,
    eps: ArrayLike,
    step_size: ArrayLike | None = None,
    steps: int = 10,
    decay: ArrayLike = 1.0,
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
def nifgsm(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey | None = None,
    eps: ArrayLike,
    step_size: ArrayLike | None = None,
    steps: int = 10,
    decay: ArrayLike = 1.0,
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
def nifgsm(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey | None = None,
    eps: ArrayLike,
    step_size: ArrayLike | None = None,
    steps: int = 10,
    decay: ArrayLike = 1.0,
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


def nifgsm(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: PRNGKey | None = None,
    eps: ArrayLike,
    step_size: ArrayLike | None = None,
    steps: int = 10,
    decay: ArrayLike = 1.0,
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
    r"""Nesterov iterative FGSM (NI-FGSM; Lin et al., ICLR 2020).

    MI-FGSM with the gradient taken at the look-ahead point:

    .. math::
        x^{nes}_t = x_t + \alpha\mu\, \bar g_t,\qquad
        g_{t+1} = \mu g_t + \frac{\nabla_x J(x^{nes}_t, y)}{\|\nabla_x J(x^{nes}_t, y)\|_1},\qquad
        x_{t+1} = \Pi_{B_\epsilon(x) \cap [lo, hi]}\big(x_t + \alpha\, d_p(g_{t+1})\big),

    with :math:`\bar g_t` the velocity in units of the gradient's mean absolute
    value (the paper's normalisation; :class:`jaxadv.compose.Nesterov`). The
    look-ahead point is not projected. Success bookkeeping, ``early_stop``,
    input diversity and the remaining arguments as in :func:`mifgsm`.

    Returns:
      The adversarial batch, shape and dtype of ``x``.
    """
    attack = Attack(
        _source(loss, diversity_prob, resize_rate, spatial_axes),
        Nesterov(jnp.asarray(decay, jnp.float32)),
        norm=_transfer_norm(norm, "nifgsm"),
        keep_best=True,
        early_stop=early_stop,
        step_factor=1.0,
    )
    return _run(
        attack, logits_fn, x, y, key=key, eps=eps, step_size=step_size, steps=steps, targeted=targeted,
        bounds=bounds, loop=loop, return_info=return_info,
    )  # fmt: skip
