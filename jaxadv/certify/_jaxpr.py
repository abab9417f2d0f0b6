"""A model's computation as a flat list of input-dependent primitive applications.

Bound propagation interprets the model's own jaxpr. :func:`trace` turns
``logits_fn`` into a :class:`Program`: every equation whose inputs do not
depend on ``x`` (weights, normalisation constants, batch-norm statistics) is
evaluated at once, exactly, and becomes a :class:`Const`; nested calls
(``jit``, ``custom_jvp_call``, ``custom_vjp_call``...) are entered, so that only
the primitives that touch ``x`` remain, in evaluation order, as :class:`Node`\\ s.
The interpreters (intervals, CROWN) then only see those nodes.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Union

import jax
from jax.extend import core as jcore

from jaxadv.typing import Array


@dataclasses.dataclass(frozen=True, eq=False)
class Const:
    """A value that does not depend on the input (computed exactly)."""

    value: Any


#: A node input: the id of an input-dependent value, or a constant.
Ref = Union[int, Const]


class Node(NamedTuple):
    """One primitive applied to at least one input-dependent value."""

    primitive: Any
    params: dict[str, Any]
    inputs: tuple[Ref, ...]
    outputs: tuple[int, ...]

    @property
    def name(self) -> str:
        return str(self.primitive.name)

    def bind(self, *args: Any) -> list[Any]:
        """Apply the primitive to ``args`` (one per input), always returning a list."""
        out = self.primitive.bind(*args, **self.params)
        return list(out) if self.primitive.multiple_results else [out]


class Program(NamedTuple):
    """``nodes`` in evaluation order; value ``0`` is the model input ``x``."""

    nodes: tuple[Node, ...]
    shapes: dict[int, jax.ShapeDtypeStruct]
    output: Ref


#: Primitives that only wrap an inner jaxpr with the same semantics: entered.
_CALLS = {
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
_INNER_KEYS = ("jaxpr", "call_jaxpr", "fun_jaxpr")


def _inner_jaxpr(eqn: Any) -> tuple[Any, list[Any]] | None:
    if eqn.primitive.name not in _CALLS:
        return None
    for key in _INNER_KEYS:
        inner = eqn.params.get(key)
        if isinstance(inner, jcore.ClosedJaxpr):
            return inner.jaxpr, list(inner.consts)
        if isinstance(inner, jcore.Jaxpr):
            return inner, []
    return None


def _eval(eqn: Any, values: list[Any]) -> Any:
    """``eqn`` applied to concrete (or traced) values, as :func:`jax.core.eval_jaxpr` does."""
    bind_params = eqn.primitive.get_bind_params(eqn.params)
    subfuns: list[Any] = []
    if isinstance(bind_params, tuple):  # older JAX: (subfuns, params)
        subfuns, bind_params = bind_params
    return eqn.primitive.bind(*subfuns, *values, **bind_params)


class _Builder:
    def __init__(self) -> None:
        self.nodes: list[Node] = []
        self.shapes: dict[int, jax.ShapeDtypeStruct] = {}

    def new_var(self, aval: Any) -> int:
        i = len(self.shapes)
        self.shapes[i] = jax.ShapeDtypeStruct(aval.shape, aval.dtype)
        return i

    def walk(self, jaxpr: Any, consts: list[Any], args: list[Ref]) -> list[Ref]:
        env: dict[Any, Ref] = {}

        def read(v: Any) -> Ref:
            if isinstance(v, jcore.Literal):
                return Const(v.val)
            return env[v]

        for v, c in zip(jaxpr.constvars, consts, strict=True):
            env[v] = Const(c)
        for v, a in zip(jaxpr.invars, args, strict=True):
            env[v] = a
        for eqn in jaxpr.eqns:
            ins = [read(v) for v in eqn.invars]
            if all(isinstance(r, Const) for r in ins):
                out = _eval(eqn, [r.value for r in ins])  # type: ignore[union-attr]
                outs = list(out) if eqn.primitive.multiple_results else [out]
                for v, o in zip(eqn.outvars, outs, strict=True):
                    env[v] = Const(o)
                continue
            inner = _inner_jaxpr(eqn)
            if inner is not None:
                for v, r in zip(eqn.outvars, self.walk(inner[0], inner[1], ins), strict=True):
                    env[v] = r
                continue
            outs_ids = tuple(self.new_var(v.aval) for v in eqn.outvars)
            self.nodes.append(Node(eqn.primitive, dict(eqn.params), tuple(ins), outs_ids))
            for v, i in zip(eqn.outvars, outs_ids, strict=True):
                env[v] = i
        return [read(v) for v in jaxpr.outvars]


def trace(fn: Callable[[Any, Array], Array], params: Any, x: Array) -> Program:
    """The :class:`Program` of ``fn(params, x)``: ``params`` are constants, ``x`` the input.

    Works on concrete values and under ``jit``/``vmap`` alike (constants may be tracers).
    """
    closed = jax.make_jaxpr(fn)(params, x)
    leaves = jax.tree_util.tree_leaves(params)
    builder = _Builder()
    x_id = builder.new_var(closed.jaxpr.invars[-1].aval)
    args: list[Ref] = [Const(p) for p in leaves] + [x_id]
    (out,) = builder.walk(closed.jaxpr, list(closed.consts), args)
    return Program(tuple(builder.nodes), builder.shapes, out)


def unsupported(node: Node, method: str, supported: str) -> ValueError:
    return ValueError(
        f"{method} does not support the primitive {node.name!r} applied to an input-dependent value "
        f"(supported: {supported})"
    )
