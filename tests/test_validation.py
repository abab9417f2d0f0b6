"""Argument checks at the public boundary (:mod:`jaxadv.validation`, ``prepare``).

Eager calls: every bad argument raises a ``ValueError`` whose message names the
argument: ``eps < 0``, ``step_size < 0``, ``eps`` of the wrong shape, ``steps < 1``
or not an int, labels outside ``[0, C)``, ``y`` with the wrong batch size,
shape or dtype, an unknown ``norm``, ``bounds`` that are not a pair, do not
broadcast or have ``lo > hi``, ``x`` outside ``bounds``, a targeted attack
without ``y``, a random start without ``key``, a non-float or batch-less ``x``
and a model whose logits are not ``[batch, C]``.

Under ``jax.jit`` value checks cannot run (the values are abstract): the
documented behaviour, tested here, is that an out-of-range ``eps``, label or
input does not raise. ``jaxadv.checked(attack)`` restores them:
under ``jax.jit`` it returns ``(err, x_adv)`` and ``err.throw()`` raises for bad
values and passes for good ones. Static problems (shapes, norm, steps) raise
under ``jit`` too.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxadv

BATCH, N, C = 4, 6, 3


def linear_apply(params: Any, x: jax.Array) -> jax.Array:
    return x.reshape(x.shape[0], -1) @ params["w"]


def flat_apply(params: Any, x: jax.Array) -> jax.Array:
    return jnp.sum(x.reshape(x.shape[0], -1) @ params["w"], axis=-1)


PARAMS = {"w": jnp.linspace(-1.0, 1.0, N * C).reshape(N, C)}
MODEL = jaxadv.from_apply(linear_apply, PARAMS)
X = jnp.linspace(0.1, 0.9, BATCH * N).reshape(BATCH, N)
Y = jnp.asarray([0, 1, 2, 1])
KEY = jax.random.key(0)

Attack = Callable[..., jax.Array]
ATTACKS: dict[str, Attack] = {
    "fgsm": lambda *a, **k: jaxadv.fgsm(*a, **k),
    "bim": lambda *a, **k: jaxadv.bim(*a, steps=2, **k),
    "pgd": lambda *a, **k: jaxadv.pgd(*a, key=KEY, steps=2, **k),
}
ALL = pytest.mark.parametrize("name", list(ATTACKS))


@ALL
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(eps=-0.1), "eps must be >= 0"),
        (dict(eps=jnp.asarray([0.1, -0.1, 0.1, 0.1])), "eps must be >= 0"),
        (dict(eps=jnp.full((BATCH + 1,), 0.1)), r"eps must be a scalar or have shape \[batch\]"),
        (dict(eps=0.1, norm="l3"), "norm must be one of"),
        (dict(eps=0.1, bounds=(0.0,)), "bounds must be a pair"),
        (dict(eps=0.1, bounds=(jnp.zeros(N + 1), 1.0)), r"bounds\[0\]"),
        (dict(eps=0.1, bounds=(0.0, jnp.ones((BATCH, 2)))), r"bounds\[1\]"),
        (dict(eps=0.1, bounds=(1.0, 0.0)), "lo <= hi"),
        (dict(eps=0.1, bounds=(0.2, 1.0)), "x must lie inside bounds"),
        (dict(eps=0.1, targeted=True), "y is required for a targeted attack"),
    ],
)
def test_bad_keyword_arguments(name: str, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ATTACKS[name](MODEL, X, None, **kwargs)


@ALL
@pytest.mark.parametrize(
    ("y", "match"),
    [
        (jnp.asarray([0, 1, 3, 1]), r"y must hold labels in \[0, 3\)"),
        (jnp.asarray([0, -1, 2, 1]), r"y must hold labels in \[0, 3\)"),
        (jnp.asarray([0, 1, 2]), r"y must have shape \[batch\]"),
        (jnp.zeros((BATCH, 1), jnp.int32), r"y must have shape \[batch\]"),
        (jnp.zeros((BATCH, C + 1)), r"one-hot y must have shape \[batch, num_classes\]"),
        (jnp.zeros((BATCH + 1, C)), r"one-hot y must have shape"),
        (jnp.zeros((BATCH, C), jnp.complex64), "y must hold integer labels or one-hot floats"),
    ],
)
def test_bad_labels(name: str, y: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ATTACKS[name](MODEL, X, y, eps=0.1)


@ALL
def test_bad_inputs_and_models(name: str) -> None:
    attack = ATTACKS[name]
    with pytest.raises(ValueError, match="x must be a floating-point array"):
        attack(MODEL, (X * 10).astype(jnp.int32), Y, eps=0.1, bounds=(0, 10))
    with pytest.raises(ValueError, match="x must have a leading batch axis"):
        attack(MODEL, jnp.asarray(0.5), None, eps=0.1)
    with pytest.raises(ValueError, match="logits_fn must return logits of shape"):
        attack(jaxadv.from_apply(flat_apply, PARAMS), X, Y, eps=0.1)
    with pytest.raises(ValueError, match="logits_fn must be callable"):
        attack(PARAMS, X, Y, eps=0.1)


@pytest.mark.parametrize("attack", [jaxadv.bim, jaxadv.pgd])
@pytest.mark.parametrize(
    ("steps", "match"),
    [
        (0, "steps must be >= 1"),
        (-3, "steps must be >= 1"),
        (2.0, "steps must be a Python int"),
        ("3", "steps must be a Python int"),
    ],
)
def test_bad_steps(attack: Attack, steps: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        attack(MODEL, X, Y, eps=0.1, steps=steps, **({"key": KEY} if attack is jaxadv.pgd else {}))


def test_bad_step_size_and_missing_key() -> None:
    with pytest.raises(ValueError, match="step_size must be >= 0"):
        jaxadv.bim(MODEL, X, Y, eps=0.1, step_size=-0.01)
    with pytest.raises(ValueError, match="step_size must be a scalar or have shape"):
        jaxadv.pgd(MODEL, X, Y, key=KEY, eps=0.1, step_size=jnp.ones(BATCH + 2))
    with pytest.raises(ValueError, match="key is required"):
        jaxadv.pgd(MODEL, X, Y, eps=0.1)
    # Without a random start no key is needed, and the result equals BIM.
    np.testing.assert_array_equal(
        np.asarray(jaxadv.pgd(MODEL, X, Y, eps=0.1, random_start=False, steps=2)),
        np.asarray(jaxadv.bim(MODEL, X, Y, eps=0.1, steps=2)),
    )


def test_valid_edge_cases_pass() -> None:
    # eps = 0 returns x; inputs on the bounds are inside; one-hot and bool labels are accepted.
    np.testing.assert_array_equal(np.asarray(jaxadv.fgsm(MODEL, X, Y, eps=0.0)), np.asarray(X))
    edge = X.at[0, 0].set(0.0).at[1, 1].set(1.0)
    assert jaxadv.bim(MODEL, edge, Y, eps=0.1, steps=2).shape == X.shape
    onehot = jax.nn.one_hot(Y, C) > 0
    np.testing.assert_array_equal(
        np.asarray(jaxadv.fgsm(MODEL, X, onehot, eps=0.1)), np.asarray(jaxadv.fgsm(MODEL, X, Y, eps=0.1))
    )


# --- under jit ----------------------------------------------------------------------------


def _jitted(name: str) -> Callable[..., jax.Array]:
    return jax.jit(lambda x, y, eps: ATTACKS[name](MODEL, x, y, eps=eps))


@ALL
def test_value_checks_are_skipped_under_jit(name: str) -> None:
    """Documented behaviour: abstract values cannot be checked, so nothing raises."""
    run = _jitted(name)
    out = run(X, Y, -0.1)  # negative eps
    assert out.shape == X.shape
    run(X, jnp.asarray([0, 1, 7, 1]), 0.1)  # label out of range
    run(X + 5.0, Y, 0.1)  # x outside bounds
    # Static problems still raise under jit.
    with pytest.raises(ValueError, match="y must have shape"):
        run(X, Y[:2], 0.1)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("attack", "kw"),
    [(jaxadv.fgsm, {}), (jaxadv.bim, {"steps": 2}), (jaxadv.pgd, {"steps": 2, "key": KEY})],
    ids=["fgsm", "bim", "pgd"],
)
def test_checked_reports_bad_values_under_jit(attack: Attack, kw: dict[str, Any]) -> None:
    run = jax.jit(jaxadv.checked(attack), static_argnames=("steps",) if "steps" in kw else ())

    err, out = run(MODEL, X, Y, eps=0.1, **kw)
    err.throw()  # valid: nothing raised
    assert out.shape == X.shape
    np.testing.assert_array_equal(np.asarray(out), np.asarray(attack(MODEL, X, Y, eps=0.1, **kw)))

    for x, y, eps, match in (
        (X, Y, -0.1, "eps must be >= 0"),
        (X, jnp.asarray([0, 1, 7, 1]), 0.1, "y must hold labels"),
        (X + 5.0, Y, 0.1, "x must lie inside bounds"),
    ):
        err, _ = run(MODEL, x, y, eps=eps, **kw)
        with pytest.raises(ValueError, match=match):
            err.throw()
