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

from jaxadv.typing import NORMS, Array, Norm

_state = threading.local()
F = TypeVar("F", bound=Callable[..., Any])


def is_traced(*trees: Any) -> bool:
    """True when any leaf of ``trees`` is an abstract value under a JAX transformation."""
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(trees))


def _checks_on() -> bool:
    return getattr(_state, "checkify", False)


def checks_enabled() -> bool:
    """Whether the code running now is inside :func:`checked` (value checks under ``jit``).

    Compiled functions that cache a program per setting use it to keep one
    version with the checks and one without.
    """
    return _checks_on()


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


#: Accepted spellings of each norm (compared case-insensitively), e.g. AutoAttack's
#: ``"Linf"`` / ``"L2"`` / ``"L1"`` and ``"inf"``.
_NORM_ALIASES = {"linf": "linf", "inf": "linf", "l2": "l2", "l1": "l1"}


def check_norm(norm: Any) -> Norm:
    """The canonical name (``"linf"``, ``"l2"`` or ``"l1"``) of a norm.

    Names are case-insensitive and ``"inf"`` means ``"linf"``, so ``"Linf"``,
    ``"LINF"``, ``"L2"`` and ``"L1"`` are accepted. Callers use the returned name
    (also as static configuration: an alias compiles nothing new).
    """
    canonical = _NORM_ALIASES.get(norm.lower()) if isinstance(norm, str) else None
    if canonical is None:
        raise ValueError(f"norm must be one of {NORMS} (case-insensitive; 'inf' means 'linf'), got {norm!r}")
    return canonical  # type: ignore[return-value]


def check_steps(steps: Any, name: str = "steps") -> int:
    if isinstance(steps, jax.core.Tracer) or not isinstance(steps, (int, np.integer)):
        raise ValueError(f"{name} must be a Python int (it is static), got {steps!r}")
    if steps < 1:
        raise ValueError(f"{name} must be >= 1, got {steps}")
    return int(steps)


def check_target_classes(num_target_classes: int, num_classes: int) -> None:
    """A targeted attack over the most likely other classes can try at most ``C - 1`` of them."""
    if num_target_classes > num_classes - 1:
        raise ValueError(
            f"num_target_classes must be at most num_classes - 1 = {num_classes - 1} (the classes other than "
            f"the label), got {num_target_classes}"
        )


def check_nonnegative(value: Any, name: str) -> Array:
    value = jnp.asarray(value, jnp.float32)
    value_check(value >= 0, f"{name} must be >= 0, got {{v}}", v=jnp.min(value))
    return value


def check_finite(
    value: Any,
    name: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    above: bool = False,
) -> Array:
    """``value`` as float32, refused unless every entry is finite and in range.

    The range is ``[minimum, maximum]`` (``(minimum, maximum]`` with ``above``);
    ``None`` leaves that side open. A value check: concrete values raise a
    ``ValueError`` naming ``name``; traced ones are checked only inside
    :func:`checked`. NaN fails every comparison, so it is always refused.
    """
    v = jnp.asarray(value, jnp.float32)
    ok = jnp.isfinite(v)
    if minimum is not None:
        ok = ok & ((v > minimum) if above else (v >= minimum))
    if maximum is not None:
        ok = ok & (v <= maximum)
    if minimum is not None and maximum is not None:
        rule = f"in {'(' if above else '['}{minimum:g}, {maximum:g}]"
    elif minimum is not None:
        rule = f"{'>' if above else '>='} {minimum:g} and finite"
    elif maximum is not None:
        rule = f"<= {maximum:g} and finite"
    else:
        rule = "finite"
    value_check(jnp.all(ok), f"{name} must be {rule}, got {{v}}", v=v)
    return v


def check_key(key: Any, name: str = "key", *, per_example: bool = False) -> Any:
    """``key`` must be one PRNG key: a typed key of shape ``()`` (:func:`jax.random.key`)
    or a raw ``uint32`` key of shape ``(2,)``/``(4,)`` (:func:`jax.random.PRNGKey`).

    With ``per_example=True`` (an attack that draws each example's numbers from
    its own key, :mod:`jaxadv.keys`) a ``[batch]`` array of keys passes too
    (typed ``(batch,)`` or raw ``(batch, 2)``/``(batch, 4)``); its length is
    checked against the batch where the keys are used.

    Only its type and shape are read, so a traced key passes under ``jit``.
    Raises ``ValueError`` naming ``name`` for anything else (``None``, an int
    seed, a batch of keys where one key is required).
    """
    dtype = getattr(key, "dtype", None)
    shape = getattr(key, "shape", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        if shape == () or (per_example and shape is not None and len(shape) == 1):
            return key
    elif dtype == np.uint32 and shape is not None:
        if shape in ((2,), (4,)) or (per_example and len(shape) == 2 and shape[1] in (2, 4)):
            return key
    got = f"{type(key).__name__} {key!r}" if dtype is None else f"an array of dtype {dtype} and shape {shape}"
    also = " or a [batch] array of keys, one per example" if per_example else ""
    raise ValueError(
        f"{name} must be one PRNG key{also}, e.g. {name}=jax.random.key(0) (split it for several calls), "
        f"got {got}"
    )


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
    """``x`` as a JAX array: a floating-point ``[batch, ...]`` array (finite values are
    checked by :func:`check_in_bounds`)."""
    dtype = getattr(x, "dtype", None)
    if dtype is None:
        dtype = np.asarray(x).dtype
    if not jnp.issubdtype(dtype, jnp.floating):
        hint = ""
        if jnp.issubdtype(dtype, jnp.integer) or dtype == np.bool_:
            hint = (
                "; for 8-bit images convert with x.astype(np.float32) / 255 and pass bounds=(0, 1) "
                "(eps is then measured in that [0, 1] scale, e.g. eps=8 / 255)"
            )
        raise ValueError(f"x must be a floating-point array, got dtype {dtype}{hint}")
    x = jnp.asarray(x)
    if x.ndim < 1:
        raise ValueError(f"x must have a leading batch axis, got shape {x.shape}")
    return x


def check_in_bounds(x: Array, lo: Array, hi: Array, dtype: Any = None) -> None:
    r"""``x`` must be finite and lie inside ``[lo, hi]`` (up to a relative 1e-6 of the range).

    ``dtype``: the dtype the caller's ``x`` had before it was cast to float32.
    Data inside the bounds, rounded to that dtype, may lie just outside them
    (``float16(0.3) = 0.30005``); so the box is widened to the bounds rounded to
    ``dtype`` (:math:`[\mathrm{fl}(lo), \mathrm{fl}(hi)]`, rounding being monotone),
    the most that rounding in-bounds data can reach.
    """
    xf = x.astype(jnp.float32)
    value_check(
        jnp.all(jnp.isfinite(xf)),
        "x contains NaN/inf values ({count} of them): attacks need finite inputs",
        count=jnp.sum(~jnp.isfinite(xf)),
    )
    span = hi - lo
    # Infinite bounds: no tolerance is needed (and inf * 1e-6 would loosen finite ones).
    tol = 1e-6 * jnp.max(jnp.where(jnp.isfinite(span), span, 0.0))
    if dtype is not None and jnp.dtype(dtype) != jnp.float32 and jnp.issubdtype(dtype, jnp.floating):
        lo = jnp.minimum(lo, lo.astype(dtype).astype(jnp.float32))
        hi = jnp.maximum(hi, hi.astype(dtype).astype(jnp.float32))
    value_check(
        jnp.all(xf >= lo - tol) & jnp.all(xf <= hi + tol),
        "x must lie inside bounds: found values in [{xmin}, {xmax}] outside the given bounds; "
        "pass bounds= matching your input range (eps is measured in that raw input space)",
        xmin=jnp.min(xf),
        xmax=jnp.max(xf),
    )


def check_labels(y: Any, batch: int, num_classes: int, *, soft: bool = False) -> Array:
    """Integer labels ``[batch]`` as int32; one-hot labels ``[batch, C]`` as their int32 argmax.

    Raises ``ValueError`` for: a dtype that is neither integer, float nor bool
    (strings...); float labels of shape ``[batch]`` (class indices must be passed as
    integers: ``y.astype(np.int32)``; float ``y`` means one-hot labels of shape
    ``[batch, C]``); labels of the wrong shape; and, when the values are concrete,
    integer labels outside ``[0, C)`` (checked before the cast to int32, so that
    int64 labels cannot wrap around into range) and ``[batch, C]`` rows that are
    not one-hot (a single 1, zeros elsewhere): soft labels would make every
    success flag wrong, since success is judged against one class. Under ``jit``
    the values are abstract and ``[batch, C]`` labels are taken as their argmax
    (checked inside :func:`checked`).

    ``soft=True`` (for the library's own use: TRADES attacks a probability
    vector) keeps ``[batch, C]`` labels as float32 rows, unchecked.
    """
    if not isinstance(y, jax.Array):
        y_np = np.asarray(y)
        if y_np.dtype.kind not in "iufb":
            raise ValueError(
                f"y must hold integer labels or one-hot floats, got dtype {y_np.dtype}: "
                "pass class indices as integers, e.g. np.asarray(y, np.int32)"
            )
        if y_np.dtype.kind in "iu" and y_np.ndim == 1 and y_np.size:
            lmin, lmax = y_np.min(), y_np.max()
            if lmin < 0 or lmax >= num_classes:
                raise ValueError(
                    f"y must hold labels in [0, {num_classes}), found values in [{lmin}, {lmax}]"
                )
        y = y_np
    labels = jnp.asarray(y)
    if jnp.issubdtype(labels.dtype, jnp.integer) and labels.ndim == 1:
        if labels.shape != (batch,):
            raise ValueError(
                f"y must have shape [batch]=({batch},) (integer labels) or "
                f"[batch, num_classes] (one-hot), got {labels.shape}"
            )
        if labels.size:
            value_check(
                jnp.all((labels >= 0) & (labels < num_classes)),
                f"y must hold labels in [0, {num_classes}), found values in [{{lmin}}, {{lmax}}]",
                lmin=jnp.min(labels),
                lmax=jnp.max(labels),
            )
        return labels.astype(jnp.int32)
    if labels.dtype.kind not in "iufb":
        raise ValueError(f"y must hold integer labels or one-hot floats, got dtype {labels.dtype}")
    if labels.shape == (batch,) and labels.ndim == 1:
        raise ValueError(
            f"y of shape [batch]=({batch},) must hold integer class indices, got dtype {labels.dtype}: "
            "pass y.astype(np.int32) (float y is read as one-hot labels of shape [batch, num_classes])"
        )
    if labels.shape != (batch, num_classes):
        if jnp.issubdtype(labels.dtype, jnp.integer):
            raise ValueError(
                f"y must have shape [batch]=({batch},) (integer labels) or [batch, num_classes]=({batch}, "
                f"{num_classes}) (one-hot), got {labels.shape}"
            )
        raise ValueError(
            f"one-hot y must have shape [batch, num_classes]=({batch}, {num_classes}), got {labels.shape}"
        )
    rows = labels.astype(jnp.float32)
    if soft:
        return rows
    if batch:
        ones = jnp.sum(rows == 1, axis=1)
        onehot = jnp.all((rows == 0) | (rows == 1), axis=1) & (ones == 1)
        value_check(
            jnp.all(onehot),
            "y of shape [batch, num_classes] must hold one-hot rows (a single 1, zeros elsewhere); "
            "row {row} is not (soft labels are not supported: success is judged against one class, "
            "so pass y.argmax(-1) if that is the class you mean)",
            row=jnp.argmin(onehot),
        )
    return jnp.argmax(rows, axis=1).astype(jnp.int32)


def check_trace(trace: bool, return_info: bool) -> None:
    """Refuse ``trace=True`` without ``return_info=True``: the trace comes back in
    ``AttackResult.trace``, which the plain array return has no room for."""
    if not isinstance(trace, bool):
        raise ValueError(f"trace must be True or False, got {trace!r}")
    if trace and not return_info:
        raise ValueError("trace=True needs return_info=True: the trace comes back in AttackResult.trace")
