"""Backward Pass Differentiable Approximation (BPDA) for non-differentiable layers.

A defence that puts a non-differentiable or gradient-shattering transform
``g`` in front of (or inside) a model makes :math:`\\nabla_x` of the loss zero,
undefined or useless, and a gradient attack then fails without any error:
the robust accuracy it reports is an illusion (Athalye, Carlini & Wagner,
"Obfuscated Gradients Give a False Sense of Security", ICML 2018). BPDA keeps
``g`` on the forward pass and, on the backward pass, differentiates a smooth
``h`` with :math:`h(x) \\approx g(x)` instead: the gradient through the wrapped
layer is :math:`\\partial h(x)^\\top v` for the incoming cotangent :math:`v`.
With ``h`` the identity this is the straight-through estimator.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from jaxadv.typing import Array

__all__ = ["bpda"]


def bpda(
    fn: Callable[[Array], Array], approx: Callable[[Array], Array] | None = None
) -> Callable[[Array], Array]:
    r"""``fn`` on the forward pass, the vector-Jacobian product of ``approx`` on the backward pass.

    Returns a function ``g`` with ``g(x) == fn(x)`` exactly and, under
    reverse-mode differentiation (:func:`jax.grad`, :func:`jax.vjp`, so under
    every gradient attack of the library),

    .. math::
        \bar{x} = \left(\frac{\partial\,\mathrm{approx}(x)}{\partial x}\right)^{\!\top} \bar{g},

    where :math:`\bar{g}` is the cotangent of ``g``'s output. With
    ``approx=None`` the backward pass is the identity, :math:`\bar{x} =
    \bar{g}` (the straight-through estimator); ``fn`` must then return an array
    of the shape of its input.

    Use it for a transform whose gradient is zero almost everywhere or
    undefined, but whose output stays close to its input or to a smooth
    function of it: quantisation to a few levels, thresholding, JPEG-like
    compression, median filters, a denoiser run to convergence. Build the model
    as ``logits_fn = lambda x: classifier(bpda(defence)(x))`` and attack it as
    usual. It does not help against randomised defences (average over the
    randomness with EOT: :func:`jaxadv.compose.eot`, :func:`jaxadv.eot_pgd`), or
    when ``approx`` is far from ``fn`` (the gradient then points nowhere
    useful: check that the attack's loss rises).

    Args:
      fn: ``x -> fn(x)``, any JAX-traceable function of one array (``[batch, ...]``
        in a model); it is never differentiated.
      approx: a differentiable ``x -> approx(x)`` with the output shape of ``fn``;
        ``None``: the identity.

    Returns:
      ``g(x)``, which composes with :func:`jax.jit`, :func:`jax.vmap`,
      :func:`jax.grad` and the library's attacks. Forward-mode differentiation
      (:func:`jax.jvp`, :func:`jax.jacfwd`) is not defined for it.

    Raises:
      TypeError: ``fn`` or ``approx`` is not callable.
      ValueError: with ``approx=None``, ``fn`` changes the shape of its input.
    """
    if not callable(fn):
        raise TypeError(f"bpda: fn must be callable, got {type(fn).__name__}")
    if approx is not None and not callable(approx):
        raise TypeError(f"bpda: approx must be callable or None, got {type(approx).__name__}")

    def forward(x: Array) -> Array:
        out = fn(x)
        if approx is None and jnp.shape(out) != jnp.shape(x):
            raise ValueError(
                f"bpda without approx is the straight-through estimator, so fn must keep the shape "
                f"of its input: {jnp.shape(x)} became {jnp.shape(out)}; pass approx, a differentiable "
                "stand-in for fn with fn's output shape"
            )
        return out

    @jax.custom_vjp
    def wrapped(x: Array) -> Array:
        return forward(x)

    def wrapped_fwd(x: Array) -> tuple[Array, Array]:
        return forward(x), x

    def wrapped_bwd(x: Array, cotangent: Array) -> tuple[Array]:
        if approx is None:
            return (cotangent.astype(jnp.result_type(x)),)
        out, vjp = jax.vjp(approx, x)
        if jnp.shape(out) != jnp.shape(cotangent):
            raise ValueError(
                f"bpda: approx returns shape {jnp.shape(out)}, but fn returned {jnp.shape(cotangent)}; "
                "they must agree"
            )
        return vjp(cotangent.astype(jnp.result_type(out)))

    wrapped.defvjp(wrapped_fwd, wrapped_bwd)
    return wrapped
