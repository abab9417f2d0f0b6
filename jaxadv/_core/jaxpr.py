"""Walking a jaxpr equation by equation.

A jaxpr is a list of equations ``outs = primitive[params](*ins)``. Two parts of
the library interpret a model's or an attack step's jaxpr themselves instead of
calling it: the convolution rewrite (:mod:`jaxadv._core.conv_rewrite`), which
binds every equation again and replaces some, and bound propagation
(:mod:`jaxadv.certify`), which turns the equations that touch the input into
nodes. Both use :func:`walk`, which keeps the environment (variable -> value)
and reads literals, and the helpers below for calls and re-binding.

The values a walk carries are the caller's: arrays or tracers for the rewrite,
symbolic references for certification.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Container, ContextManager, Sequence, TypeVar

import jax
import jax.extend.core as jex

V = TypeVar("V")

#: Primitives whose meaning is their inner jaxpr, applied to their inputs: a
#: walk that only cares about the primal computation may enter them.
CALLS = frozenset(
    {
        "pjit",
        "jit",
        "closed_call",
        "core_call",
        "custom_jvp_call",
        "custom_vjp_call",
        "custom_vjp_call_jaxpr",
        "remat",
        "remat2",
        "checkpoint",
    }
)
_INNER_KEYS = ("jaxpr", "call_jaxpr", "fun_jaxpr")


def inner(eqn: Any) -> tuple[Any, list[Any]] | None:
    """``(jaxpr, consts)`` of a call in :data:`CALLS`; ``None`` for any other equation."""
    if eqn.primitive.name not in CALLS:
        return None
    for key in _INNER_KEYS:
        found = eqn.params.get(key)
        if isinstance(found, jex.ClosedJaxpr):
            return found.jaxpr, list(found.consts)
        if isinstance(found, jex.Jaxpr):
            return found, []
    return None


def bind(eqn: Any, values: Sequence[Any], params: dict[str, Any] | None = None) -> list[Any]:
    """``eqn``'s primitive applied to ``values`` (with ``params`` instead of the
    equation's when given), as :func:`jax.core.eval_jaxpr` applies it; always a list.

    The equation's name (``jvp(Model)/layer1/conv``) is kept in the program being
    traced, so profiles and HLO dumps of a re-bound program still name the layers.
    """
    primitive = eqn.primitive
    bind_params = primitive.get_bind_params(eqn.params if params is None else params)
    subfuns: list[Any] = []
    if isinstance(bind_params, tuple):  # older JAX: (subfuns, params)
        subfuns, bind_params = bind_params
    with scope(eqn):
        out = primitive.bind(*subfuns, *values, **bind_params)
    return list(out) if primitive.multiple_results else [out]


def scope(eqn: Any) -> ContextManager[Any]:
    """A context in which what is traced carries ``eqn``'s name."""
    name = str(getattr(getattr(eqn, "source_info", None), "name_stack", "") or "")
    return jax.named_scope(name) if name else contextlib.nullcontext()


def param_jaxprs(params: dict[str, Any]) -> list[Any]:
    """The jaxprs among a primitive's parameters (a call's body, a loop's, a cond's branches)."""
    found = []
    for value in params.values():
        for v in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(v, jex.ClosedJaxpr):
                found.append(v.jaxpr)
            elif isinstance(v, jex.Jaxpr):
                found.append(v)
    return found


def contains(jaxpr: Any, names: frozenset[str] | set[str]) -> bool:
    """Whether ``jaxpr``, or any jaxpr nested in its equations, applies a primitive in ``names``."""
    return any(eqn.primitive.name in names for eqn in jaxpr.eqns) or any(
        contains(sub, names) for eqn in jaxpr.eqns for sub in param_jaxprs(eqn.params)
    )


def walk(
    jaxpr: Any,
    consts: Sequence[V],
    args: Sequence[V],
    visit: Callable[[Any, list[V]], Sequence[V]],
    *,
    literal: Callable[[Any], V] = lambda value: value,
    bound: dict[Any, V] | None = None,
    only: Container[int] | None = None,
) -> list[V]:
    """Interpret ``jaxpr`` on ``args``: ``visit(eqn, inputs) -> outputs`` for each equation.

    Args:
      jaxpr: an open :class:`jax.extend.core.Jaxpr`.
      consts: the values of its constant variables; ``args`` those of its inputs.
      visit: called once per equation in order with the values of its inputs;
        returns one value per output variable.
      literal: turns a literal's Python/NumPy value into a walk value.
      bound: values already known for some variables (read as they are).
      only: when given, the indices of the equations to visit; the others are
        skipped (what they compute must then be in ``bound`` or unused).

    Returns:
      The values of the jaxpr's outputs.
    """
    env: dict[Any, V] = dict(zip(jaxpr.constvars, consts, strict=True))
    env.update(zip(jaxpr.invars, args, strict=True))
    if bound:
        env.update(bound)

    def read(v: Any) -> V:
        return literal(v.val) if isinstance(v, jex.Literal) else env[v]

    for idx, eqn in enumerate(jaxpr.eqns):
        if only is not None and idx not in only:
            continue
        outs = visit(eqn, [read(v) for v in eqn.invars])
        env.update(zip(eqn.outvars, outs, strict=True))
    return [read(v) for v in jaxpr.outvars]


def evaluate(jaxpr: Any, consts: Sequence[Any], args: Sequence[Any]) -> list[Any]:
    """``jaxpr`` applied to ``args``, every equation bound as it is (a plain interpreter)."""
    return walk(jaxpr, consts, args, bind)
