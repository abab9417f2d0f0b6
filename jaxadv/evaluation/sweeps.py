"""Accuracy against many eps values: a vmapped sweep and a per-example minimal eps."""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Sequence
from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np

from jaxadv._core.compile import jit
from jaxadv.attacks.iterative import pgd
from jaxadv.attacks.single_step import fgsm
from jaxadv.models import ModelStatic, combine_model, predict, split_model
from jaxadv.threat_models import norm_of
from jaxadv.typing import Array, ArrayLike, Bounds, LogitsFn, Norm, PRNGKey
from jaxadv.validation import check_norm, check_steps


@functools.partial(jit, static_argnames=("model", "norm", "steps", "single_step"))
def _sweep(
    model: ModelStatic,
    params: Any,
    x: Array,
    y: Array,
    eps_values: Array,
    key: PRNGKey,
    lo: Array,
    hi: Array,
    *,
    norm: Norm,
    steps: int,
    single_step: bool,
) -> Array:
    logits_fn = combine_model(model, params)

    def correct_at(eps: Array) -> Array:
        if single_step:
            x_adv = fgsm(logits_fn, x, y, eps=eps, norm=norm, bounds=(lo, hi))
        else:
            x_adv = pgd(logits_fn, x, y, key=key, eps=eps, steps=steps, norm=norm, bounds=(lo, hi))
        return jnp.argmax(logits_fn(x_adv), axis=-1) == y

    return jax.vmap(correct_at)(eps_values)


def accuracy_vs_eps(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike,
    *,
    eps_values: Sequence[float] | ArrayLike,
    key: PRNGKey,
    norm: Norm = "linf",
    steps: int = 20,
    attack: str = "pgd",
    bounds: Bounds = (0.0, 1.0),
) -> np.ndarray:
    r"""Accuracy under attack at each eps, all eps in one compiled program.

    :func:`jax.vmap` maps the attack over ``eps_values`` inside one
    :func:`jax.jit`: one compilation for the whole sweep, whatever the number of
    eps values (memory grows with it; split the sweep if it does not fit).

    Args:
      logits_fn: model. x: ``[n, ...]`` inputs. y: ``[n]`` integer labels.
      eps_values: ``[m]`` radii (raw input units).
      key: PRNG key for PGD's random start (the same start for every eps).
      norm: threat model. steps: PGD steps (static).
      attack: ``"pgd"`` or ``"fgsm"``.
      bounds: ``(lo, hi)``.

    Returns:
      ``[m]`` accuracies (clean accuracy where eps is 0).
    """
    norm = check_norm(norm)
    check_steps(steps)
    if attack not in ("pgd", "fgsm"):
        raise ValueError(f"attack must be 'pgd' or 'fgsm', got {attack!r}")
    eps_arr = jnp.asarray(eps_values, jnp.float32)
    if eps_arr.ndim != 1:
        raise ValueError(f"eps_values must be one-dimensional, got shape {eps_arr.shape}")
    if not np.all(np.asarray(eps_arr) >= 0):  # NaN fails the comparison too
        raise ValueError(f"eps_values must be >= 0 (not NaN), got {np.asarray(eps_arr).tolist()}")
    model, params = split_model(logits_fn)
    correct = _sweep(
        model,
        params,
        jnp.asarray(x, jnp.float32),
        jnp.asarray(y, jnp.int32),
        eps_arr,
        key,
        jnp.asarray(bounds[0], jnp.float32),
        jnp.asarray(bounds[1], jnp.float32),
        norm=norm,
        steps=steps,
        single_step=attack == "fgsm",
    )
    return np.asarray(jnp.mean(correct, axis=1))


#: Minimal-norm attacks :func:`minimal_eps` runs by name: ``name -> (module, function)``
#: (imported when used), each called as ``fn(logits_fn, x, y, norm=, steps=, bounds=)``
#: and, where it draws random numbers, with ``key=``.
MINIMAL_NORM_ATTACKS: dict[str, tuple[str, str, bool]] = {
    "fmn": ("jaxadv.attacks.fmn", "fmn", False),
    "fab": ("jaxadv.attacks.fab", "fab", True),
    "deepfool": ("jaxadv.attacks.deepfool", "deepfool", False),
}


def minimal_eps(
    logits_fn: LogitsFn,
    x: ArrayLike,
    y: ArrayLike,
    *,
    eps_max: float | None = None,
    key: PRNGKey | None = None,
    norm: Norm = "linf",
    attack: str | Callable[..., Any] = "pgd",
    steps: int | None = None,
    iterations: int = 10,
    bounds: Bounds = (0.0, 1.0),
) -> np.ndarray:
    r"""Per-example smallest eps at which an attack fools the model.

    Two ways to find it:

    * ``attack="pgd"`` (default): binary search with PGD. Keeps per example an
      interval :math:`[a, b]` with the attack failing at :math:`a` and succeeding
      at :math:`b`; each iteration runs PGD (``steps`` steps, default 20) with the
      per-example radius :math:`(a+b)/2` (one batched call) and halves the
      interval, so the result is within ``eps_max / 2**iterations`` of the
      attack's threshold (assuming success is monotone in eps, which holds for a
      strong attack up to its randomness). Needs ``eps_max`` and ``key``.
    * a minimal-norm attack, one run: ``"fmn"`` (:func:`jaxadv.fmn`, every norm
      including ``"l0"``), ``"fab"`` (:func:`jaxadv.fab`; needs ``key``),
      ``"deepfool"`` (L2, L-inf), or a callable ``attack(logits_fn, x, y) ->
      x_adv`` of the user's. The radius of an example is the ``norm`` of its
      returned perturbation :math:`\|x' - x\|` where :math:`x'` is adversarial
      (re-predicted). ``steps`` (default 100) is passed to the named attacks;
      ``eps_max``, if given, caps the radii (a larger one counts as not found).

    With the result, :func:`accuracy_curve` gives the whole robust-accuracy-vs-eps
    curve (a security evaluation curve) and :func:`jaxadv.evaluation.plot_accuracy_vs_eps` draws it.

    Returns:
      ``[n]`` float: ``0`` for examples already misclassified, ``inf`` for
      examples the attack cannot fool (within ``eps_max``), else the radius found.
    """
    check_steps(iterations, "iterations")
    x = jnp.asarray(x)
    y = jnp.asarray(y, jnp.int32)
    if isinstance(norm, str) and norm.lower() == "l0":
        norm = "l0"  # type: ignore[assignment]  # FMN's norm, outside the Norm of the ball attacks
    else:
        norm = check_norm(norm)
    clean_wrong = predict(logits_fn, x) != y
    if attack != "pgd":
        radius = _minimal_norm_radius(
            logits_fn, x, y, attack=attack, norm=norm, steps=steps, key=key, bounds=bounds
        )
        if eps_max is not None:
            radius = jnp.where(radius <= eps_max, radius, jnp.inf)
        return np.asarray(jnp.where(clean_wrong, 0.0, radius))
    if eps_max is None or key is None:
        raise ValueError(
            "minimal_eps with attack='pgd' needs eps_max and key (the binary search's range and seed)"
        )
    if norm == "l0":
        raise ValueError("attack='pgd' has no L0 version: use attack='fmn' for norm='l0'")
    pgd_steps = 20 if steps is None else check_steps(steps)
    n = x.shape[0]

    def fooled(eps: Array, k: PRNGKey) -> Array:
        x_adv = pgd(logits_fn, x, y, key=k, eps=eps, steps=pgd_steps, norm=norm, bounds=bounds)
        return predict(logits_fn, x_adv) != y

    keys = jax.random.split(key, iterations + 1)
    hi = jnp.full((n,), eps_max, jnp.float32)
    ok_at_max = fooled(hi, keys[0]) | clean_wrong
    lo = jnp.zeros((n,), jnp.float32)
    for i in range(iterations):
        mid = (lo + hi) / 2
        success = fooled(mid, keys[i + 1])
        hi = jnp.where(success, mid, hi)
        lo = jnp.where(success, lo, mid)
    out = jnp.where(ok_at_max, hi, jnp.inf)
    return np.asarray(jnp.where(clean_wrong, 0.0, out))


def _minimal_norm_radius(
    logits_fn: LogitsFn,
    x: Array,
    y: Array,
    *,
    attack: str | Callable[..., Any],
    norm: str,
    steps: int | None,
    key: PRNGKey | None,
    bounds: Bounds,
) -> Array:
    """The ``norm`` of each adversarial perturbation a minimal-norm attack returns (inf where none)."""
    if isinstance(attack, str):
        if attack not in MINIMAL_NORM_ATTACKS:
            raise ValueError(
                f"attack must be 'pgd', one of {sorted(MINIMAL_NORM_ATTACKS)} or a callable, got {attack!r}"
            )
        module, name, keyed = MINIMAL_NORM_ATTACKS[attack]
        fn = getattr(importlib.import_module(module), name)
        kwargs: dict[str, Any] = {"norm": norm, "steps": 100 if steps is None else steps, "bounds": bounds}
        if keyed:
            if key is None:
                raise ValueError(f"attack={attack!r} draws random numbers: pass key=jax.random.key(0)")
            kwargs["key"] = key
        x_adv = fn(logits_fn, x, y, **kwargs)
    elif callable(attack):
        x_adv = attack(logits_fn, x, y)
    else:
        raise ValueError(
            f"attack must be 'pgd', one of {sorted(MINIMAL_NORM_ATTACKS)} or a callable, got {attack!r}"
        )
    x_adv = jnp.asarray(x_adv)
    if x_adv.shape != x.shape:
        raise ValueError(f"the attack returned shape {x_adv.shape}, expected x's {x.shape}")
    delta = (x_adv.astype(jnp.float32) - x.astype(jnp.float32)).reshape(x.shape[0], -1)
    if norm == "l0":
        size = jnp.sum(delta != 0, axis=1).astype(jnp.float32)
    else:
        size = norm_of(delta, cast(Norm, norm))
    fooled = predict(logits_fn, x_adv) != y
    return jnp.where(fooled, size, jnp.inf)


def accuracy_curve(min_eps: ArrayLike, eps_values: Sequence[float] | ArrayLike) -> np.ndarray:
    """Robust accuracy at each eps from per-example minimal radii: ``mean(min_eps > eps)``."""
    m = np.asarray(min_eps)[None, :]
    e = np.asarray(eps_values, np.float32)[:, None]
    return np.mean(m > e, axis=1)
