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

Placement (differentiable in :math:`p`): output pixel :math:`(i, j)` reads the
patch at

.. math::
    \begin{pmatrix} u \\ v \end{pmatrix} =
    \frac1s \begin{pmatrix} \cos\theta & \sin\theta \\ -\sin\theta & \cos\theta \end{pmatrix}
    \begin{pmatrix} i - c_r \\ j - c_c \end{pmatrix} +
    \begin{pmatrix} (h-1)/2 \\ (w-1)/2 \end{pmatrix},
    \qquad (c_r, c_c) = \text{location} + \big((h-1)/2, (w-1)/2\big),

by bilinear interpolation with zeros outside the patch, which gives the placed
patch :math:`P`; interpolating a patch of ones the same way gives the mask
:math:`M \in [0, 1]`. The patched image is
:math:`A = \mathrm{clip}_{[lo,hi]}((1 - M)\, x + P)`, a convex combination of
``x`` and patch values. ``location`` is the ``(row, col)`` of the patch's
top-left pixel when :math:`s = 1, \theta = 0`; scaling and rotation are about
the patch centre, and :math:`\theta > 0` turns the patch counterclockwise as
displayed (rows down): :math:`\theta = \pi/2` pastes ``np.rot90(patch)``.
With :math:`s = 1`, :math:`\theta = 0` and an integer location the patch
appears verbatim (:math:`M \in \{0, 1\}`), and pixels with :math:`M = 0` are
never changed.

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
import math
from collections.abc import Iterable, Sequence
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxadv.losses import as_onehot, finite_rows, get_loss
from jaxadv.models import combine_model, split_model
from jaxadv.success import hits
from jaxadv.threat_models import cast_into_box, clip_to_bounds
from jaxadv.training.checks import check_bounds
from jaxadv.typing import Array, ArrayLike, Bounds, LogitsFn, LossFn, PRNGKey
from jaxadv.universal.perturbation import _check_target, _split_batch, success_rate
from jaxadv.validation import (
    check_in_bounds,
    check_inputs,
    check_key,
    check_labels,
    check_steps,
    checked,
    is_traced,
)

__all__ = [
    "PatchSizeResult",
    "PatchState",
    "Placement",
    "adversarial_patch",
    "apply_patch",
    "init_patch",
    "patch_step",
    "patch_success_rate",
    "place_patch",
    "sample_placement",
    "success_by_patch_size",
]

Range = tuple[float, float]
#: ``(row, col)``, or one pair per example ``[B, 2]``.
Location = ArrayLike | Sequence[float]
_DEFAULT_SCALES: Range = (0.8, 1.2)
_DEFAULT_ANGLES: Range = (-math.pi / 8, math.pi / 8)


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


class Placement(NamedTuple):
    """Where and how a patch is pasted into each image of a batch.

    Attributes:
      location: ``[B, 2]`` float32 ``(row, col)`` of the patch's top-left pixel
        before scaling and rotation (both are about the patch centre).
      scale: ``[B]`` float32 scale factor :math:`s > 0`.
      angle: ``[B]`` float32 rotation in radians (counterclockwise as displayed).
    """

    location: Array
    scale: Array
    angle: Array


# --- checks -------------------------------------------------------------------


def _check_images(x: Any) -> Array:
    x = check_inputs(x)
    if x.ndim != 4:
        raise ValueError(f"x must be a batch of NHWC images [B, H, W, C], got shape {x.shape}")
    return x


def _check_patch(patch: Any, x_shape: tuple[int, ...]) -> Array:
    patch = jnp.asarray(patch)
    if not jnp.issubdtype(patch.dtype, jnp.floating):
        raise ValueError(f"patch must be a floating-point array, got dtype {patch.dtype}")
    if patch.ndim != 3:
        raise ValueError(f"patch must have shape [h, w, C], got {patch.shape}")
    if patch.shape[-1] != x_shape[-1]:
        raise ValueError(f"patch has {patch.shape[-1]} channels but the images have {x_shape[-1]}")
    if patch.shape[0] > x_shape[1] or patch.shape[1] > x_shape[2]:
        raise ValueError(f"patch {patch.shape[:2]} is larger than the images {x_shape[1:3]}")
    return patch.astype(jnp.float32)


def _check_range(value: Any, name: str, *, positive: bool = False) -> Range:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"{name} must be a pair (low, high), got {value!r}")
    low, high = float(value[0]), float(value[1])
    if not (math.isfinite(low) and math.isfinite(high)) or low > high:
        raise ValueError(f"{name} must be finite with low <= high, got {value!r}")
    if positive and low <= 0:
        raise ValueError(f"{name} must hold positive scales, got {value!r}")
    return low, high


def _patch_shape(size: Any, channels: int) -> tuple[int, int, int]:
    if isinstance(size, (int, np.integer)):
        h = w = int(size)
    elif isinstance(size, (tuple, list)) and len(size) == 2:
        h, w = (int(s) for s in size)
    else:
        raise ValueError(f"size must be an int (a square side) or a pair (h, w), got {size!r}")
    if h < 1 or w < 1:
        raise ValueError(f"size must be >= 1, got {size!r}")
    return h, w, channels


def _per_example(value: Any, batch: int, tail: tuple[int, ...], name: str) -> Array:
    """A scalar (or ``tail``-shaped) value, or one per example, as ``[batch, *tail]`` float32."""
    v = jnp.asarray(value, jnp.float32)
    if v.shape == tail:
        return jnp.broadcast_to(v, (batch,) + tail)
    if v.shape == (batch,) + tail:
        return v
    want = f"{tail} or [batch, *{tail}]" if tail else "a scalar or [batch]"
    raise ValueError(f"{name} must have shape {want} (batch={batch}), got {v.shape}")


# --- placement ----------------------------------------------------------------


def _place_one(
    patch: Array, height: int, width: int, location: Array, scale: Array, angle: Array
) -> tuple[Array, Array]:
    """One example's placed patch ``[H, W, C]`` (zero outside) and mask ``[H, W, 1]``."""
    h, w, c = patch.shape
    rows, cols = jnp.meshgrid(
        jnp.arange(height, dtype=jnp.float32), jnp.arange(width, dtype=jnp.float32), indexing="ij"
    )
    mid_r, mid_c = (h - 1) / 2, (w - 1) / 2
    dr = rows - (location[0] + mid_r)
    dc = cols - (location[1] + mid_c)
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    u = (cos * dr + sin * dc) / scale + mid_r
    v = (cos * dc - sin * dr) / scale + mid_c
    u0, v0 = jnp.floor(u), jnp.floor(v)
    a, b = u - u0, v - v0
    # Patch and mask are interpolated together: channel c of ``src`` is all ones.
    src = jnp.concatenate([patch, jnp.ones((h, w, 1), patch.dtype)], axis=-1).reshape(h * w, c + 1)
    out = jnp.zeros((height, width, c + 1), jnp.float32)
    for du, dv, weight in (
        (0, 0, (1 - a) * (1 - b)),
        (1, 0, a * (1 - b)),
        (0, 1, (1 - a) * b),
        (1, 1, a * b),
    ):
        ri, ci = u0 + du, v0 + dv
        inside = (ri >= 0) & (ri <= h - 1) & (ci >= 0) & (ci <= w - 1)
        index = jnp.clip(ri, 0, h - 1).astype(jnp.int32) * w + jnp.clip(ci, 0, w - 1).astype(jnp.int32)
        out = out + jnp.where(inside[..., None], weight[..., None] * src[index], 0.0)
    return out[..., :c], out[..., c:]


def place_patch(
    patch: ArrayLike,
    shape: tuple[int, ...],
    *,
    location: Location,
    scale: ArrayLike = 1.0,
    angle: ArrayLike = 0.0,
) -> tuple[Array, Array]:
    r"""The placed patch :math:`P` and its mask :math:`M` for a batch of images (see the module docstring).

    Differentiable in ``patch`` (and in the placement, almost everywhere).

    Args:
      patch: ``[h, w, C]`` patch.
      shape: the images' shape ``(B, H, W, C)``.
      location: ``[2]`` or ``[B, 2]`` ``(row, col)`` of the top-left pixel at
        scale 1 and angle 0 (floats allowed; integers place pixels exactly).
      scale: scalar or ``[B]`` scale factor, ``> 0``.
      angle: scalar or ``[B]`` rotation in radians.

    Returns:
      ``(P [B, H, W, C], M [B, H, W, 1])`` float32: :math:`P` is zero and
      :math:`M` is zero where the patch does not reach; :math:`0 \le M \le 1`
      and :math:`P` is a combination of patch values with weights summing to
      :math:`M`.
    """
    if len(shape) != 4:
        raise ValueError(f"shape must be the NHWC shape (B, H, W, C) of the images, got {shape}")
    p = _check_patch(patch, tuple(shape))
    batch, height, width = shape[0], shape[1], shape[2]
    loc = _per_example(location, batch, (2,), "location")
    s = _per_example(scale, batch, (), "scale")
    if not is_traced(s) and not np.all(np.asarray(s) > 0):
        raise ValueError("scale must be > 0")
    th = _per_example(angle, batch, (), "angle")
    return _place_batch(p, height, width, loc, s, th)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _place_batch(
    patch: Array, height: int, width: int, location: Array, scale: Array, angle: Array
) -> tuple[Array, Array]:
    return jax.vmap(functools.partial(_place_one, patch, height, width))(location, scale, angle)


def sample_placement(
    key: PRNGKey,
    shape: tuple[int, ...],
    patch_shape: tuple[int, ...],
    *,
    scale_range: Range = _DEFAULT_SCALES,
    angle_range: Range = _DEFAULT_ANGLES,
) -> Placement:
    r"""Random placements, one per image: :math:`s \sim U[\text{scale\_range}]`,
    :math:`\theta \sim U[\text{angle\_range}]`, and the patch centre uniform over
    the positions where the scaled, unrotated patch lies inside the image
    (the image centre when it cannot).

    Args:
      key: a PRNG key.
      shape: the images' shape ``(B, H, W, C)``.
      patch_shape: ``(h, w, ...)``.
      scale_range, angle_range: ``(low, high)`` (radians for the angle).

    Returns:
      A :class:`Placement` of ``B`` placements.
    """
    check_key(key)
    scale_range = _check_range(scale_range, "scale_range", positive=True)
    angle_range = _check_range(angle_range, "angle_range")
    if len(shape) != 4 or len(patch_shape) < 2:
        raise ValueError(
            f"shape must be (B, H, W, C) and patch_shape (h, w, ...), got {shape}, {patch_shape}"
        )
    dims = (int(shape[0]), int(shape[1]), int(shape[2]), int(patch_shape[0]), int(patch_shape[1]))
    return _sample(key, dims, scale_range, angle_range)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _sample(key: PRNGKey, dims: tuple[int, ...], scale_range: Range, angle_range: Range) -> Placement:
    batch, height, width, h, w = dims
    # One draw of four uniforms per image (scale, angle, row, column).
    u = jax.random.uniform(key, (batch, 4))
    s = scale_range[0] + u[:, 0] * (scale_range[1] - scale_range[0])
    th = angle_range[0] + u[:, 1] * (angle_range[1] - angle_range[0])
    centres = []
    for size, extent, ui in ((height, h, u[:, 2]), (width, w, u[:, 3])):
        low = s * extent / 2 - 0.5
        high = size - 0.5 - s * extent / 2
        centres.append(jnp.where(low <= high, low + ui * (high - low), (size - 1) / 2))
    location = jnp.stack([centres[0] - (h - 1) / 2, centres[1] - (w - 1) / 2], axis=-1)
    return Placement(location, s, th)


def apply_patch(
    x: ArrayLike,
    patch: ArrayLike,
    *,
    key: PRNGKey | None = None,
    location: Location | None = None,
    scale: ArrayLike | None = None,
    angle: ArrayLike | None = None,
    scale_range: Range | None = None,
    angle_range: Range | None = None,
    bounds: Bounds = (0.0, 1.0),
) -> Array:
    r"""Paste ``patch`` into every image of ``x``: :math:`\mathrm{clip}_{[lo,hi]}((1 - M)\,x + P)`.

    Give exactly one of ``location`` (deterministic) and ``key`` (random):

    * ``location``: ``[2]`` or ``[B, 2]`` top-left ``(row, col)``, with
      ``scale`` (default 1) and ``angle`` (default 0, radians), each a scalar
      or ``[B]``. Scale 1, angle 0 and an integer location paste the patch
      verbatim.
    * ``key``: a random :class:`Placement` per image (:func:`sample_placement`)
      with ``scale_range`` (default ``(1, 1)``) and ``angle_range`` (default
      ``(0, 0)``); a given ``scale`` or ``angle`` replaces the random one.

    Args:
      x: ``[B, H, W, C]`` images, finite and inside ``bounds``.
      patch: ``[h, w, C]`` patch inside ``bounds``.
      bounds: ``(lo, hi)``, broadcasting against ``x``.

    Returns:
      ``[B, H, W, C]``, dtype of ``x``; pixels the patch does not reach
      (:math:`M = 0`) are those of ``x``.

    Raises:
      ValueError: ``x`` holds NaN/inf values or lies outside ``bounds``
        (concrete values; under ``jit`` inside :func:`jaxadv.checked`).
    """
    x = _check_images(x)
    p = _check_patch(patch, x.shape)
    if (key is None) == (location is None):
        raise ValueError("pass exactly one of location= (a fixed placement) and key= (random placements)")
    if key is not None:
        placement = sample_placement(
            key,
            x.shape,
            p.shape,
            scale_range=scale_range or (1.0, 1.0),
            angle_range=angle_range or (0.0, 0.0),
        )
        location = placement.location
        scale = placement.scale if scale is None else scale
        angle = placement.angle if angle is None else angle
    assert location is not None
    lo, hi = check_bounds(bounds)
    check_in_bounds(x.astype(jnp.float32), lo, hi)
    batch = x.shape[0]
    loc = _per_example(location, batch, (2,), "location")
    s = _per_example(1.0 if scale is None else scale, batch, (), "scale")
    if not is_traced(s) and not np.all(np.asarray(s) > 0):
        raise ValueError("scale must be > 0")
    th = _per_example(0.0 if angle is None else angle, batch, (), "angle")
    return _paste(x, p, loc, s, th, lo, hi)


@jax.jit
def _paste(
    x: Array, patch: Array, location: Array, scale: Array, angle: Array, lo: Array, hi: Array
) -> Array:
    placed, mask = _place_batch(patch, x.shape[1], x.shape[2], location, scale, angle)
    out = clip_to_bounds((1.0 - mask) * x.astype(jnp.float32) + placed, lo, hi)
    return cast_into_box(out, x.dtype, lo, hi)


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
