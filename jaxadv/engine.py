r"""The iterative engine shared by every iterative attack.

An iterative attack is a state, a step rule ``body(i, state, operands, static) ->
state`` and a number of steps. :func:`iterate` runs it in one of two ways:

* ``"fori"``: one :func:`jax.lax.fori_loop` inside the caller's program. This is
  what runs under a user's ``jit``, ``vmap`` or ``grad``: the attack composes
  like any other JAX function, and its compile time does not grow with ``steps``.
* ``"host"``: a Python loop that calls one compiled step per iteration. Used
  when the attack is called directly with concrete arrays. On XLA:CPU the
  input-gradient of strided convolutions compiled inside a ``while`` loop body
  runs markedly slower than the same computation compiled as a top-level
  program (see ``benchmarks/RESULTS.md``); dispatching one compiled step per
  iteration stays at the gradient floor. Compile time is one step's, whatever
  ``steps`` is.

``"auto"`` (the default) picks ``"fori"`` when any input is traced and
``"host"`` otherwise. Both run the same ``body`` and give the same result up to
floating-point reassociation.

``body`` must be a module-level function (it keys the compilation cache) and
``static`` a hashable value; ``operands`` is a pytree of arrays (the model's
parameters, the clean inputs, labels, ``eps`` ...) traced in both modes, so new
values never recompile.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, TypeVar

import jax
import jax.numpy as jnp

from jaxadv.typing import LoopMode
from jaxadv.validation import is_traced

S = TypeVar("S")
Body = Callable[[Any, Any, Any, Any], Any]


@functools.partial(jax.jit, static_argnums=(0, 4))
def _host_step(body: Body, i: jax.Array, state: Any, operands: Any, static: Any) -> Any:
    return body(i, state, operands, static)


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
      loop: ``"auto"``, ``"fori"`` or ``"host"`` (see the module docstring).
        ``"host"`` is refused under a transformation.

    Returns:
      The final state.
    """
    if loop not in ("auto", "fori", "host"):
        raise ValueError(f"loop must be 'auto', 'fori' or 'host', got {loop!r}")
    traced = is_traced(state, operands)
    if loop == "host" and traced:
        raise ValueError("loop='host' needs concrete inputs; under jit/vmap/grad use 'fori' or 'auto'")
    if loop == "fori" or (loop == "auto" and traced):
        return jax.lax.fori_loop(0, steps, lambda i, s: body(i, s, operands, static), state)
    for i in range(steps):
        state = _host_step(body, jnp.asarray(i, jnp.int32), state, operands, static)
    return state
