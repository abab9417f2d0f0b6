r"""Gradient sources: where an iterative attack's ascent direction comes from.

A source is called as ``source(model, x, labels, *, key, targeted) -> Gradient``
with ``key`` the ``[batch]`` keys of the step, one per example
(:mod:`jaxadv.keys`), and ``model(x, keys) -> logits``, ``keys`` one per row of
``x`` (a deterministic model ignores them; a randomised one draws each row
from its key). Every random number a source draws for an example comes from
that example's key, so an example's gradient does not depend on the rest of
its batch. It
returns the ascent gradient of :math:`s \sum_b L(f(x_b), y_b)` (:math:`s = -1`
when ``targeted``) or an estimate of it, with the examples where that gradient
could not be computed (non-finite logits or gradient) marked and their gradient
set to zero.

Sources are frozen dataclasses registered as pytrees: their array
hyperparameters (a diversity probability, a smoothing kernel) are leaves,
traced inside compiled attacks; their structure (the loss, the number of
draws, a transform function) is static. Wrappers (:class:`EOT`,
:class:`InputDiversity`, :class:`TranslationInvariant`) take another source,
so they stack: ``translation_invariant(input_diversity(loss_gradient()))`` is
the gradient of TI-DI-FGSM. A source with numeric hyperparameters has a
``check()`` that refuses NaN, infinite or out-of-range values with a
``ValueError`` (when they are concrete); the factories and
:class:`jaxadv.compose.Attack` call it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Protocol, TypeVar

import jax
import jax.numpy as jnp
import numpy as np

from jaxadv._core.rows import select_rows
from jaxadv.gradients import loss_and_grad
from jaxadv.keys import draw_rows, fold_rows, per_row, row_keys, split_rows
from jaxadv.losses import cross_entropy, finite_rows, get_loss
from jaxadv.typing import Array, ArrayLike, LossFn, PRNGKey
from jaxadv.validation import check_finite

__all__ = [
    "EOT",
    "Gradient",
    "GradientSource",
    "InputDiversity",
    "LossGradient",
    "Model",
    "TranslationInvariant",
    "diverse_inputs",
    "eot",
    "finite_step",
    "gaussian_kernel",
    "gaussian_kernel_1d",
    "input_diversity",
    "loss_gradient",
    "translation_invariant",
]

Model = Callable[[Array, Array], Array]
"""``model(x, keys) -> logits``, ``keys`` ``[batch]`` (one per row of ``x``): how
sources call the model (the loop adapts deterministic models, which ignore the
keys, and calls a randomised one row by row, :func:`jaxadv.keys.per_row`)."""


class Gradient(NamedTuple):
    """What a gradient source returns.

    Attributes:
      loss: ``[batch]`` per-example loss (the mean over draws for :class:`EOT`).
      logits: ``[batch, C]`` logits of the model at the queried ``x`` itself, or
        ``None`` when the source only saw transformed inputs.
      grad: ``[batch, ...]`` ascent gradient (0 where ``ok`` is false).
      ok: ``[batch]`` bool: logits and gradient were finite.
    """

    loss: Array
    logits: Array | None
    grad: Array
    ok: Array


class GradientSource(Protocol):
    """``source(model, x, labels, *, key, targeted) -> Gradient``."""

    def __call__(
        self, model: Model, x: Array, labels: Array, *, key: PRNGKey, targeted: bool
    ) -> Gradient: ...


def finite_step(z: Array, g: Array) -> Array:
    """``[batch]`` bool: the logits ``z`` and the gradient ``g`` of an example are finite,
    so a step may be taken from it."""
    return finite_rows(z) & jnp.all(jnp.isfinite(g.reshape(g.shape[0], -1)), axis=1)


def _zero_where_bad(g: Array, ok: Array) -> Array:
    return select_rows(ok, g, 0.0)


_T = TypeVar("_T", bound=type)


def _pytree(*, data: tuple[str, ...], meta: tuple[str, ...]) -> Callable[[_T], _T]:
    """Register a frozen dataclass as a pytree with ``data`` leaves and ``meta`` structure.

    Not :func:`jax.tree_util.register_dataclass`: with jax 0.10 its tree structures
    compare equal across classes with the same fields (``Momentum(1.0)`` and
    ``Nesterov(1.0)``), and a jit cache that finds one under the other's hash runs
    the other's program (NI-FGSM ran as MI-FGSM). Here the class is part of the
    structure, so two parts are the same structure only if they are the same class.
    """

    def wrap(cls: _T) -> _T:
        fields = {f.name for f in dataclasses.fields(cls)}
        if fields != set(data) | set(meta) or set(data) & set(meta):
            raise TypeError(f"{cls!r}: data {data} and meta {meta} must split its fields {sorted(fields)}")
        keys = tuple(jax.tree_util.GetAttrKey(name) for name in data)

        def aux(obj: Any) -> tuple[Any, tuple[Any, ...]]:
            return cls, tuple(getattr(obj, name) for name in meta)

        def flatten_with_keys(obj: Any) -> tuple[Any, Any]:
            return tuple((k, getattr(obj, name)) for k, name in zip(keys, data, strict=True)), aux(obj)

        def flatten(obj: Any) -> tuple[Any, Any]:
            return tuple(getattr(obj, name) for name in data), aux(obj)

        def unflatten(aux: Any, children: Any) -> Any:
            # Leaves may be tracers, sentinels or None (tree utilities), so no checks run.
            obj: Any = object.__new__(cls)
            for name, value in (*zip(data, children, strict=True), *zip(meta, aux[1], strict=True)):
                object.__setattr__(obj, name, value)
            return obj

        jax.tree_util.register_pytree_with_keys(cls, flatten_with_keys, unflatten, flatten)
        return cls

    return wrap


@_pytree(data=(), meta=("loss",))
@dataclasses.dataclass(frozen=True)
class LossGradient:
    """The exact input gradient of a per-example loss (``loss(logits, onehot) -> [batch]``)."""

    loss: LossFn = cross_entropy

    def __post_init__(self) -> None:
        object.__setattr__(self, "loss", get_loss(self.loss))

    def __call__(self, model: Model, x: Array, labels: Array, *, key: PRNGKey, targeted: bool) -> Gradient:
        loss, z, g = loss_and_grad(lambda xi: model(xi, key), x, labels, loss=self.loss, targeted=targeted)
        ok = finite_step(z, g)
        return Gradient(loss, z, _zero_where_bad(g, ok), ok)


@_pytree(data=("source",), meta=("num_samples", "transform"))
@dataclasses.dataclass(frozen=True)
class EOT:
    r"""Expectation over transformation (Athalye et al., 2018).

    The mean gradient over ``num_samples`` independent draws
    :math:`\frac1n\sum_{j} \nabla_x L(f_{k_j}(T_{k_j}(x)), y)`, where each draw of
    each example has its own key :math:`k_j` (folded from the example's step
    key): the key reaches the model (a randomised model ``model(x, key)``, e.g.
    dropout left on) and the optional ``transform(key, x) -> x`` (a random input
    transformation), both applied one example at a time with that example's key
    (:func:`jaxadv.keys.per_row`). Draws run one after another (a scan), so
    memory is that of one gradient. An example whose gradient is not finite in
    some draw is not stepped.
    """

    source: Any
    num_samples: int = 1
    transform: Callable[[PRNGKey, Array], Array] | None = None

    needs_key = True  # draws per step (not a field)

    def __call__(self, model: Model, x: Array, labels: Array, *, key: PRNGKey, targeted: bool) -> Gradient:
        transform = None if self.transform is None else _transform_rows(self.transform)
        key = row_keys(key, x.shape[0])  # one key, or one per example

        def drawn(xi: Array, keys: Array) -> Array:
            # ``keys``: one per row of ``xi``, handed down by the wrapped source.
            k_model, k_transform = split_rows(keys)
            return model(xi if transform is None else transform(xi, k_transform), k_model)

        def draw(carry: tuple[Array, Array, Array], j: Array) -> tuple[tuple[Array, Array, Array], None]:
            loss_sum, grad_sum, ok = carry
            g = self.source(drawn, x, labels, key=fold_rows(key, j), targeted=targeted)
            return (loss_sum + g.loss, grad_sum + g.grad, ok & g.ok), None

        b = x.shape[0]
        init = (jnp.zeros((b,), jnp.float32), jnp.zeros(x.shape, jnp.float32), jnp.ones((b,), bool))
        (loss_sum, grad_sum, ok), _ = jax.lax.scan(draw, init, jnp.arange(self.num_samples))
        n = float(self.num_samples)
        return Gradient(loss_sum / n, None, _zero_where_bad(grad_sum / n, ok), ok)


def _transform_rows(transform: Callable[[PRNGKey, Array], Array]) -> Callable[[Array, Array], Array]:
    """A random transformation ``transform(key, x)`` applied one example at a time."""
    return per_row(lambda xi, k: transform(k, xi))


def _resize_pad_one(key: PRNGKey, xi: Array, rate: Array, axes: tuple[int, int]) -> Array:
    ks, kh, kw = jax.random.split(key, 3)
    scale = jax.random.uniform(ks, (), minval=rate, maxval=1.0)
    out = xi
    mask = jnp.ones((), bool)
    for axis, k in zip(axes, (kh, kw), strict=True):
        size = xi.shape[axis]
        new = jnp.clip(jnp.floor(size * scale), 1, size).astype(jnp.int32)
        offset = jnp.floor(jax.random.uniform(k, ()) * (size - new + 1)).astype(jnp.int32)
        pos = jnp.arange(size) - offset
        # Bilinear resampling of `size` pixels onto `new` (pixel centres aligned, no
        # antialiasing): every source pixel keeps a share of the gradient.
        c = jnp.maximum((pos.astype(jnp.float32) + 0.5) * (size / new.astype(jnp.float32)) - 0.5, 0.0)
        i0 = jnp.clip(jnp.floor(c).astype(jnp.int32), 0, size - 1)
        i1 = jnp.clip(i0 + 1, 0, size - 1)
        shape = [1] * xi.ndim
        shape[axis] = size
        w = (c - jnp.floor(c)).reshape(shape)
        out = jnp.take(out, i0, axis=axis) * (1.0 - w) + jnp.take(out, i1, axis=axis) * w
        mask = mask & ((pos >= 0) & (pos < new)).reshape(shape)
    return jnp.where(mask, out, 0.0)


def _check_spatial_axes(spatial_axes: tuple[int, ...], ndim: int) -> tuple[int, int]:
    axes = tuple(a - 1 for a in spatial_axes)
    if len(axes) != 2 or min(axes) < 0 or max(axes) >= ndim - 1:
        raise ValueError(f"spatial_axes must name two non-batch axes of x, got {spatial_axes}")
    return axes[0], axes[1]


def diverse_inputs(
    key: PRNGKey,
    x: Array,
    *,
    prob: ArrayLike = 0.5,
    resize_rate: ArrayLike = 0.9,
    spatial_axes: tuple[int, int] = (1, 2),
) -> Array:
    r"""Random resize-and-pad of each example (the input diversity of Xie et al., 2019).

    With probability ``prob`` (independently per example) the image is shrunk by
    a factor :math:`s \sim U[\text{resize\_rate}, 1]` along both spatial axes
    (bilinear, pixel centres aligned, no antialiasing), then zero-padded back to
    its original size at a uniformly random offset; otherwise it is left unchanged. Differentiable in
    ``x`` (a gather), shapes static, everything traced. Each example draws from its
    own key.

    Args:
      key: one PRNG key (row ``i`` then uses ``fold_in(key, i)``) or ``[batch]``
        keys, one per example (:func:`jaxadv.keys.row_keys`).
      x: ``[batch, ...]`` images.
      prob: probability of transforming an example (traced).
      resize_rate: smallest shrink factor, in ``(0, 1]`` (traced).
      spatial_axes: the two spatial axes of ``x`` (static; ``(1, 2)`` for NHWC).

    Returns:
      The transformed batch, shape and dtype of ``x``.
    """
    axes = _check_spatial_axes(spatial_axes, x.ndim)
    k_apply, k_tf = split_rows(row_keys(key, x.shape[0]))
    prob = check_finite(prob, "prob", minimum=0.0, maximum=1.0)
    rate = check_finite(resize_rate, "resize_rate", minimum=0.0, maximum=1.0, above=True)
    moved = jax.vmap(lambda k, xi: _resize_pad_one(k, xi, rate, axes))(k_tf, x)
    p = jnp.asarray(prob, jnp.float32)
    apply = draw_rows(lambda k: jax.random.bernoulli(k, p), k_apply)
    return select_rows(apply, moved, x).astype(x.dtype)


# Wrappers hand the wrapped source the step's keys folded with this tag, and draw
# their own randomness from the keys that source calls the model with.
_INNER = 0x1D


@_pytree(data=("source", "prob", "resize_rate"), meta=("spatial_axes",))
@dataclasses.dataclass(frozen=True)
class InputDiversity:
    """The gradient taken through :func:`diverse_inputs` (DI, Xie et al., 2019), each
    example's transform drawn from its own key."""

    source: Any
    prob: Any = 0.5
    resize_rate: Any = 0.9
    spatial_axes: tuple[int, int] = (1, 2)

    needs_key = True  # a random transform per step (not a field)

    def check(self) -> None:
        """Refuse ``prob`` outside ``[0, 1]`` and ``resize_rate`` outside ``(0, 1]`` (NaN included)."""
        check_finite(self.prob, "prob", minimum=0.0, maximum=1.0)
        check_finite(self.resize_rate, "resize_rate", minimum=0.0, maximum=1.0, above=True)

    def __call__(self, model: Model, x: Array, labels: Array, *, key: PRNGKey, targeted: bool) -> Gradient:
        prob, rate, axes = self.prob, self.resize_rate, self.spatial_axes

        def diverse(xi: Array, keys: Array) -> Array:
            # ``keys``: one per row of ``xi``, handed down by the wrapped source.
            k_model, k_diverse = split_rows(keys)
            moved = diverse_inputs(k_diverse, xi, prob=prob, resize_rate=rate, spatial_axes=axes)
            return model(moved, k_model)

        g = self.source(diverse, x, labels, key=fold_rows(key, _INNER), targeted=targeted)
        return g._replace(logits=None)


def gaussian_kernel(size: int = 15, nsig: float = 3.0) -> np.ndarray:
    r"""The ``[size, size]`` smoothing kernel of TI-FGSM (Dong et al., 2019).

    :math:`K_{ij} \propto \phi(t_i)\phi(t_j)` with :math:`t` the ``size`` points
    evenly spaced on :math:`[-\text{nsig}, \text{nsig}]` and :math:`\phi` the
    standard normal density, normalised to sum to 1.
    """
    k = gaussian_kernel_1d(size, nsig).astype(np.float64)
    return np.outer(k, k).astype(np.float32)


def gaussian_kernel_1d(size: int = 15, nsig: float = 3.0) -> np.ndarray:
    r"""The ``[size]`` factor :math:`k` of :func:`gaussian_kernel`: :math:`K = k k^\top`,
    :math:`k_i \propto \phi(t_i)` normalised to sum to 1."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"kernel_size must be a Python int >= 1 (it is static), got {size!r}")
    if isinstance(nsig, jax.core.Tracer) or not np.isfinite(nsig) or not nsig > 0:
        raise ValueError(f"nsig must be a finite Python float > 0 (it is static), got {nsig!r}")
    pdf = np.exp(-0.5 * np.linspace(-nsig, nsig, size) ** 2)
    return (pdf / pdf.sum()).astype(np.float32)


@_pytree(data=("source", "kernel"), meta=("spatial_axes",))
@dataclasses.dataclass(frozen=True)
class TranslationInvariant:
    r"""The gradient convolved with a kernel over the spatial axes, per channel
    (TI, Dong et al., 2019): the step of an ensemble of translated images.

    ``kernel``: ``[k, k]`` (traced), e.g. :func:`gaussian_kernel`, or ``[k]`` for
    the separable kernel :math:`K_{ij} = k_i k_j` (the Gaussian is one), which is
    applied as two banded matrix products, one per spatial axis, instead of a
    depthwise convolution (the same numbers, and much faster on XLA:CPU, whose
    depthwise convolutions are slow). The convolution pads with zeros to keep
    the size (``"SAME"``), as the paper's code does.
    """

    source: Any
    kernel: Any = None
    spatial_axes: tuple[int, int] = (1, 2)

    def check(self) -> None:
        """Refuse a kernel with a NaN or infinite entry."""
        check_finite(self.kernel, "kernel")

    def __call__(self, model: Model, x: Array, labels: Array, *, key: PRNGKey, targeted: bool) -> Gradient:
        g = self.source(model, x, labels, key=key, targeted=targeted)
        return g._replace(grad=_smooth(g.grad, jnp.asarray(self.kernel, jnp.float32), self.spatial_axes))


def _band(kernel: Array, n: int) -> Array:
    """``[n, n]`` matrix of the 1-D 'SAME' cross-correlation with ``kernel`` (zero
    padding, ``(k - 1) // 2`` before, as :func:`jax.lax.conv_general_dilated` pads)."""
    k = kernel.shape[0]
    offset = jnp.arange(n)[None, :] - jnp.arange(n)[:, None] + (k - 1) // 2  # j - i + pad
    inside = (offset >= 0) & (offset < k)
    return jnp.where(inside, kernel[jnp.clip(offset, 0, k - 1)], 0.0)


def _smooth(grad: Array, kernel: Array, spatial_axes: tuple[int, int]) -> Array:
    """Depthwise 'SAME' convolution of ``grad`` with ``kernel`` over ``spatial_axes``
    (``kernel`` ``[k]``: the separable ``outer(kernel, kernel)``)."""
    h_axis, w_axis = (a + 1 for a in _check_spatial_axes(spatial_axes, grad.ndim))
    if kernel.ndim == 1:
        g = jnp.moveaxis(grad, (h_axis, w_axis), (-2, -1))
        bh, bw = _band(kernel, g.shape[-2]), _band(kernel, g.shape[-1])
        out = jnp.einsum("ij,...jk,lk->...il", bh, g, bw, precision=jax.lax.Precision.HIGHEST)
        return jnp.moveaxis(out, (-2, -1), (h_axis, w_axis))
    rest = [a for a in range(1, grad.ndim) if a not in (h_axis, w_axis)]
    # [batch, H, W, channels...] -> [batch * channels, H, W, 1]
    g = jnp.transpose(grad, (0, *rest, h_axis, w_axis))
    lead = g.shape[: g.ndim - 2]
    flat = g.reshape((-1, g.shape[-2], g.shape[-1], 1))
    out = jax.lax.conv_general_dilated(
        flat,
        kernel[:, :, None, None],
        window_strides=(1, 1),
        padding="SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    out = out.reshape((*lead, g.shape[-2], g.shape[-1]))
    return jnp.transpose(out, tuple(int(a) for a in np.argsort((0, *rest, h_axis, w_axis))))


_Part = TypeVar("_Part")


def check_parts(part: Any) -> None:
    """Run ``check()`` on ``part`` and on every source it wraps (``.source``), where
    they have one: the hyperparameter checks of an attack's parts."""
    while part is not None:
        check = getattr(part, "check", None)
        if callable(check):
            check()
        part = getattr(part, "source", None)


def _checked(part: _Part) -> _Part:
    check_parts(part)
    return part


def loss_gradient(loss: str | LossFn = cross_entropy) -> LossGradient:
    """The exact input gradient of ``loss`` (:class:`LossGradient`; a callable or a
    name, see :func:`jaxadv.losses.get_loss`)."""
    return LossGradient(get_loss(loss))


def eot(
    source: Any | None = None,
    *,
    num_samples: int,
    transform: Callable[[PRNGKey, Array], Array] | None = None,
) -> EOT:
    """:class:`EOT` over ``num_samples`` draws of ``source`` (default: cross-entropy's gradient)."""
    if not isinstance(num_samples, (int, np.integer)) or isinstance(num_samples, bool) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
    return _checked(EOT(loss_gradient() if source is None else source, int(num_samples), transform))


def input_diversity(
    source: Any | None = None,
    *,
    prob: ArrayLike = 0.5,
    resize_rate: ArrayLike = 0.9,
    spatial_axes: tuple[int, int] = (1, 2),
) -> InputDiversity:
    """:class:`InputDiversity` around ``source`` (default: cross-entropy's gradient);
    ``prob`` in ``[0, 1]``, ``resize_rate`` in ``(0, 1]``."""
    return _checked(
        InputDiversity(
            loss_gradient() if source is None else source,
            jnp.asarray(prob, jnp.float32),
            jnp.asarray(resize_rate, jnp.float32),
            tuple(spatial_axes),  # type: ignore[arg-type]
        )
    )


def translation_invariant(
    source: Any | None = None,
    *,
    kernel_size: int = 15,
    nsig: float = 3.0,
    kernel: ArrayLike | None = None,
    spatial_axes: tuple[int, int] = (1, 2),
) -> TranslationInvariant:
    """:class:`TranslationInvariant` around ``source`` with ``kernel`` (default:
    the Gaussian of :func:`gaussian_kernel`, as its separable factor
    :func:`gaussian_kernel_1d`)."""
    k = jnp.asarray(gaussian_kernel_1d(kernel_size, nsig) if kernel is None else kernel, jnp.float32)
    if k.ndim not in (1, 2) or (k.ndim == 2 and k.shape[0] != k.shape[1]):
        raise ValueError(f"kernel must be [k, k] (or [k] for a separable one), got shape {k.shape}")
    return _checked(
        TranslationInvariant(
            loss_gradient() if source is None else source,
            k,
            tuple(spatial_axes),  # type: ignore[arg-type]
        )
    )
