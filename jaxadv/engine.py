r"""The iterative engine shared by every iterative attack.

An iterative attack is a state, a step rule ``body(i, state, operands, static) ->
state`` and a number of steps. :func:`iterate` runs it in one of three ways:

* ``"fori"``: one :func:`jax.lax.fori_loop` inside the caller's program. This is
  what runs under a user's ``jit``, ``vmap`` or ``grad``: the attack composes
  like any other JAX function, and its compile time does not grow with ``steps``.
  Called directly (concrete arrays, no caller's program), the loop is compiled
  once per step rule, configuration, ``steps`` and input shapes, and cached.
* ``"compiled"``: the same loop as a program of its own, compiled once per step
  rule, configuration and input shapes and cached. The trip count is an
  argument of the program (the loop lowers to a ``while`` with a dynamic
  bound), so a new ``steps`` never recompiles. This is what a direct call with
  concrete arrays runs: the whole loop is one dispatch, and XLA fuses across
  steps.
* ``"host"``: a Python loop that calls one compiled step per iteration (one
  dispatch per step). Kept as an option; ``benchmarks/bench_core.py`` measures
  it next to the compiled loop.

On XLA:CPU the loop body runs with its convolutions in the form XLA:CPU's fast
convolution path takes, and the kernels of the input gradient are prepared
once before the loop (:mod:`jaxadv._core.conv_rewrite`; the setting
``conv_rewrite`` of :mod:`jaxadv.config` turns it off).

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

from jaxadv import config
from jaxadv._core import conv_rewrite
from jaxadv._core.compile import jit
from jaxadv.typing import LoopMode
from jaxadv.validation import is_traced

S = TypeVar("S")
Body = Callable[[Any, Any, Any, Any], Any]


@functools.partial(jit, static_argnums=(0, 4))
def _host_step(body: Body, i: jax.Array, state: Any, operands: Any, static: Any) -> Any:
    return body(i, state, operands, static)


def _rewriting() -> bool:
    """Whether loops traced now get the convolution rewrite (the setting, and a CPU backend)."""
    return config.read("conv_rewrite") and jax.default_backend() in conv_rewrite.PLATFORMS


def _fori(body: Body, steps: Any, state: Any, operands: Any, static: Any, rewrite: bool) -> Any:
    if rewrite:
        return conv_rewrite.fori_loop(body, steps, state, operands, static)
    return jax.lax.fori_loop(0, steps, lambda i, s: body(i, s, operands, static), state)


@functools.partial(jit, static_argnums=(0, 4, 5))
def _compiled_loop(
    body: Body, steps: jax.Array, state: Any, operands: Any, static: Any, rewrite: bool
) -> Any:
    return _fori(body, steps, state, operands, static, rewrite)


@functools.partial(jit, static_argnums=(0, 1, 4, 5))
def _fori_program(body: Body, steps: int, state: Any, operands: Any, static: Any, rewrite: bool) -> Any:
    # A direct call with loop="fori": the same loop as under a caller's jit (a static
    # trip count), compiled once and cached instead of re-traced at every call.
    return _fori(body, steps, state, operands, static, rewrite)


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
    if loop == "fori" and not traced:
        return _fori_program(body, steps, state, operands, static, _rewriting())
    if loop == "fori" or (loop == "auto" and traced):
        return _fori(body, steps, state, operands, static, _rewriting())
    if loop in ("auto", "compiled"):
        return _compiled_loop(body, jnp.asarray(steps, jnp.int32), state, operands, static, _rewriting())
    for i in range(steps):
        state = _host_step(body, jnp.asarray(i, jnp.int32), state, operands, static)
    return state
