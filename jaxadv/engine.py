r"""The iterative engine shared by every iterative attack.

An iterative attack is a state, a step rule ``body(i, state, operands, static) ->
state`` and a number of steps. :func:`iterate` runs it in one of three ways:

* ``"fori"``: one :func:`jax.lax.fori_loop` inside the caller's program. This is
  what runs under a user's ``jit``, ``vmap`` or ``grad``: the attack composes
  like any other JAX function, and its compile time does not grow with ``steps``.
* ``"compiled"``: the same loop as a program of its own, compiled once per step
  rule, configuration and input shapes and cached. The trip count is an
  argument of the program (the loop lowers to a ``while`` with a dynamic
  bound), so a new ``steps`` never recompiles. This is what a direct call with
  concrete arrays runs: the whole loop is one dispatch, and XLA fuses across
  steps.
* ``"host"``: a Python loop that calls one compiled step per iteration (one
  dispatch per step). Kept as an option; ``benchmarks/bench_core.py`` measures
  it next to the compiled loop.

On XLA:CPU, convolutions are fast only in the canonical NHWC/HWIO form (then
they run on Eigen's convolution); XLA rewrites other forms into it only in the
top-level program, never inside a ``while`` body. The input-gradient that JAX
emits for a convolution is not canonical (its kernel is reversed, with the
input and output features swapped), so inside a plain ``fori_loop`` it runs on
a naive loop nest and the loop costs 2-3x the gradient (see
``benchmarks/RESULTS.md``). On CPU the loop body is therefore re-traced
with every such convolution written in canonical form (explicit transposes,
for NHWC models of the small kernel only; the same arithmetic), which keeps the
loop at the gradient floor.

``"auto"`` (the default) picks ``"fori"`` when any input is traced and
``"compiled"`` otherwise. All modes run the same ``body`` and give the same
result up to floating-point reassociation.

``body`` must be a module-level function (it keys the compilation cache) and
``static`` a hashable value; ``operands`` is a pytree of arrays (the model's
parameters, the clean inputs, labels, ``eps`` ...) traced in every mode, so new
values never recompile.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence, TypeVar

import jax
import jax.extend.core as jex
import jax.numpy as jnp
import numpy as np

from jaxadv.typing import LoopMode
from jaxadv.validation import is_traced

S = TypeVar("S")
Body = Callable[[Any, Any, Any, Any], Any]


@functools.partial(jax.jit, static_argnums=(0, 4))
def _host_step(body: Body, i: jax.Array, state: Any, operands: Any, static: Any) -> Any:
    return body(i, state, operands, static)


def _loop_body(body: Body) -> Body:
    return _canonical_convs(body) if jax.default_backend() in _CANONICAL_CONV_PLATFORMS else body


@functools.partial(jax.jit, static_argnums=(0, 4))
def _compiled_loop(body: Body, steps: jax.Array, state: Any, operands: Any, static: Any) -> Any:
    step = _loop_body(body)
    return jax.lax.fori_loop(0, steps, lambda i, s: step(i, s, operands, static), state)


def iterate(
    body: Body,
    state: S,
    operands: Any,
    *,
    steps: int,
    static: Any,
    loop: LoopMode = "auto",
) -> S:
    """Run ``state = body(i, state, operands, static)`` for ``i = 0 .. steps - 1``.

    Args:
      body: module-level step function.
      state: initial loop state (a pytree of arrays).
      operands: loop-invariant pytree of arrays (traced).
      steps: number of iterations, a Python int (static).
      static: hashable loop-invariant configuration.
      loop: ``"auto"``, ``"fori"``, ``"compiled"`` or ``"host"`` (see the module
        docstring). ``"compiled"`` and ``"host"`` are refused under a
        transformation.

    Returns:
      The final state.
    """
    if loop not in ("auto", "fori", "compiled", "host"):
        raise ValueError(f"loop must be 'auto', 'fori', 'compiled' or 'host', got {loop!r}")
    traced = is_traced(state, operands)
    if loop in ("host", "compiled") and traced:
        raise ValueError(f"loop={loop!r} needs concrete inputs; under jit/vmap/grad use 'fori' or 'auto'")
    if loop == "fori" or (loop == "auto" and traced):
        step = _loop_body(body)
        return jax.lax.fori_loop(0, steps, lambda i, s: step(i, s, operands, static), state)
    if loop in ("auto", "compiled"):
        return _compiled_loop(body, jnp.asarray(steps, jnp.int32), state, operands, static)
    for i in range(steps):
        state = _host_step(body, jnp.asarray(i, jnp.int32), state, operands, static)
    return state


# --- canonical convolutions inside the loop body (XLA:CPU) --------------------

# Platforms whose compiler leaves non-canonical convolutions in loop bodies slow.
_CANONICAL_CONV_PLATFORMS = ("cpu",)


def _canonical_convs(body: Body) -> Body:
    """``body`` with its convolutions in NHWC/HWIO form (see the module docstring).

    The step is traced to a jaxpr and evaluated again, primitive by primitive,
    with each ``conv_general_dilated`` in another layout replaced by transposes
    around the canonical convolution. Calls (``jit``) are entered; every other
    primitive is bound unchanged. If anything in the rewrite fails, the plain
    ``body`` runs instead: the rewrite only changes speed, never results.
    """

    def step(i: Any, state: Any, operands: Any, static: Any) -> Any:
        def traced(i: Any, state: Any, operands: Any) -> Any:
            return body(i, state, operands, static)

        args = (i, state, operands)
        try:
            closed, out_shape = jax.make_jaxpr(traced, return_shape=True)(*args)
            if _has_conv(closed.jaxpr):
                out = _eval_canonical(closed.jaxpr, closed.consts, jax.tree_util.tree_leaves(args))
                return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(out_shape), out)
        except Exception:  # noqa: BLE001 - fall back to the unmodified step
            pass
        return body(i, state, operands, static)

    return step


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
