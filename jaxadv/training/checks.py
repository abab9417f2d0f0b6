"""Argument checks of the training losses and step builders.

Hyperparameters handed to a step builder are constants of the step, so they are
checked once, when the step is built, and raise ``ValueError`` naming the
argument. A batch's ``x`` and ``y`` only reach a compiled step as abstract
values: their checks go through :func:`jaxadv.validation.value_check`, which
raises on concrete values and, under ``jit``, records a checkify check that
runs when the step is wrapped with :func:`jaxadv.checked` (or built with
``checked=True``).
"""

from __future__ import annotations

from typing import Any, Callable, Union

import jax
import jax.numpy as jnp

from jaxadv import validation
from jaxadv.typing import Array, ArrayLike, Bounds, Norm
from jaxadv.validation import check_finite, check_nonnegative, check_norm, check_steps, value_check

#: A hyperparameter as a value or as a schedule of the training step count: an
#: optax schedule, or any callable ``count -> value`` (traced ``count``).
ScalarOrSchedule = Union[ArrayLike, Callable[[Any], ArrayLike]]


def at_count(value: Any, name: str, count: Any) -> Any:
    """``value(count)`` when ``value`` is a schedule (a callable), else ``value``.

    Raises ``ValueError`` when ``value`` is a schedule and ``count`` is ``None``.
    """
    if not callable(value):
        return value
    if count is None:
        raise ValueError(
            f"{name} is a schedule (a callable of the step count): pass count= "
            "(the number of training steps taken so far, e.g. state.step)"
        )
    return value(count)


def check_schedule(value: Any, name: str) -> None:
    """A schedule must map a step count to a scalar: it is called once, at count 0,
    and that value checked (``>= 0``, finite or ``inf``) when it is concrete."""
    if not callable(value):
        return
    try:
        first = value(jnp.zeros((), jnp.int32))
    except Exception as e:  # noqa: BLE001 - a user's callable that fails: say which argument
        raise ValueError(
            f"{name} is a callable but not a schedule of the step count: {name}(0) raised "
            f"{type(e).__name__}: {e}"
        ) from e
    shape = jnp.shape(first)
    if shape != ():
        raise ValueError(f"{name} must be a schedule of scalars, but {name}(0) has shape {shape}")
    if not isinstance(first, jax.core.Tracer):
        check_nonnegative(first, f"{name}(0)")


def check_bounds(bounds: Bounds) -> tuple[Array, Array]:
    """``bounds`` must be a pair ``(lo, hi)`` with ``lo <= hi`` everywhere; float32 arrays."""
    if not isinstance(bounds, (tuple, list)) or len(bounds) != 2:
        raise ValueError(f"bounds must be a pair (lo, hi), got {bounds!r}")
    lo = jnp.asarray(bounds[0], jnp.float32)
    hi = jnp.asarray(bounds[1], jnp.float32)
    value_check(
        jnp.all(lo <= hi),
        "bounds must satisfy lo <= hi, got lo={lo} > hi={hi}; pass bounds=(lo, hi) in that order",
        lo=jnp.max(lo),
        hi=jnp.min(hi),
    )
    return lo, hi


def check_labels(y: Any, batch: int, num_classes: int) -> None:
    """``y``: ``[batch]`` integer labels in ``[0, num_classes)`` or ``[batch, num_classes]``
    floats (:func:`jaxadv.validation.check_labels`, the attacks' own check).

    Out-of-range integer labels would one-hot encode to all zeros and contribute
    a zero loss without any error, so their range is a value check.
    """
    validation.check_labels(y, batch, num_classes)


def check_attack_config(
    *,
    eps: Any,
    step_size: Any,
    steps: Any,
    beta: Any,
    norm: str,
    bounds: Bounds,
    needs_eps: bool,
    needs_step_size: bool,
    needs_steps: bool,
    method: str,
) -> tuple[Norm, int | None]:
    """The static hyperparameters of a training method.

    Returns the canonical norm name and ``steps`` as an int (or None).

    Raises ``ValueError`` naming the argument for a missing required value, an
    unknown norm, ``eps < 0``, ``step_size < 0``, ``beta`` negative or not
    finite, ``steps < 1`` or ``lo > hi``. Every given value is checked, needed or
    not; ``eps`` and ``step_size`` may be schedules (:func:`check_schedule`).
    """
    norm = check_norm(norm)
    check_bounds(bounds)
    for name, value, needed in (("eps", eps, needs_eps), ("step_size", step_size, needs_step_size)):
        if value is None:
            if needed:
                raise ValueError(f"method={method!r} needs {name}=")
        elif callable(value):
            check_schedule(value, name)
        else:
            check_nonnegative(value, name)
    check_finite(beta, "beta", minimum=0.0)
    if steps is None:
        if needs_steps:
            raise ValueError(f"method={method!r} needs steps= (a Python int >= 1)")
        return norm, None
    return norm, check_steps(steps)
