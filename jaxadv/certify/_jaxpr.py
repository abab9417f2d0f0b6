"""A model's computation as a flat list of input-dependent primitive applications.

Bound propagation interprets the model's own jaxpr. :func:`trace` turns
``logits_fn`` into a :class:`Program`: every equation whose inputs do not
depend on ``x`` (weights, normalisation constants, batch-norm statistics) is
evaluated at once, exactly, and becomes a :class:`Const`; nested calls
(``jit``, ``custom_jvp_call``, ``custom_vjp_call``...) are entered, so that only
the primitives that touch ``x`` remain, in evaluation order, as :class:`Node`\\ s.
The interpreters (intervals, CROWN) then only see those nodes. The walk itself
is :func:`jaxadv._core.jaxpr.walk`, shared with the convolution rewrite.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Union

import jax

from jaxadv._core import jaxpr as jaxpr_walk
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


class _Builder:
    def __init__(self) -> None:
        self.nodes: list[Node] = []
        self.shapes: dict[int, jax.ShapeDtypeStruct] = {}

    def new_var(self, aval: Any) -> int:
        i = len(self.shapes)
        self.shapes[i] = jax.ShapeDtypeStruct(aval.shape, aval.dtype)
        return i

    def walk(self, jaxpr: Any, consts: list[Ref], args: list[Ref]) -> list[Ref]:
        return jaxpr_walk.walk(jaxpr, consts, args, self.visit, literal=Const)

    def visit(self, eqn: Any, ins: list[Ref]) -> list[Ref]:
        if all(isinstance(r, Const) for r in ins):
            # Input-independent (weights, normalisation constants): computed exactly now.
            return [Const(o) for o in jaxpr_walk.bind(eqn, [r.value for r in ins])]  # type: ignore[union-attr]
        called = jaxpr_walk.inner(eqn)
        if called is not None:
            return self.walk(called[0], [Const(c) for c in called[1]], ins)
        outs = tuple(self.new_var(v.aval) for v in eqn.outvars)
        self.nodes.append(Node(eqn.primitive, dict(eqn.params), tuple(ins), outs))
        return list(outs)


def trace(fn: Callable[[Any, Array], Array], params: Any, x: Array) -> Program:
    """The :class:`Program` of ``fn(params, x)``: ``params`` are constants, ``x`` the input.

    Works on concrete values and under ``jit``/``vmap`` alike (constants may be tracers).
    """
    closed = jax.make_jaxpr(fn)(params, x)
    leaves = jax.tree_util.tree_leaves(params)
    builder = _Builder()
    x_id = builder.new_var(closed.jaxpr.invars[-1].aval)
    args: list[Ref] = [Const(p) for p in leaves] + [x_id]
    (out,) = builder.walk(closed.jaxpr, [Const(c) for c in closed.consts], args)
    return Program(tuple(builder.nodes), builder.shapes, out)


def unsupported(node: Node, method: str, supported: str) -> ValueError:
    return ValueError(
        f"{method} does not support the primitive {node.name!r} applied to an input-dependent value "
        f"(supported: {supported})"
    )
