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

On XLA:CPU the loop body is re-traced with its convolutions in canonical
NHWC/HWIO form (:mod:`jaxadv.canonical_conv`), which keeps the loop at the
gradient floor.

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
from typing import Any, Callable, TypeVar

import jax
import jax.numpy as jnp

from jaxadv.canonical_conv import CANONICAL_CONV_PLATFORMS, canonical_convs
from jaxadv.typing import LoopMode
from jaxadv.validation import is_traced

S = TypeVar("S")
Body = Callable[[Any, Any, Any, Any], Any]


@functools.partial(jax.jit, static_argnums=(0, 4))
def _host_step(body: Body, i: jax.Array, state: Any, operands: Any, static: Any) -> Any:
    return body(i, state, operands, static)


def _loop_body(body: Body) -> Body:
    return canonical_convs(body) if jax.default_backend() in CANONICAL_CONV_PLATFORMS else body


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
