r"""Placing a patch into images: where, how large and how turned, differentiably in the patch.

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
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxadv.threat_models import cast_into_box, clip_to_bounds
from jaxadv.training.checks import check_bounds
from jaxadv.typing import Array, ArrayLike, Bounds, PRNGKey
from jaxadv.validation import (
    check_in_bounds,
    check_inputs,
    check_key,
    is_traced,
)

__all__ = ["Placement", "apply_patch", "place_patch", "sample_placement"]

Range = tuple[float, float]
#: ``(row, col)``, or one pair per example ``[B, 2]``.
Location = ArrayLike | Sequence[float]
_DEFAULT_SCALES: Range = (0.8, 1.2)
_DEFAULT_ANGLES: Range = (-math.pi / 8, math.pi / 8)


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
