r"""Adversarial patches (Brown et al., 2017): one trainable patch that sends any image to a target class.

A patch :math:`p \in [lo, hi]^{h \times w \times C}` is pasted into images
:math:`x \in [lo, hi]^{H \times W \times C}` (NHWC) by a placement
:math:`\tau = (\text{location}, s, \theta)`: a translation, a scale and a
rotation. It is trained for robustness to the placement, by expectation over
transformations (EOT): with :math:`A(p, x, \tau)` the patched image and
:math:`t` the target class,

.. math::
    \min_{p \in [lo, hi]}\; \mathbb E_{x}\, \mathbb E_{\tau \sim T}\;
    L\big(f(A(p, x, \tau)),\, t\big),

:math:`T` drawing, per example and per step, the location uniformly over the
image, :math:`s \sim U[\text{scale\_range}]` and
:math:`\theta \sim U[\text{angle\_range}]`. Each step draws one placement per
example of the batch, takes the gradient of the mean loss in :math:`p`, lets an
optax optimizer turn it into an update and clips :math:`p` back into the box:
:math:`p \leftarrow \mathrm{clip}_{[lo,hi]}(p + \mathrm{opt}(\nabla_p))`.

Placement (a location, a scale and a rotation per image, differentiable in the
patch) is :mod:`jaxadv.universal.placement`'s.

Composes with a user's own loop like :mod:`jaxadv.training`:

.. code-block:: python

    opt = optax.adam(0.1)
    state = init_patch((3, 3, 1), opt, key=init_key)
    step = jax.jit(functools.partial(patch_step, optimizer=opt, target=7))
    for x, _ in batches:
        key, sub = jax.random.split(key)
        state, metrics = step(logits_fn, state, x, key=sub)

and :func:`adversarial_patch` is that loop, ready-made.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxadv.losses import as_onehot, finite_rows, get_loss
from jaxadv.models import combine_model, split_model
from jaxadv.success import hits
from jaxadv.threat_models import clip_to_bounds
from jaxadv.training.checks import check_bounds
from jaxadv.typing import Array, ArrayLike, Bounds, LogitsFn, LossFn, PRNGKey
from jaxadv.universal.perturbation import _check_target, _split_batch, success_rate
from jaxadv.universal.placement import (
    _DEFAULT_ANGLES,
    _DEFAULT_SCALES,
    Location,
    Range,
    _check_images,
    _check_patch,
    _check_range,
    _patch_shape,
    apply_patch,
    place_patch,
    sample_placement,
)
from jaxadv.validation import (
    check_in_bounds,
    check_key,
    check_labels,
    check_steps,
    checked,
    is_traced,
)

__all__ = [
    "PatchSizeResult",
    "PatchState",
    "adversarial_patch",
    "init_patch",
    "patch_step",
    "patch_success_rate",
    "success_by_patch_size",
]


class PatchState(NamedTuple):
    """State of a patch under optimisation (a pytree of arrays).

    Attributes:
      patch: ``[h, w, C]`` float32 patch, inside the bounds.
      opt_state: the optax state of ``patch``.
      step: int32 scalar, number of updates so far.
    """

    patch: Array
    opt_state: Any
    step: Array


# --- optimisation -------------------------------------------------------------


def init_patch(
    shape: tuple[int, int, int],
    optimizer: optax.GradientTransformation,
    *,
    key: PRNGKey | None = None,
    bounds: Bounds = (0.0, 1.0),
) -> PatchState:
    """The starting :class:`PatchState`.

    Args:
      shape: ``(h, w, C)``.
      optimizer: the optax optimizer of the patch.
      key: ``None`` starts at the middle of the box, :math:`(lo + hi) / 2`; a key
        starts uniformly at random in it.
      bounds: ``(lo, hi)``, finite, broadcasting against ``[h, w, C]``
        (scalars or per-channel ``[C]``).

    Returns:
      ``PatchState(patch [h, w, C] float32, optimizer.init(patch), step=0)``.
    """
    if len(shape) != 3 or any(int(s) < 1 for s in shape):
        raise ValueError(f"shape must be (h, w, C) with positive sizes, got {shape}")
    shape = (int(shape[0]), int(shape[1]), int(shape[2]))
    lo, hi = _patch_bounds(bounds, shape)
    if key is None:
        patch = jnp.broadcast_to((lo + hi) / 2, shape).astype(jnp.float32)
    else:
        patch = lo + jax.random.uniform(check_key(key), shape) * (hi - lo)
    return PatchState(patch, optimizer.init(patch), jnp.zeros((), jnp.int32))


def _patch_bounds(bounds: Bounds, shape: tuple[int, ...]) -> tuple[Array, Array]:
    lo, hi = check_bounds(bounds)
    try:
        lo, hi = jnp.broadcast_to(lo, shape), jnp.broadcast_to(hi, shape)
    except ValueError as e:
        raise ValueError(
            f"bounds must broadcast against the patch {shape} (scalars or per-channel [C]), "
            f"got shapes {jnp.shape(bounds[0])} and {jnp.shape(bounds[1])}"
        ) from e
    if not is_traced(lo, hi) and not bool(jnp.all(jnp.isfinite(lo) & jnp.isfinite(hi))):
        raise ValueError("a patch needs finite bounds")
    return lo, hi


def _target_labels(target: Any, batch: int, num_classes: int) -> Array:
    t = jnp.asarray(target)
    if t.ndim != 0 or not jnp.issubdtype(t.dtype, jnp.integer):
        raise ValueError(f"target must be one integer class, got {target!r}")
    return check_labels(jnp.broadcast_to(t, (batch,)), batch, num_classes)


def patch_step(
    logits_fn: LogitsFn,
    state: PatchState,
    x: ArrayLike,
    *,
    key: PRNGKey,
    optimizer: optax.GradientTransformation,
    target: ArrayLike,
    scale_range: Range = _DEFAULT_SCALES,
    angle_range: Range = _DEFAULT_ANGLES,
    bounds: Bounds = (0.0, 1.0),
    loss: str | LossFn = "ce",
) -> tuple[PatchState, dict[str, Array]]:
    r"""One EOT step of the patch on one batch (pure, jit-able).

    Draws :math:`\tau_b` = ``sample_placement(key, ...)`` (one per image), then

    .. math::
        J(p) = \tfrac1B \textstyle\sum_b L\big(f(A(p, x_b, \tau_b)), t\big),\quad
        (u, S') = \mathrm{opt.update}(\nabla J, S, p),\quad
        p' = \mathrm{clip}_{[lo,hi]}(p + u).

    Examples whose logits are not finite contribute no gradient; non-finite
    gradient entries count as 0. An empty batch returns ``state`` unchanged.

    Traced: ``state``, ``x``, ``key``, ``target``, ``bounds`` and the model's
    parameters (a pytree ``logits_fn``). Static: ``optimizer``, the ranges,
    ``loss``, shapes.

    Args:
      logits_fn: model ``x -> logits [B, C]``.
      state: from :func:`init_patch` or a previous step.
      x: ``[B, H, W, C]`` images inside ``bounds``.
      key: PRNG key of this step's placements.
      optimizer: the optax optimizer of ``state.opt_state``.
      target: the target class (an integer scalar).
      scale_range, angle_range: the placement distribution (radians).
      bounds: ``(lo, hi)``: scalars or per-channel.
      loss: per-example loss or its name; descended for the target.

    Returns:
      ``(new_state, metrics)``, scalar metrics at the incoming patch and this
      step's placements: ``"loss"`` (mean loss) and ``"success"`` (fraction of
      the batch predicted as ``target``).
    """
    loss_fn = get_loss(loss)
    x = _check_images(x)
    p = _check_patch(state.patch, x.shape)
    lo, hi = check_bounds(bounds)
    plo, phi = _patch_bounds(bounds, p.shape)
    scale_range = _check_range(scale_range, "scale_range", positive=True)
    angle_range = _check_range(angle_range, "angle_range")
    if x.shape[0] == 0:
        nan = jnp.full((), jnp.nan, jnp.float32)
        return state, {"loss": nan, "success": nan}
    x32 = x.astype(jnp.float32)
    check_in_bounds(x32, lo, hi)
    num_classes = int(jax.eval_shape(logits_fn, x32).shape[-1])
    labels = _target_labels(target, x.shape[0], num_classes)
    placement = sample_placement(key, x.shape, p.shape, scale_range=scale_range, angle_range=angle_range)

    def objective(patch: Array) -> tuple[Array, tuple[Array, Array]]:
        placed, mask = place_patch(
            patch, x.shape, location=placement.location, scale=placement.scale, angle=placement.angle
        )
        z = logits_fn(clip_to_bounds((1.0 - mask) * x32 + placed, lo, hi)).astype(jnp.float32)
        per_example = loss_fn(z, as_onehot(labels, num_classes))
        per_example = jnp.where(finite_rows(z) & jnp.isfinite(per_example), per_example, 0.0)
        return jnp.mean(per_example), (per_example, z)

    (_, (per_example, z)), g = jax.value_and_grad(objective, has_aux=True)(p)
    g = jnp.where(jnp.isfinite(g), g, 0.0)
    updates, opt_state = optimizer.update(g, state.opt_state, p)
    patch = clip_to_bounds(p + updates, plo, phi)
    patch = jnp.where(jnp.isfinite(patch), patch, p).astype(jnp.float32)
    metrics = {
        "loss": jnp.mean(per_example),
        "success": jnp.mean(hits(z, labels, True).astype(jnp.float32)),
    }
    return PatchState(patch, opt_state, state.step + 1), metrics


def adversarial_patch(
    logits_fn: LogitsFn,
    batches: Iterable[Any],
    *,
    target: int,
    size: int | tuple[int, int],
    key: PRNGKey,
    optimizer: optax.GradientTransformation | None = None,
    epochs: int = 1,
    scale_range: Range = _DEFAULT_SCALES,
    angle_range: Range = _DEFAULT_ANGLES,
    bounds: Bounds = (0.0, 1.0),
    loss: str | LossFn = "ce",
) -> tuple[Array, Callable[..., Array]]:
    r"""Train an adversarial patch for ``target`` over a dataset (Brown et al., 2017).

    ``init_key, key = jax.random.split(key)``; the patch starts uniformly at
    random (:func:`init_patch` with ``init_key``); then for every batch, in
    order, ``key, step_key = jax.random.split(key)`` and :func:`patch_step`
    with ``step_key``, ``epochs`` times; one compiled step (a new batch shape
    compiles once more).

    Args:
      logits_fn: model ``x -> logits [B, C]``.
      batches: iterable of ``(x, y)`` pairs or bare ``x`` (``y`` is not used),
        ``x`` of shape ``[B, H, W, C]``; for ``epochs > 1`` it must restart on
        each ``iter()``.
      target: the target class.
      size: side of a square patch, or ``(h, w)``; the channels are those of ``x``.
      key: PRNG key of the start and of the placements.
      optimizer: optax optimizer; default ``optax.adam(0.1 * (hi - lo))``
        (``hi - lo`` the largest range of the bounds).
      epochs: passes over ``batches`` (static, ``>= 1``).
      scale_range, angle_range: the placement distribution (angles in radians).
      bounds: ``(lo, hi)``: scalars or per-channel.
      loss: per-example loss or its name.

    Returns:
      ``(patch [h, w, C], apply_fn)``: ``apply_fn(x, key=k)`` pastes the patch
      at random placements from the training distribution, ``apply_fn(x,
      location=(r, c), scale=1.0, angle=0.0)`` at a fixed one
      (:func:`apply_patch` with the patch, ranges and bounds filled in).
    """
    epochs = check_steps(epochs, "epochs")
    if iter(batches) is batches and epochs > 1:  # type: ignore[comparison-overlap]
        raise ValueError(
            "batches is a one-shot iterator, so it cannot be replayed for epochs > 1: "
            "pass a list or an object whose iter() restarts the data"
        )
    scale_range = _check_range(scale_range, "scale_range", positive=True)
    angle_range = _check_range(angle_range, "angle_range")
    lo, hi = check_bounds(bounds)
    if optimizer is None:
        optimizer = optax.adam(0.1 * float(jnp.max(hi - lo)))
    model, params = split_model(logits_fn)
    loss_fn = get_loss(loss)
    if key is None:
        raise ValueError("key is required: it draws the patch's start and placements (key=jax.random.key(0))")
    check_key(key)
    init_key, key = jax.random.split(key)

    def run(params: Any, state: PatchState, x: Array, key: PRNGKey, t: Array, lo: Array, hi: Array) -> Any:
        return patch_step(
            combine_model(model, params), state, x, key=key, optimizer=optimizer, target=t,
            scale_range=scale_range, angle_range=angle_range, bounds=(lo, hi), loss=loss_fn,
        )  # fmt: skip

    # The value checks (x in bounds) run inside the compiled step.
    step = jax.jit(checked(run))
    state: PatchState | None = None
    t = jnp.zeros((), jnp.int32)
    for _ in range(epochs):
        seen = 0
        for item in batches:
            x, _ = _split_batch(item)
            x = _check_images(x)
            if x.shape[0] == 0:
                continue
            if state is None:
                state = init_patch(_patch_shape(size, x.shape[-1]), optimizer, key=init_key, bounds=bounds)
                _check_patch(state.patch, x.shape)
                t = _check_target(target, int(jax.eval_shape(logits_fn, x.astype(jnp.float32)).shape[-1]))
            key, step_key = jax.random.split(key)
            err, (state, _) = step(params, state, x, step_key, t, lo, hi)
            err.throw()
            seen += 1
        if seen == 0:
            raise ValueError("batches yielded no non-empty batch")
    assert state is not None
    apply_fn = functools.partial(
        apply_patch, patch=state.patch, scale_range=scale_range, angle_range=angle_range, bounds=bounds
    )
    return state.patch, apply_fn


def patch_success_rate(
    logits_fn: LogitsFn,
    patch: ArrayLike,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    target: int,
    key: PRNGKey | None = None,
    location: Location | None = None,
    scale: ArrayLike | None = None,
    angle: ArrayLike | None = None,
    scale_range: Range | None = _DEFAULT_SCALES,
    angle_range: Range | None = _DEFAULT_ANGLES,
    bounds: Bounds = (0.0, 1.0),
) -> Array:
    """Targeted success rate of a patch (:func:`jaxadv.universal.success_rate`).

    The fraction of the images not already predicted as (or labelled, when ``y``
    is given) ``target`` that the patched image sends to ``target``; the patch
    is pasted by :func:`apply_patch` (``key`` for random placements from the
    given ranges, by default those of training; or ``location``).

    Returns:
      A float32 scalar in ``[0, 1]`` (NaN if no image is eligible).
    """
    x_adv = apply_patch(
        x, patch, key=key, location=location, scale=scale, angle=angle,
        scale_range=scale_range, angle_range=angle_range, bounds=bounds,
    )  # fmt: skip
    return success_rate(logits_fn, x_adv, x, y, target=target)


class PatchSizeResult(NamedTuple):
    """One row of :func:`success_by_patch_size`.

    Attributes:
      size: the patch side.
      area: the patch's share of the image, :math:`s^2 / (H W)` (at scale 1).
      success_rate: targeted success rate of the trained patch.
      random_success_rate: the same for a uniformly random patch of that size.
    """

    size: int
    area: float
    success_rate: float
    random_success_rate: float


def success_by_patch_size(
    logits_fn: LogitsFn,
    batches: Iterable[Any],
    x_eval: ArrayLike,
    y_eval: ArrayLike | None = None,
    *,
    target: int,
    sizes: Sequence[int],
    key: PRNGKey,
    **kwargs: Any,
) -> list[PatchSizeResult]:
    """Targeted success rate against patch area: train one square patch per size and evaluate it.

    For each side ``s`` of ``sizes``, :func:`adversarial_patch` (``key`` folded
    with ``s``; ``kwargs`` such as ``epochs``, ``optimizer``, ``scale_range``,
    ``angle_range``, ``bounds`` are passed on) and :func:`patch_success_rate` on
    ``(x_eval, y_eval)`` at random placements from the training distribution,
    next to a random patch of the same size at the same placements. For a
    notebook:

    .. code-block:: python

        rows = success_by_patch_size(f, train_batches, x_test, y_test, target=0,
                                     sizes=[2, 3, 4], key=jax.random.key(0), epochs=5)
        for r in rows:
            print(f"side {r.size}: {100 * r.area:.0f}% of the image, "
                  f"{r.success_rate:.2f} (random patch {r.random_success_rate:.2f})")

    Returns:
      One :class:`PatchSizeResult` per size, in order.
    """
    x_eval = _check_images(x_eval)
    ranges = {k: kwargs[k] for k in ("scale_range", "angle_range") if k in kwargs}
    ranges.setdefault("scale_range", _DEFAULT_SCALES)
    ranges.setdefault("angle_range", _DEFAULT_ANGLES)
    bounds = kwargs.get("bounds", (0.0, 1.0))
    batches = list(batches) if iter(batches) is batches else batches  # type: ignore[comparison-overlap]
    rows = []
    for s in sizes:
        k_train, k_random, k_eval = jax.random.split(jax.random.fold_in(key, int(s)), 3)
        patch, _ = adversarial_patch(logits_fn, batches, target=target, size=s, key=k_train, **kwargs)
        shape = (patch.shape[0], patch.shape[1], patch.shape[2])
        random_patch = init_patch(shape, optax.identity(), key=k_random, bounds=bounds).patch
        rates = [
            float(
                patch_success_rate(
                    logits_fn, q, x_eval, y_eval, target=target, key=k_eval, bounds=bounds, **ranges
                )
            )
            for q in (patch, random_patch)
        ]
        area = patch.shape[0] * patch.shape[1] / (x_eval.shape[1] * x_eval.shape[2])
        rows.append(PatchSizeResult(int(s), area, rates[0], rates[1]))
    return rows
