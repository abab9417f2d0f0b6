"""Convolutions in canonical form inside loop bodies (XLA:CPU).

On XLA:CPU, convolutions are fast only in the canonical NHWC/HWIO form (then
they run on Eigen's convolution); XLA rewrites other forms into it only in the
top-level program, never inside a ``while`` body. The input-gradient that JAX
emits for a convolution is not canonical (its kernel is reversed, with the
input and output features swapped), so inside a plain ``fori_loop`` it runs on
a naive loop nest and the loop costs 2-3x the gradient (see
``benchmarks/RESULTS.md``). :func:`canonical_convs` re-traces a loop body with
every such convolution written in canonical form (explicit transposes around
it; the same arithmetic), which keeps the loop at the gradient floor.
:mod:`jaxadv.engine` applies it to every loop body on the platforms in
:data:`CANONICAL_CONV_PLATFORMS`.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

import jax
import jax.extend.core as jex
import jax.numpy as jnp
import numpy as np

logger = logging.getLogger("jaxadv")

Body = Callable[[Any, Any, Any, Any], Any]


# Platforms whose compiler leaves non-canonical convolutions in loop bodies slow.
CANONICAL_CONV_PLATFORMS = ("cpu",)

# What evaluating a rewritten jaxpr can raise when a primitive's parameters do
# not round-trip through ``bind`` (a JAX version the rewrite does not know).
_REWRITE_ERRORS = (TypeError, ValueError, KeyError, NotImplementedError, AttributeError)


def canonical_convs(body: Body) -> Body:
    """``body`` with its convolutions in NHWC/HWIO form (see the module docstring).

    The step is traced to a jaxpr and evaluated again, primitive by primitive,
    with each ``conv_general_dilated`` in another layout replaced by transposes
    around the canonical convolution. Calls (``jit``), rematerialised blocks and
    nested loops and branches (``scan``, ``while``, ``cond``) are entered and
    rebuilt around their rewritten bodies; every other primitive is bound
    unchanged. Errors of the step itself propagate as they
    would without the rewrite; if re-binding a primitive fails (one of
    ``_REWRITE_ERRORS``), the plain ``body`` runs instead and a warning is
    logged once per step function: the rewrite only changes speed, never results.
    """

    def step(i: Any, state: Any, operands: Any, static: Any) -> Any:
        def traced(i: Any, state: Any, operands: Any) -> Any:
            return body(i, state, operands, static)

        args = (i, state, operands)
        closed, out_shape = jax.make_jaxpr(traced, return_shape=True)(*args)
        if not _has_conv(closed.jaxpr):
            return body(i, state, operands, static)
        try:
            out = _eval_canonical(closed.jaxpr, closed.consts, jax.tree_util.tree_leaves(args))
        except _REWRITE_ERRORS as e:
            _warn_fallback(body, e)
            return body(i, state, operands, static)
        return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(out_shape), out)

    return step


_warned: set[str] = set()


def _warn_fallback(body: Body, error: Exception) -> None:
    name = getattr(body, "__qualname__", repr(body))
    if name not in _warned:
        _warned.add(name)
        logger.warning(
            "jaxadv: the canonical-convolution rewrite of %s failed (%s: %s); the loop runs unrewritten "
            "(same results, convolution gradients may be slower on CPU)",
            name,
            type(error).__name__,
            error,
        )


def _has_conv(jaxpr: Any) -> bool:
    """Whether ``jaxpr`` or a call inside it holds a convolution."""
    return any(eqn.primitive.name == "conv_general_dilated" for eqn in jaxpr.eqns) or any(
        _has_conv(sub) for sub in jex.subjaxprs(jaxpr)
    )


def _eval_canonical(jaxpr: Any, consts: Sequence[Any], args: Sequence[Any]) -> list[Any]:
    env: dict[Any, Any] = dict(zip(jaxpr.constvars, consts, strict=True))
    env.update(zip(jaxpr.invars, args, strict=True))

    def read(v: Any) -> Any:
        return v.val if isinstance(v, jex.Literal) else env[v]

    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        name = eqn.primitive.name
        if name == "conv_general_dilated":
            out: Any = _canonical_conv(invals[0], invals[1], eqn.params)
        elif name in ("remat2", "checkpoint") and _has_conv(eqn.params["jaxpr"]):
            # A rematerialised block (jax.checkpoint / nn.remat): rewritten inside,
            # and checkpointed again with the same policy.
            out = _remat_canonical(eqn.params, invals)
        elif name in _LOOPS and any(_has_conv(sub) for sub in _param_jaxprs(eqn.params)):
            # A loop or branch inside the step (EOT's draws and VMI's neighbours
            # are scans): its body is a nested computation, rewritten the same way.
            out = _LOOPS[name](eqn.params, invals)
        elif (
            name in ("pjit", "jit", "closed_call")
            and isinstance(inner := eqn.params.get("jaxpr", eqn.params.get("call_jaxpr")), jex.ClosedJaxpr)
            and _has_conv(inner.jaxpr)
        ):
            out = _eval_canonical(inner.jaxpr, inner.consts, invals)
        else:
            out = eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(eqn.params))
        if eqn.primitive.multiple_results:
            env.update(zip(eqn.outvars, out, strict=True))
        else:
            env[eqn.outvars[0]] = out
    return [read(v) for v in jaxpr.outvars]


def _scan_canonical(params: dict[str, Any], invals: Sequence[Any]) -> list[Any]:
    inner = params["jaxpr"]
    nc, nk = params["num_consts"], params["num_carry"]
    consts, carry, xs = invals[:nc], invals[nc : nc + nk], invals[nc + nk :]

    def body(c: list[Any], x: list[Any]) -> tuple[list[Any], list[Any]]:
        out = _eval_canonical(inner.jaxpr, inner.consts, [*consts, *c, *x])
        return out[:nk], out[nk:]

    carry_out, ys = jax.lax.scan(
        body,
        list(carry),
        list(xs),
        length=params["length"],
        reverse=params["reverse"],
        unroll=params["unroll"],
    )
    return [*carry_out, *ys]


def _while_canonical(params: dict[str, Any], invals: Sequence[Any]) -> list[Any]:
    cond_j, body_j = params["cond_jaxpr"], params["body_jaxpr"]
    nc, nb = params["cond_nconsts"], params["body_nconsts"]
    cond_consts, body_consts, init = invals[:nc], invals[nc : nc + nb], invals[nc + nb :]

    def cond(v: Any) -> Any:
        return _eval_canonical(cond_j.jaxpr, cond_j.consts, [*cond_consts, *v])[0]

    def body(v: Any) -> list[Any]:
        return _eval_canonical(body_j.jaxpr, body_j.consts, [*body_consts, *v])

    return list(jax.lax.while_loop(cond, body, list(init)))


def _cond_canonical(params: dict[str, Any], invals: Sequence[Any]) -> list[Any]:
    def branch(closed: Any) -> Callable[..., list[Any]]:
        return lambda *ops: _eval_canonical(closed.jaxpr, closed.consts, ops)

    return list(jax.lax.switch(invals[0], [branch(b) for b in params["branches"]], *invals[1:]))


def _param_jaxprs(params: dict[str, Any]) -> list[Any]:
    """The jaxprs among a primitive's parameters (a loop's body, a cond's branches)."""
    found = []
    for value in params.values():
        for v in value if isinstance(value, tuple) else (value,):
            if isinstance(v, jex.ClosedJaxpr):
                found.append(v.jaxpr)
            elif isinstance(v, jex.Jaxpr):
                found.append(v)
    return found


_LOOPS: dict[str, Callable[[dict[str, Any], Sequence[Any]], list[Any]]] = {
    "scan": _scan_canonical,
    "while": _while_canonical,
    "cond": _cond_canonical,
}


def _remat_canonical(params: dict[str, Any], invals: Sequence[Any]) -> list[Any]:
    inner = params["jaxpr"]
    jaxpr, consts = (inner.jaxpr, inner.consts) if isinstance(inner, jex.ClosedJaxpr) else (inner, [])

    def block(*args: Any) -> list[Any]:
        return _eval_canonical(jaxpr, consts, args)

    return jax.checkpoint(block, prevent_cse=params["prevent_cse"], policy=params["policy"])(*invals)


def _canonical_conv(lhs: Any, rhs: Any, params: dict[str, Any]) -> Any:
    """``conv_general_dilated`` computed as transpose -> NHWC/HWIO conv -> transpose.

    Left as it is when already canonical, grouped, or when the kernel window is
    larger than the input's spatial extent: XLA then swaps the two operands
    itself, and the swapped convolution is fastest from JAX's original layout.
    """
    dn = params["dimension_numbers"]
    n = lhs.ndim
    spatial = tuple(range(1, n - 1))
    canon = jax.lax.ConvDimensionNumbers(
        lhs_spec=(0, n - 1) + spatial,
        rhs_spec=(n - 1, n - 2) + tuple(range(n - 2)),
        out_spec=(0, n - 1) + spatial,
    )
    in_size = np.prod([lhs.shape[d] for d in dn.lhs_spec[2:]])
    kernel_size = np.prod([rhs.shape[d] for d in dn.rhs_spec[2:]])
    if (
        dn == canon
        or params["feature_group_count"] != 1
        or params["batch_group_count"] != 1
        or kernel_size > in_size
    ):
        return jax.lax.conv_general_dilated_p.bind(lhs, rhs, **params)
    lhs_perm = (dn.lhs_spec[0],) + tuple(dn.lhs_spec[2:]) + (dn.lhs_spec[1],)
    rhs_perm = tuple(dn.rhs_spec[2:]) + (dn.rhs_spec[1], dn.rhs_spec[0])
    out = jax.lax.conv_general_dilated_p.bind(
        jnp.transpose(lhs, lhs_perm), jnp.transpose(rhs, rhs_perm), **{**params, "dimension_numbers": canon}
    )
    out_order = (dn.out_spec[0],) + tuple(dn.out_spec[2:]) + (dn.out_spec[1],)
    return jnp.transpose(out, tuple(int(a) for a in np.argsort(out_order)))
