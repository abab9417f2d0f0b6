r"""Universal adversarial perturbations: one perturbation for a whole dataset.

A universal perturbation (Moosavi-Dezfooli et al., CVPR 2017) is a single
:math:`\delta` with the shape of *one* example that fools the model on most
inputs of a distribution at once:

.. math::
    \max_{\|\delta\|_p \le \epsilon}\; \mathbb E_{(x, y)}\;
    s\, L\big(f(\mathrm{clip}_{[lo, hi]}(x + \delta)),\, y\big),

with :math:`s = +1` (untargeted: ``y`` the true label or the clean
prediction) or :math:`s = -1` (targeted: ``y = t``, one target class for every
input). The original paper builds :math:`\delta` by accumulating DeepFool steps
over the data; the practical form used here (as in SGD-UAP, Shafahi et al.,
AAAI 2020) is projected stochastic gradient ascent over minibatches:

.. math::
    g_k = \nabla_\delta \tfrac1B \textstyle\sum_b s\, L\big(f(\mathrm{clip}(x_b + \delta_k)), y_b\big),\qquad
    (u_k, S_{k+1}) = \mathrm{opt.update}(-g_k, S_k, \delta_k),\qquad
    \delta_{k+1} = \Pi_{B_\epsilon}(\delta_k + u_k),

where ``opt`` is any optax optimizer (optax descends, hence :math:`-g_k`) and
:math:`\Pi_{B_\epsilon}` the projection of :mod:`jaxadv.threat_models` onto the
L-inf, L2 or L1 ball. The perturbation is broadcast over the batch; the box is
enforced on each perturbed example, :math:`\mathrm{clip}_{[lo,hi]}(x + \delta)`,
since no single :math:`\delta` keeps every :math:`x + \delta` inside it.

Like :mod:`jaxadv.training`, the pieces compose with a user's own loop:

.. code-block:: python

    opt = optax.adam(1e-2)
    state = init_universal(x_train.shape[1:], opt, key=key, eps=0.1, norm="linf")
    step = jax.jit(functools.partial(universal_step, optimizer=opt, eps=0.1, norm="linf"))
    for epoch in range(epochs):
        for x, y in batches:
            state, metrics = step(logits_fn, state, x, y)
    delta = state.delta

and :func:`universal_perturbation` is that loop, ready-made.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxadv.losses import as_onehot, finite_rows, get_loss
from jaxadv.models import ModelStatic, combine_model, split_model
from jaxadv.success import hits
from jaxadv.threat_models import (
    cast_into_box,
    clip_to_bounds,
    norm_of,
    project,
    random_start,
    steepest_direction,
)
from jaxadv.training.checks import check_bounds
from jaxadv.typing import Array, ArrayLike, Bounds, LogitsFn, LossFn, Norm, PRNGKey
from jaxadv.validation import (
    check_in_bounds,
    check_inputs,
    check_key,
    check_labels,
    check_nonnegative,
    check_norm,
    check_steps,
    checked,
    value_check,
)

__all__ = [
    "UniversalState",
    "apply_universal",
    "fooling_rate",
    "init_universal",
    "steepest_sgd",
    "success_rate",
    "universal_perturbation",
    "universal_step",
]


class UniversalState(NamedTuple):
    """State of a universal perturbation under optimisation (a pytree of arrays).

    Attributes:
      delta: ``[*example_shape]`` float32 perturbation, inside the ball.
      opt_state: the optax state of ``delta``.
      step: int32 scalar, number of updates so far.
    """

    delta: Array
    opt_state: Any
    step: Array


def steepest_sgd(learning_rate: ArrayLike, *, norm: Norm = "linf") -> optax.GradientTransformation:
    r"""Normalised gradient descent for a norm: :math:`u = -\eta\, d_p(g)`, an optax transformation.

    :math:`d_p` is :func:`jaxadv.threat_models.steepest_direction` (``sign`` for
    L-inf, :math:`g/\|g\|_2` for L2, the sparse L1 direction), taken over the
    whole of each leaf of the gradient. For L-inf this is sign-SGD, the step of
    FGSM/PGD; fed with :math:`-\nabla J` by :func:`universal_step` it ascends
    :math:`J` by exactly :math:`\eta` in the norm per step.

    Args:
      learning_rate: :math:`\eta`, a scalar (the step length in the norm).
      norm: ``"linf"``, ``"l2"`` or ``"l1"``.

    Returns:
      A stateless ``optax.GradientTransformation``.
    """
    norm = check_norm(norm)
    check_nonnegative(learning_rate, "learning_rate")

    def init(params: Any) -> optax.EmptyState:
        del params
        return optax.EmptyState()

    def update(updates: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        del params

        def one(g: Array) -> Array:
            d = steepest_direction(g.reshape((1,) + g.shape), norm)[0]
            return (-jnp.asarray(learning_rate, jnp.float32) * d).astype(g.dtype)

        return jax.tree_util.tree_map(one, updates), state

    return optax.GradientTransformation(init, update)


_random_delta = jax.jit(random_start, static_argnums=(1, 3))


def _example_shape(example: Any) -> tuple[int, ...]:
    if isinstance(example, (tuple, list)) and all(isinstance(s, (int, np.integer)) for s in example):
        shape = tuple(int(s) for s in example)
    elif hasattr(example, "shape"):
        shape = tuple(example.shape)
    else:
        raise ValueError(
            "pass the shape of one example (a tuple of ints, e.g. x.shape[1:]) or one example, "
            f"got {example!r}"
        )
    if any(s < 1 for s in shape):
        raise ValueError(f"the example shape must have positive sizes, got {shape}")
    return shape


def init_universal(
    example: tuple[int, ...] | ArrayLike,
    optimizer: optax.GradientTransformation,
    *,
    key: PRNGKey | None = None,
    eps: ArrayLike | None = None,
    norm: Norm = "linf",
) -> UniversalState:
    r"""The starting :class:`UniversalState`.

    Args:
      example: the shape of one example (a tuple of ints, ``x.shape[1:]``) or
        one example (an array; only its shape is used).
      optimizer: the optax optimizer of the perturbation.
      key: ``None`` starts at :math:`\delta = 0`; a key starts uniformly at
        random in the ball (:func:`jaxadv.threat_models.random_start`), which
        then needs ``eps``.
      eps, norm: the ball of the random start.

    Returns:
      ``UniversalState(delta [*example_shape] float32, optimizer.init(delta), step=0)``.
    """
    shape = _example_shape(example)
    if key is None:
        delta = jnp.zeros(shape, jnp.float32)
    else:
        check_key(key)
        if eps is None:
            raise ValueError("a random start (key=...) needs eps= (the radius of the ball)")
        eps = check_nonnegative(eps, "eps")
        if eps.ndim or not bool(jnp.isfinite(eps)):
            raise ValueError(f"a random start needs a finite scalar eps, got {eps}")
        delta = _random_delta(key, (1,) + shape, eps, check_norm(norm))[0]
    return UniversalState(delta, optimizer.init(delta), jnp.zeros((), jnp.int32))


def _labels(z_clean: Array | None, y: Any, batch: int, num_classes: int, targeted: bool) -> Array:
    """``[batch]`` int32 labels or ``[batch, C]`` float32 one-hot of the step's loss."""
    if y is None:
        if targeted:
            raise ValueError("a targeted universal perturbation needs y= (the target class)")
        assert z_clean is not None
        return jnp.argmax(z_clean, axis=-1).astype(jnp.int32)
    if targeted and np.ndim(y) == 0:
        t = check_labels(jnp.reshape(jnp.asarray(y), (1,)), 1, num_classes)
        return jnp.broadcast_to(t, (batch,))
    return check_labels(y, batch, num_classes)


def universal_step(
    logits_fn: LogitsFn,
    state: UniversalState,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    optimizer: optax.GradientTransformation,
    eps: ArrayLike,
    norm: Norm = "linf",
    bounds: Bounds = (0.0, 1.0),
    loss: str | LossFn = "ce",
    targeted: bool = False,
) -> tuple[UniversalState, dict[str, Array]]:
    r"""One projected optax step of a universal perturbation on one batch (pure, jit-able).

    .. math::
        J(\delta) = \tfrac1B \textstyle\sum_b s\, L\big(f(\mathrm{clip}_{[lo,hi]}(x_b + \delta)), y_b\big),
        \quad (u, S') = \mathrm{opt.update}(-\nabla J, S, \delta),\quad
        \delta' = \Pi_{B_\epsilon}(\delta + u),

    :math:`s = +1` untargeted, :math:`-1` targeted. Examples whose logits are
    not finite contribute no gradient, and non-finite gradient entries count
    as 0, so :math:`\delta` stays finite. An empty batch returns ``state``
    unchanged.

    Traced: ``state``, ``x``, ``y``, ``eps``, ``bounds``, the model's
    parameters (when ``logits_fn`` is a pytree, e.g. from
    :func:`jaxadv.from_flax`). Static: ``optimizer``, ``norm``, ``loss``,
    ``targeted``, shapes. Under ``jit`` the value checks (``x`` in ``bounds``,
    labels in range, ``eps >= 0``) are skipped, as in the attacks; wrap with
    :func:`jaxadv.checked` to run them.

    Args:
      logits_fn: model ``x -> logits [B, C]``.
      state: from :func:`init_universal` or a previous step.
      x: ``[B, *example_shape]`` inputs inside ``bounds``.
      y: untargeted: ``[B]`` labels, or ``None`` for the model's clean
        predictions (the paper's criterion: change the prediction). Targeted:
        the target class, a scalar (one class for all) or ``[B]``.
      optimizer: the optax optimizer whose state is ``state.opt_state``.
      eps: scalar radius of the ball, in raw input units.
      norm: ``"linf"``, ``"l2"`` or ``"l1"``.
      bounds: ``(lo, hi)``, broadcasting against ``x``.
      loss: per-example loss ``(logits, onehot) -> [B]`` or its name (``"ce"``, ``"cw"`` ...).
      targeted: descend the loss of the target instead of ascending that of ``y``.

    Returns:
      ``(new_state, metrics)`` with scalar metrics measured at the *incoming*
      :math:`\delta` (the forward pass of the gradient): ``"loss"`` (mean
      unsigned loss), ``"success"`` (fraction of the batch predicting a class
      other than ``y``, or the target when targeted), and ``"norm"``
      (:math:`\|\delta'\|_p` after the step).
    """
    norm = check_norm(norm)
    loss_fn = get_loss(loss)
    x = check_inputs(x)
    if state.delta.shape != x.shape[1:]:
        raise ValueError(
            f"the perturbation has shape {state.delta.shape} but one example of x has shape {x.shape[1:]}"
        )
    eps = check_nonnegative(eps, "eps")
    if eps.ndim:
        raise ValueError(f"eps must be a scalar for a universal perturbation, got shape {eps.shape}")
    lo, hi = check_bounds(bounds)
    if x.shape[0] == 0:
        nan = jnp.full((), jnp.nan, jnp.float32)
        return state, {"loss": nan, "success": nan, "norm": norm_of(state.delta[None], norm)[0]}
    x32 = x.astype(jnp.float32)
    check_in_bounds(x32, lo, hi)
    z_clean = logits_fn(x32).astype(jnp.float32) if y is None else None
    num_classes = int(jax.eval_shape(logits_fn, x32).shape[-1]) if z_clean is None else z_clean.shape[-1]
    labels = _labels(z_clean, y, x.shape[0], num_classes, targeted)
    sign = -1.0 if targeted else 1.0

    def objective(delta: Array) -> tuple[Array, tuple[Array, Array]]:
        z = logits_fn(clip_to_bounds(x32 + delta, lo, hi)).astype(jnp.float32)
        per_example = loss_fn(z, as_onehot(labels, z.shape[-1]))
        per_example = jnp.where(finite_rows(z) & jnp.isfinite(per_example), per_example, 0.0)
        return sign * jnp.mean(per_example), (per_example, z)

    (_, (per_example, z)), g = jax.value_and_grad(objective, has_aux=True)(state.delta)
    g = jnp.where(jnp.isfinite(g), g, 0.0)
    updates, opt_state = optimizer.update(-g, state.opt_state, state.delta)
    delta = project((state.delta + updates)[None], eps, norm)[0].astype(jnp.float32)
    delta = jnp.where(jnp.isfinite(delta), delta, 0.0)
    metrics = {
        "loss": jnp.mean(per_example),
        "success": jnp.mean(hits(z, labels, targeted).astype(jnp.float32)),
        "norm": norm_of(delta[None], norm)[0],
    }
    return UniversalState(delta, opt_state, state.step + 1), metrics


def _split_batch(item: Any) -> tuple[Any, Any]:
    """A batch of the iterable: ``(x, y)`` or a bare ``x`` (then ``y = None``)."""
    if isinstance(item, (tuple, list)):
        if len(item) != 2:
            raise ValueError(f"each batch must be (x, y) or x, got a sequence of {len(item)} items")
        return item[0], item[1]
    return item, None


def universal_perturbation(
    logits_fn: LogitsFn,
    batches: Iterable[Any],
    *,
    eps: ArrayLike,
    norm: Norm = "linf",
    optimizer: optax.GradientTransformation | None = None,
    epochs: int = 1,
    key: PRNGKey | None = None,
    target: int | None = None,
    bounds: Bounds = (0.0, 1.0),
    loss: str | LossFn = "ce",
) -> Array:
    r"""A universal adversarial perturbation by projected stochastic gradient ascent.

    Runs :func:`init_universal` then :func:`universal_step` over every batch of
    ``batches``, ``epochs`` times, in the iterable's order, with one compiled
    step (a new batch shape compiles once more: drop an incomplete last batch
    for speed). The same ``key``, optimizer and batch order give the same
    :math:`\delta` as that loop written by hand.

    Args:
      logits_fn: model ``x -> logits [B, C]``.
      batches: the data, an iterable of ``(x, y)`` pairs (or bare ``x``, using
        the model's clean predictions as labels), ``x`` of shape ``[B, ...]``.
        For ``epochs > 1`` it must restart on each ``iter()`` (a list, or a
        loader object); a one-shot iterator or generator is refused.
      eps: scalar radius of the ball, raw input units.
      norm: ``"linf"``, ``"l2"`` or ``"l1"``.
      optimizer: an optax optimizer; default :func:`steepest_sgd` with step
        ``eps / 10`` (sign-SGD for L-inf).
      epochs: passes over ``batches`` (static, ``>= 1``).
      key: random start in the ball; ``None`` starts at 0.
      target: one target class for every input (targeted); ``None``:
        untargeted, the labels of ``batches`` (or the clean predictions where a
        batch has ``y = None``).
      bounds: ``(lo, hi)``, broadcasting against ``x``.
      loss: per-example loss or its name.

    Returns:
      :math:`\delta`, float32 of the shape of one example, with
      :math:`\|\delta\|_p \le \epsilon`; apply it with :func:`apply_universal`.
    """
    norm = check_norm(norm)
    epochs = check_steps(epochs, "epochs")
    if iter(batches) is batches and epochs > 1:  # type: ignore[comparison-overlap]
        raise ValueError(
            "batches is a one-shot iterator, so it cannot be replayed for epochs > 1: "
            "pass a list or an object whose iter() restarts the data"
        )
    eps = check_nonnegative(eps, "eps")
    if eps.ndim:
        raise ValueError(f"eps must be a scalar for a universal perturbation, got shape {eps.shape}")
    if optimizer is None:
        if not bool(jnp.isfinite(eps)):
            raise ValueError("eps=inf has no default step size: pass optimizer= (e.g. optax.adam(0.01))")
        optimizer = steepest_sgd(eps / 10, norm=norm)
    lo, hi = check_bounds(bounds)
    model, params = split_model(logits_fn)
    targeted = target is not None
    loss_fn = get_loss(loss)

    def run(params: Any, state: UniversalState, x: Array, y: Any, eps: Array, lo: Array, hi: Array) -> Any:
        return universal_step(
            combine_model(model, params), state, x, y, optimizer=optimizer, eps=eps, norm=norm,
            bounds=(lo, hi), loss=loss_fn, targeted=targeted,
        )  # fmt: skip

    # The value checks (x in bounds, labels in range) run inside the compiled step.
    step = jax.jit(checked(run))
    state: UniversalState | None = None
    y_target: Array | None = None
    for _ in range(epochs):
        seen = 0
        for item in batches:
            x, y = _split_batch(item)
            x = check_inputs(x)
            if x.shape[0] == 0:
                continue
            if state is None:
                state = init_universal(x.shape[1:], optimizer, key=key, eps=eps, norm=norm)
                if targeted:
                    num_classes = int(jax.eval_shape(logits_fn, x.astype(jnp.float32)).shape[-1])
                    y_target = _check_target(target, num_classes)
            err, (state, _) = step(params, state, x, y_target if targeted else y, eps, lo, hi)
            err.throw()
            seen += 1
        if seen == 0:
            raise ValueError("batches yielded no non-empty batch")
    assert state is not None
    return state.delta


def apply_universal(x: ArrayLike, delta: ArrayLike, *, bounds: Bounds = (0.0, 1.0)) -> Array:
    r""":math:`\mathrm{clip}_{[lo,hi]}(x + \delta)`, ``delta`` broadcast over the batch.

    Args:
      x: ``[B, *example_shape]`` inputs, finite and inside ``bounds``.
      delta: ``[*example_shape]`` perturbation, finite.
      bounds: ``(lo, hi)``.

    Returns:
      ``[B, *example_shape]``, dtype of ``x``, inside ``bounds`` (bounds the
      dtype cannot represent are rounded inward).

    Raises:
      ValueError: ``x`` or ``delta`` holds NaN/inf values, or ``x`` lies outside
        ``bounds`` (concrete values; under ``jit`` inside :func:`jaxadv.checked`).
    """
    x = check_inputs(x)
    delta = jnp.asarray(delta, jnp.float32)
    value_check(
        jnp.all(jnp.isfinite(delta)),
        "delta contains NaN/inf values ({count} of them)",
        count=jnp.sum(~jnp.isfinite(delta)),
    )
    if delta.shape != x.shape[1:]:
        raise ValueError(f"delta must have the shape of one example {x.shape[1:]}, got {delta.shape}")
    lo, hi = check_bounds(bounds)
    check_in_bounds(x.astype(jnp.float32), lo, hi)
    return _apply_universal(x, delta, lo, hi)


@jax.jit
def _apply_universal(x: Array, delta: Array, lo: Array, hi: Array) -> Array:
    return cast_into_box(x.astype(jnp.float32) + delta, x.dtype, lo, hi)


def success_rate(
    logits_fn: LogitsFn,
    x_adv: ArrayLike,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    target: int | None = None,
) -> Array:
    r"""The rate at which a dataset-level attack fools the model, over the examples it could fool.

    With :math:`r_b` the reference class (``y`` when given, else the clean
    prediction :math:`\arg\max f(x_b)`):

    * untargeted (``target=None``): the fraction of the examples whose clean
      prediction is :math:`r_b` for which :math:`\arg\max f(x'_b) \ne r_b`. With
      ``y=None`` this is the fooling rate of Moosavi-Dezfooli et al.: the
      fraction of inputs whose prediction changes; with labels, the fraction of
      correctly classified inputs that become misclassified.
    * targeted: the fraction of the examples whose clean prediction (and label,
      when given) is not ``target`` for which :math:`\arg\max f(x'_b) = t`.

    The denominator leaves out examples already fooled without the attack (as
    :func:`jaxadv.transfer` does); the result is NaN when none is left (e.g. an
    empty batch). Non-finite logits never count as fooled (:func:`jaxadv.success.hits`).

    Args:
      logits_fn: model ``x -> logits``.
      x_adv: ``[B, ...]`` attacked inputs.
      x: ``[B, ...]`` the clean inputs they come from.
      y: ``[B]`` integer labels, or ``None``.
      target: the target class (targeted rate), or ``None``.

    Returns:
      A float32 scalar in ``[0, 1]``, or NaN.
    """
    x = check_inputs(x)
    x_adv = check_inputs(x_adv)
    if x_adv.shape != x.shape:
        raise ValueError(f"x_adv must have the shape of x {x.shape}, got {x_adv.shape}")
    num_classes = int(jax.eval_shape(logits_fn, x.astype(jnp.float32)).shape[-1])
    if y is not None:
        y = check_labels(y, x.shape[0], num_classes)
    t = None if target is None else _check_target(target, num_classes)
    model, params = split_model(logits_fn)
    return _success_rate(model, params, x_adv, x, y, t)


@functools.partial(jax.jit, static_argnums=0)
def _success_rate(
    model: ModelStatic, params: Any, x_adv: Array, x: Array, y: Array | None, target: Array | None
) -> Array:
    f = combine_model(model, params)
    z_clean = f(x.astype(jnp.float32)).astype(jnp.float32)
    z_adv = f(x_adv.astype(jnp.float32)).astype(jnp.float32)
    reference = jnp.argmax(z_clean, axis=-1) if y is None else y
    if target is None:
        eligible = ~hits(z_clean, reference, False)
        success = hits(z_adv, reference, False)
    else:
        t = jnp.broadcast_to(target, reference.shape)
        eligible = ~hits(z_clean, t, True) & (reference != t) & finite_rows(z_clean)
        success = hits(z_adv, t, True)
    n = jnp.sum(eligible)
    return jnp.where(n > 0, jnp.sum(success & eligible) / jnp.maximum(n, 1), jnp.nan).astype(jnp.float32)


def _check_target(target: Any, num_classes: int) -> Array:
    t = np.asarray(target)
    if t.ndim != 0 or t.dtype.kind not in "iu":
        raise ValueError(f"target must be one integer class, got {target!r}")
    if not 0 <= int(t) < num_classes:
        raise ValueError(f"target must be a class in [0, {num_classes}), got {int(t)}")
    return jnp.asarray(int(t), jnp.int32)


def fooling_rate(
    logits_fn: LogitsFn,
    delta: ArrayLike,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    target: int | None = None,
    bounds: Bounds = (0.0, 1.0),
) -> Array:
    r"""Fooling rate of a universal perturbation: :func:`success_rate` of :math:`\mathrm{clip}(x + \delta)`.

    ``y=None, target=None``: the fraction of inputs whose prediction changes
    (the paper's definition). ``y`` given: the fraction of correctly classified
    inputs that :math:`\delta` makes misclassified (``1 -`` accuracy under
    :math:`\delta` over the examples correct without it). ``target``: the
    fraction of the inputs not already predicted as (or labelled) ``target``
    that :math:`\delta` sends to ``target``.

    Returns:
      A float32 scalar in ``[0, 1]`` (NaN if no example is eligible).
    """
    return success_rate(logits_fn, apply_universal(x, delta, bounds=bounds), x, y, target=target)
