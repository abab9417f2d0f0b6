r"""Convolutions in the form XLA:CPU runs fast, inside an attack's loop (private).

Why. XLA:CPU (jaxlib 0.10) runs a 2-D convolution on its fast path, a
YNNPACK fusion (the same kernels the forward pass uses), when it is in
canonical form: input ``NHWC``, kernel ``HWIO``, output ``NHWC``, without input
dilation or window reversal. A canonical convolution with input dilation runs
on Eigen's convolution, which measured about as fast. Any other layout runs on
a naive loop nest, 3-10x slower, and XLA makes convolutions canonical only in
the entry computation, never inside a ``while`` body. The input gradient JAX
emits for a convolution :math:`y = W \star x` is itself a convolution,
:math:`\partial L/\partial x = \mathrm{rev}(W)^{\top} \star_{\text{dil}=s} \partial L/\partial y`:
its kernel is spatially reversed with input and output features swapped, and a
stride :math:`s` becomes an input dilation :math:`s`. So in an attack's loop the
input gradient of every convolution runs as a loop nest, and the kernel's
reversal and transposition are recomputed at every step (XLA does not move them
out of the loop). ``benchmarks/RESULTS.md`` ("Input gradients on XLA:CPU") has
the per-convolution evidence.

What. A loop body ``body(i, state, operands, static)`` is traced to a jaxpr and
evaluated again equation by equation (:func:`jaxadv._core.jaxpr.walk`), with
every ``conv_general_dilated`` replaced by :func:`fast_conv`, the same
arithmetic in canonical form:

* another layout: transposes around the canonical convolution;
* input dilation :math:`s` (a strided convolution's input gradient), when
  :data:`POLYPHASE` is on (off by default, see there): the *polyphase* form.
  Output position :math:`o = s q + r` only meets the kernel
  taps :math:`t` with :math:`(r + t d - p_{lo}) \bmod s = 0` (:math:`d` the kernel
  dilation, :math:`p_{lo}` the low padding), which are every
  :math:`(s/\gcd(d, s))`-th tap, applied to consecutive inputs. So phase
  :math:`r` is an ordinary stride-1 convolution with that sub-kernel, and the
  :math:`s^2` phases (per 2-D convolution) are interleaved into the output. It
  multiplies no inserted zeros: the taps add up to the kernel's, the
  arithmetic of the forward convolution.

Then everything the step computes from the loop-invariant ``operands`` alone
to feed a convolution's kernel (the reversal, the transposition, the phase
split) is *hoisted* (:data:`HOIST`): computed once before the loop, and
passed into it. The results equal the plain loop's up to floating-point
reassociation.

Calls (``jit``) are inlined; rematerialised blocks (``checkpoint``), ``scan``,
``while`` and ``cond`` and the primal of ``custom_jvp``/``custom_vjp`` functions
are rebuilt around their rewritten bodies (their custom derivative rules are
kept). Their kernels are prepared inside them, not hoisted. Everything else,
``shard_map`` included, is bound unchanged. If re-binding a primitive fails
(a JAX version the rewrite does not know), the plain body runs and a warning is
logged once per step function: the rewrite only ever changes speed.

:func:`jaxadv.engine.iterate` applies it on the platforms in :data:`PLATFORMS`
while the setting ``conv_rewrite`` is on (:mod:`jaxadv.config`). The rewritten
jaxpr and its hoisting plan are cached per step function, configuration and
input types, so a body is traced once however often its loop is traced.
"""

from __future__ import annotations

import collections
import itertools
import logging
import math
import threading
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.extend.core as jex
import jax.numpy as jnp
import numpy as np

from jaxadv._core import jaxpr as jaxpr_walk

logger = logging.getLogger("jaxadv")

Body = Callable[[Any, Any, Any, Any], Any]

#: Platforms whose compiler runs convolutions in other forms on slow paths.
PLATFORMS = ("cpu",)

#: The two parts of the rewrite beyond the layout, each on its own, so that
#: ``benchmarks/bench_conv_paths.py`` can measure what each contributes (clear
#: ``_plans`` after changing them): the phase split of input-dilated
#: convolutions, and computing the kernels before the loop. The phase split is
#: off: on jaxlib 0.10 Eigen runs a canonical input-dilated convolution as fast
#: as the split's four YNNPACK convolutions and as the forward strided one
#: (PreAct-ResNet-18's stride-2 input gradients, batch 32: 60-70 ms each way;
#: ``benchmarks/RESULTS.md``), and the split makes a larger program. It stays
#: here, tested, for a CPU or jaxlib where that is not so.
POLYPHASE = False
HOIST = True

_CONV = "conv_general_dilated"
_CONVS = frozenset({_CONV})

# What evaluating a rewritten jaxpr can raise when a primitive's parameters do
# not round-trip through ``bind`` (a JAX version the rewrite does not know).
_REWRITE_ERRORS = (TypeError, ValueError, KeyError, NotImplementedError, AttributeError)


# ---------------------------------------------------------------------------
# One convolution in canonical form.


def fast_conv(lhs: Any, rhs: Any, params: dict[str, Any]) -> Any:
    """``conv_general_dilated(lhs, rhs, **params)`` in the form XLA:CPU runs fast.

    Left as it is when grouped (``feature_group_count`` or ``batch_group_count``
    above 1), or when the kernel window is larger than the input's spatial
    extent (XLA swaps the operands of such a convolution itself). Otherwise the
    operands are transposed to ``N...C`` / ``...IO`` and, for an input dilation
    with unit window strides, the convolution is split into its phases
    (module docstring); the result is transposed back to ``params``' output layout.
    """
    dn = params["dimension_numbers"]
    n = lhs.ndim
    in_size = np.prod([lhs.shape[d] for d in dn.lhs_spec[2:]])
    kernel_size = np.prod([rhs.shape[d] for d in dn.rhs_spec[2:]])
    if params["feature_group_count"] != 1 or params["batch_group_count"] != 1 or kernel_size > in_size:
        return jax.lax.conv_general_dilated_p.bind(lhs, rhs, **params)
    spatial = tuple(range(1, n - 1))
    canon = jax.lax.ConvDimensionNumbers(
        lhs_spec=(0, n - 1) + spatial,
        rhs_spec=(n - 1, n - 2) + tuple(range(n - 2)),
        out_spec=(0, n - 1) + spatial,
    )
    if dn != canon:
        lhs = jnp.transpose(lhs, (dn.lhs_spec[0],) + tuple(dn.lhs_spec[2:]) + (dn.lhs_spec[1],))
        rhs = jnp.transpose(rhs, tuple(dn.rhs_spec[2:]) + (dn.rhs_spec[1], dn.rhs_spec[0]))
    params = {**params, "dimension_numbers": canon}
    dilated = any(s != 1 for s in params["lhs_dilation"])
    if dilated and POLYPHASE and all(s == 1 for s in params["window_strides"]):
        out = _polyphase(lhs, rhs, params)
    else:
        out = jax.lax.conv_general_dilated_p.bind(lhs, rhs, **params)
    if dn == canon:
        return out
    out_order = (dn.out_spec[0],) + tuple(dn.out_spec[2:]) + (dn.out_spec[1],)
    return jnp.transpose(out, tuple(int(a) for a in np.argsort(out_order)))


class _Phase(NamedTuple):
    """One output phase of an input-dilated convolution along one spatial axis."""

    first: int  # first kernel tap of the phase
    step: int  # taps taken: first, first + step, ...
    dilation: int  # kernel dilation of the phase's stride-1 convolution
    padding: tuple[int, int]  # its (low, high) padding, possibly negative


def _phases(n_in: int, k: int, s: int, d: int, lo: int, hi: int) -> tuple[int, int, list[_Phase | None]]:
    """Output length, phase length ``ceil(n_out / s)`` and the ``s`` phases along one axis.

    The dilated, padded input has ``x[(j - lo) / s]`` at positions ``j`` where
    ``(j - lo) % s == 0``; output ``o = s q + r`` reads positions ``o + t d``, so
    phase ``r`` uses the taps ``t`` with ``(r + t d - lo) % s == 0`` (``None``
    when there are none), which read ``x[q + c0 + j d / g]``.
    """
    n_out = (n_in - 1) * s + 1 + lo + hi - (k - 1) * d
    length = -(-n_out // s)
    g = math.gcd(d, s)
    step = s // g
    phases: list[_Phase | None] = []
    for r in range(s):
        first = next((t for t in range(min(k, step)) if (r + t * d - lo) % s == 0), None)
        if first is None:
            phases.append(None)
            continue
        taps = len(range(first, k, step))
        dilation = d // g
        low = -((r + first * d - lo) // s)
        high = length - n_in - low + (taps - 1) * dilation
        phases.append(_Phase(first, step, dilation, (low, high)))
    return n_out, length, phases


def _polyphase(lhs: Any, rhs: Any, params: dict[str, Any]) -> Any:
    """A canonical (``N...C``, ``...IO``) input-dilated convolution with unit window
    strides as ``s_1 * ... * s_k`` stride-1 convolutions interleaved."""
    spatial = lhs.shape[1:-1]
    plans = [
        _phases(n, k, s, d, lo, hi)
        for n, k, s, d, (lo, hi) in zip(
            spatial,
            rhs.shape[:-2],
            params["lhs_dilation"],
            params["rhs_dilation"],
            params["padding"],
            strict=True,
        )
    ]
    strides = tuple(params["lhs_dilation"])
    lengths = tuple(p[1] for p in plans)
    batch, features = lhs.shape[0], rhs.shape[-1]
    dtype = params["preferred_element_type"] or jnp.result_type(lhs, rhs)
    outs = []
    for combo in itertools.product(*(p[2] for p in plans)):
        if any(phase is None for phase in combo):
            outs.append(jnp.zeros((batch, *lengths, features), dtype))
            continue
        sub = rhs[tuple(slice(ph.first, None, ph.step) for ph in combo)]  # type: ignore[union-attr]
        phase_params = {
            **params,
            "lhs_dilation": (1,) * len(combo),
            "rhs_dilation": tuple(ph.dilation for ph in combo),  # type: ignore[union-attr]
            "padding": tuple(ph.padding for ph in combo),  # type: ignore[union-attr]
        }
        outs.append(jax.lax.conv_general_dilated_p.bind(lhs, sub, **phase_params))
    # outs[(r_1, ..., r_k)] holds out[:, s_1 q_1 + r_1, ..., s_k q_k + r_k, :].
    k = len(strides)
    stacked = jnp.stack(outs, axis=1).reshape((batch, *strides, *lengths, features))
    order = (0,) + tuple(v for i in range(k) for v in (1 + k + i, 1 + i)) + (1 + 2 * k,)
    interleaved = jnp.transpose(stacked, order).reshape(
        (batch, *(s * q for s, q in zip(strides, lengths, strict=True)), features)
    )
    return interleaved[(slice(None),) + tuple(slice(0, p[0]) for p in plans)]


# ---------------------------------------------------------------------------
# Rewriting a jaxpr.


def _visit(eqn: Any, invals: list[Any]) -> list[Any]:
    """One equation of the rewritten program (see the module docstring)."""
    name = eqn.primitive.name
    if name == _CONV:
        # Under the original name (``.../layer2.0/conv1``), so that profiles and HLO
        # dumps still say which layer a rewritten convolution belongs to.
        with jaxpr_walk.scope(eqn):
            return [fast_conv(invals[0], invals[1], eqn.params)]
    subs = jaxpr_walk.param_jaxprs(eqn.params)
    if not any(jaxpr_walk.contains(sub, _CONVS) for sub in subs):
        return jaxpr_walk.bind(eqn, invals)
    if name in ("pjit", "jit", "closed_call", "core_call"):
        called = eqn.params.get("jaxpr", eqn.params.get("call_jaxpr"))
        if isinstance(called, jex.ClosedJaxpr):
            return evaluate(called.jaxpr, called.consts, invals)
    if name in ("remat2", "checkpoint"):
        return _remat(eqn.params, invals)
    if name in ("custom_jvp_call", "custom_vjp_call"):
        # The primal computation rewritten; the derivative rules are the original ones.
        called = eqn.params["call_jaxpr"]
        rewritten = jax.make_jaxpr(lambda *a: evaluate(called.jaxpr, called.consts, a))(*invals)
        return jaxpr_walk.bind(eqn, invals, {**eqn.params, "call_jaxpr": rewritten})
    if name in _NESTED:
        return _NESTED[name](eqn.params, invals)
    return jaxpr_walk.bind(eqn, invals)


def evaluate(jaxpr: Any, consts: Sequence[Any], args: Sequence[Any]) -> list[Any]:
    """``jaxpr`` applied to ``args`` with its convolutions rewritten."""
    return jaxpr_walk.walk(jaxpr, consts, args, _visit)


def _scan(params: dict[str, Any], invals: Sequence[Any]) -> list[Any]:
    inner = params["jaxpr"]
    nc, nk = params["num_consts"], params["num_carry"]
    consts, carry, xs = invals[:nc], invals[nc : nc + nk], invals[nc + nk :]

    def body(c: list[Any], x: list[Any]) -> tuple[list[Any], list[Any]]:
        out = evaluate(inner.jaxpr, inner.consts, [*consts, *c, *x])
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


def _while(params: dict[str, Any], invals: Sequence[Any]) -> list[Any]:
    cond_j, body_j = params["cond_jaxpr"], params["body_jaxpr"]
    nc, nb = params["cond_nconsts"], params["body_nconsts"]
    cond_consts, body_consts, init = invals[:nc], invals[nc : nc + nb], invals[nc + nb :]

    def cond(v: Any) -> Any:
        return evaluate(cond_j.jaxpr, cond_j.consts, [*cond_consts, *v])[0]

    def body(v: Any) -> list[Any]:
        return evaluate(body_j.jaxpr, body_j.consts, [*body_consts, *v])

    return list(jax.lax.while_loop(cond, body, list(init)))


def _cond(params: dict[str, Any], invals: Sequence[Any]) -> list[Any]:
    def branch(closed: Any) -> Callable[..., list[Any]]:
        return lambda *ops: evaluate(closed.jaxpr, closed.consts, ops)

    return list(jax.lax.switch(invals[0], [branch(b) for b in params["branches"]], *invals[1:]))


def _remat(params: dict[str, Any], invals: Sequence[Any]) -> list[Any]:
    inner = params["jaxpr"]
    jaxpr, consts = (inner.jaxpr, inner.consts) if isinstance(inner, jex.ClosedJaxpr) else (inner, [])

    def block(*args: Any) -> list[Any]:
        return evaluate(jaxpr, consts, args)

    return jax.checkpoint(block, prevent_cse=params["prevent_cse"], policy=params["policy"])(*invals)


_NESTED: dict[str, Callable[[dict[str, Any], Sequence[Any]], list[Any]]] = {
    "scan": _scan,
    "while": _while,
    "cond": _cond,
}


def rewrite(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with its convolutions rewritten (no loop, so nothing to hoist).

    Same signature and results as ``fn``; the arguments must be arrays or
    pytrees of arrays. For tests and benchmarks: the attacks get the rewrite
    through :func:`jaxadv.engine.iterate`.
    """

    def rewritten(*args: Any) -> Any:
        closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*args)
        out = evaluate(closed.jaxpr, closed.consts, jax.tree_util.tree_leaves(args))
        return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(out_shape), out)

    return rewritten


# ---------------------------------------------------------------------------
# A loop body: rewritten once, its kernel preparation hoisted.


class Plan(NamedTuple):
    """A loop body, rewritten, and split into what runs once and what runs per step.

    Attributes:
      jaxpr: the rewritten step as a closed jaxpr of the flattened
        ``(i, state, operands)``.
      out_tree: the structure of the new state.
      operand_vars: the jaxpr's input variables of ``operands``.
      hoisted: indices of the equations evaluated once, before the loop.
      live: indices of the equations evaluated at every step.
      kernels: the variables computed before the loop and read in the loop.
    """

    jaxpr: Any
    out_tree: Any
    operand_vars: tuple[Any, ...]
    hoisted: tuple[int, ...]
    live: frozenset[int]
    kernels: tuple[Any, ...]

    def prepare(self, operands: Any) -> list[Any]:
        """The hoisted values, computed from ``operands`` (call this outside the loop)."""
        env: dict[Any, Any] = dict(zip(self.jaxpr.jaxpr.constvars, self.jaxpr.consts, strict=True))
        env.update(zip(self.operand_vars, jax.tree_util.tree_leaves(operands), strict=True))

        def read(v: Any) -> Any:
            return v.val if isinstance(v, jex.Literal) else env[v]

        eqns = self.jaxpr.jaxpr.eqns
        for idx in self.hoisted:
            eqn = eqns[idx]
            env.update(zip(eqn.outvars, jaxpr_walk.bind(eqn, [read(v) for v in eqn.invars]), strict=True))
        return [env[v] for v in self.kernels]

    def step(self, i: Any, state: Any, operands: Any, prepared: Sequence[Any]) -> Any:
        """One step of the loop, reading the hoisted values ``prepared``."""
        leaves = jax.tree_util.tree_leaves((i, state, operands))
        out = jaxpr_walk.walk(
            self.jaxpr.jaxpr,
            self.jaxpr.consts,
            leaves,
            jaxpr_walk.bind,
            bound=dict(zip(self.kernels, prepared, strict=True)),
            only=self.live,
        )
        return jax.tree_util.tree_unflatten(self.out_tree, out)


def _split(closed: Any, n_operands: int, out_tree: Any) -> Plan:
    """The :class:`Plan` of a rewritten step ``closed`` whose last ``n_operands``
    inputs are the loop-invariant operands."""
    jaxpr = closed.jaxpr
    operand_vars = tuple(jaxpr.invars[len(jaxpr.invars) - n_operands :])
    invariant = set(jaxpr.constvars) | set(operand_vars)
    for eqn in jaxpr.eqns:
        if not eqn.effects and all(isinstance(v, jex.Literal) or v in invariant for v in eqn.invars):
            invariant.update(eqn.outvars)
    given = set(jaxpr.constvars) | set(jaxpr.invars)
    kernels: list[Any] = []
    for eqn in jaxpr.eqns if HOIST else ():
        if eqn.primitive.name == _CONV:
            k = eqn.invars[1]
            if not isinstance(k, jex.Literal) and k in invariant and k not in given and k not in kernels:
                kernels.append(k)
    # What computes the kernels (once), and what the step still needs (every step).
    needed = set(kernels)
    hoisted = []
    for idx in reversed(range(len(jaxpr.eqns))):
        eqn = jaxpr.eqns[idx]
        if any(v in needed for v in eqn.outvars):
            hoisted.append(idx)
            needed.update(v for v in eqn.invars if not isinstance(v, jex.Literal))
    known = set(kernels)
    needed = {v for v in jaxpr.outvars if not isinstance(v, jex.Literal)}
    live = set()
    for idx in reversed(range(len(jaxpr.eqns))):
        eqn = jaxpr.eqns[idx]
        if all(v in known for v in eqn.outvars):
            continue
        if eqn.effects or any(v in needed for v in eqn.outvars):
            live.add(idx)
            needed.update(v for v in eqn.invars if not isinstance(v, jex.Literal))
    return Plan(closed, out_tree, operand_vars, tuple(reversed(hoisted)), frozenset(live), tuple(kernels))


_CACHE_SIZE = 64
_plans: collections.OrderedDict[Any, Plan | None] = collections.OrderedDict()
_plans_lock = threading.Lock()


def _aval(x: Any) -> Any:
    return jax.typeof(x)


def plan(body: Body, static: Any, state: Any, operands: Any) -> Plan | None:
    """The rewritten, split step of ``body`` for these input types; ``None`` when it
    holds no convolution. Cached per ``(body, static, input types)``.

    The step's index is an ``int32`` scalar. Errors of ``body`` itself propagate;
    a failure of the rewrite (one of ``_REWRITE_ERRORS``) is logged once and gives
    ``None`` (the caller runs the plain body).
    """
    index = jax.ShapeDtypeStruct((), jnp.int32)
    leaves, tree = jax.tree_util.tree_flatten((state, operands))
    key = (body, static, tree, tuple(_aval(v) for v in leaves))
    with _plans_lock:
        if key in _plans:
            _plans.move_to_end(key)
            return _plans[key]

    def traced(i: Any, state: Any, operands: Any) -> Any:
        return body(i, state, operands, static)

    closed, out_shape = jax.make_jaxpr(traced, return_shape=True)(index, state, operands)
    result: Plan | None = None
    if jaxpr_walk.contains(closed.jaxpr, _CONVS):
        flat = [index, *leaves]
        try:
            rewritten = jax.make_jaxpr(lambda *a: evaluate(closed.jaxpr, closed.consts, a))(*flat)
            out_tree = jax.tree_util.tree_structure(out_shape)
            result = _split(rewritten, len(jax.tree_util.tree_leaves(operands)), out_tree)
        except _REWRITE_ERRORS as e:
            warn_fallback(body, e)
            return None
    if any(isinstance(c, jax.core.Tracer) for c in getattr(result and result.jaxpr, "consts", ())):
        return result  # holds values of an outer trace: usable now, not later
    with _plans_lock:
        _plans[key] = result
        while len(_plans) > _CACHE_SIZE:
            _plans.popitem(last=False)
    return result


def fori_loop(body: Body, steps: Any, state: Any, operands: Any, static: Any) -> Any:
    """``lax.fori_loop(0, steps, lambda i, s: body(i, s, operands, static), state)``
    with the body rewritten and its kernels prepared before the loop."""
    p = plan(body, static, state, operands)
    if p is None:
        return jax.lax.fori_loop(0, steps, lambda i, s: body(i, s, operands, static), state)
    try:
        prepared = p.prepare(operands)
    except _REWRITE_ERRORS as e:
        warn_fallback(body, e)
        return jax.lax.fori_loop(0, steps, lambda i, s: body(i, s, operands, static), state)

    def step(i: Any, s: Any) -> Any:
        return p.step(jnp.asarray(i, jnp.int32), s, operands, prepared)

    return jax.lax.fori_loop(0, steps, step, state)


_warned: set[str] = set()


def warn_fallback(body: Callable[..., Any], error: Exception) -> None:
    """Log once per step function that its rewrite failed and the plain body runs."""
    name = getattr(body, "__qualname__", repr(body))
    if name not in _warned:
        _warned.add(name)
        logger.warning(
            "jaxadv: the convolution rewrite of %s failed (%s: %s); the loop runs unrewritten "
            "(same results, convolution gradients may be slower on CPU; "
            "jaxadv.config.update('conv_rewrite', False) turns the rewrite off)",
            name,
            type(error).__name__,
            error,
        )
