"""Argument checks at the public boundary.

Static facts (shapes, norm names, step counts) are always checked and raise a
``ValueError`` naming the argument. Checks on *values* (``eps >= 0``, labels in
range, ``x`` inside ``bounds``) need concrete numbers: they raise a
``ValueError`` when the attack is called eagerly, and are skipped under a
user's ``jit``/``vmap``, where the values are abstract. Wrap an attack with
:func:`jaxadv.checked` to run the value checks under ``jit`` as well, through
:mod:`jax.experimental.checkify`.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from typing import Any, Callable, Iterator, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

from jaxadv.typing import NORMS, Array

_state = threading.local()
F = TypeVar("F", bound=Callable[..., Any])


def is_traced(*trees: Any) -> bool:
    """True when any leaf of ``trees`` is an abstract value under a JAX transformation."""
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(trees))


def _checks_on() -> bool:
    return getattr(_state, "checkify", False)


@contextlib.contextmanager
def _checkify_scope() -> Iterator[None]:
    previous = _checks_on()
    _state.checkify = True
    try:
        yield
    finally:
        _state.checkify = previous


def checked(attack: F) -> Callable[..., tuple[checkify.Error, Any]]:
    """Make an attack's value checks run under ``jit`` too.

    ``checked(jaxadv.pgd)(logits_fn, x, y, key=k, eps=e, ...)`` returns
    ``(err, x_adv)``, where ``err`` is a :class:`jax.experimental.checkify.Error`;
    ``err.throw()`` raises if ``eps < 0``, a label lies outside the classes or ``x``
    leaves ``bounds``. The wrapped function may itself be jitted:
    ``jax.jit(checked(jaxadv.pgd), static_argnames=("steps",))``.
    """

    @functools.wraps(attack)
    def wrapped(*args: Any, **kwargs: Any) -> tuple[checkify.Error, Any]:
        def run(*a: Any, **k: Any) -> Any:
            with _checkify_scope():
                return attack(*a, **k)

        return checkify.checkify(run, errors=checkify.user_checks)(*args, **kwargs)

    return wrapped


def value_check(ok: Array | bool, message: str, **fmt: Any) -> None:
    """Raise ``ValueError(message)`` when ``ok`` is false (concrete values), or
    record a checkify check (traced values, inside :func:`checked`)."""
    if is_traced(ok, fmt):
        if _checks_on():
            checkify.check(jnp.all(ok), message, **fmt)
        return
    if not bool(np.all(np.asarray(ok))):
        raise ValueError(message.format(**{k: np.asarray(v) for k, v in fmt.items()}))


def check_norm(norm: str) -> str:
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    return norm


def check_steps(steps: Any, name: str = "steps") -> int:
    if isinstance(steps, jax.core.Tracer) or not isinstance(steps, (int, np.integer)):
        raise ValueError(f"{name} must be a Python int (it is static), got {steps!r}")
    if steps < 1:
        raise ValueError(f"{name} must be >= 1, got {steps}")
    return int(steps)


def check_nonnegative(value: Any, name: str) -> Array:
    value = jnp.asarray(value, jnp.float32)
    value_check(value >= 0, f"{name} must be >= 0, got {{v}}", v=jnp.min(value))
    return value


def check_batch_array(value: Array, x: Array, name: str) -> Array:
    """``value`` must be a scalar or have shape ``[batch]`` matching ``x``."""
    if value.ndim == 0:
        return value
    if value.shape != (x.shape[0],):
        raise ValueError(
            f"{name} must be a scalar or have shape [batch]=({x.shape[0]},), got shape {value.shape}"
        )
    return value


def check_inputs(x: Any) -> Array:
    x = jnp.asarray(x)
    if x.ndim < 1:
        raise ValueError(f"x must have a leading batch axis, got shape {x.shape}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"x must be a floating-point array, got dtype {x.dtype}")
    return x


def check_in_bounds(x: Array, lo: Array, hi: Array) -> None:
    """``x`` must lie inside ``[lo, hi]`` (up to a relative 1e-6 of the range)."""
    xf = x.astype(jnp.float32)
    tol = 1e-6 * jnp.max(hi - lo)
    value_check(
        jnp.all(xf >= lo - tol) & jnp.all(xf <= hi + tol),
        "x must lie inside bounds: found values in [{xmin}, {xmax}] outside the given bounds; "
        "pass bounds= matching your input range (eps is measured in that raw input space)",
        xmin=jnp.min(xf),
        xmax=jnp.max(xf),
    )
