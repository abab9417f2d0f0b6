"""Hypothesis properties of FGSM, BIM and PGD on a tiny random MLP.

For random batch sizes (1..5), feature shapes (flat and NHWC), input dtypes
(float32, bfloat16), norms (linf, l2, l1), radii (scalar or one per example),
targeted or untargeted attacks, and scalar or per-channel bounds (shape
``(C,)`` broadcasting against the last axis), every attack returns:

* an array with the shape and dtype of ``x``, without NaN;
* inside ``bounds`` exactly (the bounds used are representable in bfloat16);
* inside the eps-ball, up to ``1e-5`` for float32 inputs; for bfloat16 inputs
  the result is rounded to bfloat16, so each coordinate may move by half a
  unit in the last place (at most ``2**-8`` for values in ``[-1, 1]``): the
  stated tolerance is ``2**-8`` (linf), ``2**-8 * sqrt(n)`` (l2) and
  ``2**-8 * n`` (l1) for ``n`` features.

A second property: attacking a batch equals attacking each example alone (the
loss is summed over the batch, so no example's step depends on another).
"""

from __future__ import annotations

import functools
from typing import Any

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

import jaxadv

SHAPES = [(6,), (2, 2, 3)]
NUM_CLASSES = 4
SETTINGS = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
BF16_HALF_ULP = 2.0**-8


def mlp_apply(params: Any, x: jax.Array) -> jax.Array:
    h = jnp.tanh(x.reshape(x.shape[0], -1) @ params["w1"] + params["b1"])
    return h @ params["w2"] + params["b2"]


@functools.cache
def _model(feature_shape: tuple[int, ...]) -> Any:
    n = int(np.prod(feature_shape))
    k1, k2, k3 = jax.random.split(jax.random.key(n), 3)
    params = {
        "w1": 2.0 * jax.random.normal(k1, (n, 8)) / np.sqrt(n),
        "b1": 0.1 * jax.random.normal(k2, (8,)),
        "w2": jax.random.normal(k3, (8, NUM_CLASSES)),
        "b2": jnp.zeros((NUM_CLASSES,)),
    }
    return jaxadv.from_apply(mlp_apply, params)


def _bounds(feature_shape: tuple[int, ...], per_channel: bool) -> tuple[Any, Any]:
    if not per_channel:
        return 0.0, 1.0
    c = feature_shape[-1]
    lo = np.asarray([0.0, -0.5, 0.25, -1.0, 0.5, 0.0][:c], np.float32)
    hi = np.asarray([1.0, 0.5, 0.75, 0.0, 1.0, 0.125][:c], np.float32)
    return jnp.asarray(lo), jnp.asarray(hi)


def _run(name: str, logits_fn: Any, x: Any, y: Any, **kw: Any) -> jax.Array:
    if name == "fgsm":
        return jaxadv.fgsm(logits_fn, x, y, **kw)
    if name == "bim":
        return jaxadv.bim(logits_fn, x, y, steps=2, **kw)
    return jaxadv.pgd(logits_fn, x, y, key=jax.random.key(0), steps=2, **kw)


# Slow tier: each example compiles; the ball and box of every attack are checked in the fast
# tier by test_registry.py (float32, bfloat16, two boxes).
@pytest.mark.slow
@SETTINGS
@given(
    attack=st.sampled_from(["fgsm", "bim", "pgd"]),
    batch=st.integers(1, 5),
    shape=st.sampled_from(SHAPES),
    dtype=st.sampled_from([jnp.float32, jnp.bfloat16]),
    norm=st.sampled_from(["linf", "l2", "l1"]),
    eps=st.floats(0.0, 1.0),
    per_example_eps=st.booleans(),
    targeted=st.booleans(),
    per_channel=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_output_in_ball_and_bounds(
    attack: str,
    batch: int,
    shape: tuple[int, ...],
    dtype: Any,
    norm: str,
    eps: float,
    per_example_eps: bool,
    targeted: bool,
    per_channel: bool,
    seed: int,
) -> None:
    logits_fn = _model(shape)
    lo, hi = _bounds(shape, per_channel)
    kx, ky, ke = jax.random.split(jax.random.key(seed), 3)
    u = jax.random.uniform(kx, (batch, *shape))
    x = (lo + u * (jnp.asarray(hi) - lo)).astype(dtype)
    y = jax.random.randint(ky, (batch,), 0, NUM_CLASSES) if targeted else None
    eps_arg: Any = eps * jax.random.uniform(ke, (batch,)) if per_example_eps else eps
    x_adv = _run(attack, logits_fn, x, y, eps=eps_arg, norm=norm, targeted=targeted, bounds=(lo, hi))

    assert x_adv.shape == x.shape
    assert x_adv.dtype == x.dtype
    xa = np.asarray(x_adv.astype(jnp.float32))
    assert not np.any(np.isnan(xa))
    assert np.all(xa >= np.asarray(lo)) and np.all(xa <= np.asarray(hi))
    n = int(np.prod(shape))
    if dtype == jnp.float32:
        tol = 1e-5
    else:
        tol = BF16_HALF_ULP * {"linf": 1.0, "l2": np.sqrt(n), "l1": float(n)}[norm]
    dist = np.asarray(jaxadv.norm_of(x_adv.astype(jnp.float32) - x.astype(jnp.float32), norm))
    assert np.all(dist <= np.asarray(eps_arg) + tol), (dist, eps_arg)


@pytest.mark.slow
@SETTINGS
@given(
    attack=st.sampled_from(["fgsm", "bim", "pgd"]),
    batch=st.integers(2, 5),
    shape=st.sampled_from(SHAPES),
    norm=st.sampled_from(["linf", "l2", "l1"]),
    targeted=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_batch_equals_each_example_alone(
    attack: str, batch: int, shape: tuple[int, ...], norm: str, targeted: bool, seed: int
) -> None:
    logits_fn = _model(shape)
    kx, ky = jax.random.split(jax.random.key(seed))
    x = jax.random.uniform(kx, (batch, *shape))
    y = jax.random.randint(ky, (batch,), 0, NUM_CLASSES)
    eps = jnp.linspace(0.1, 0.5, batch)
    kw: dict[str, Any] = dict(norm=norm, targeted=targeted)
    if attack == "pgd":
        kw["random_start"] = False  # a random start draws the whole batch from one key
    whole = _run(attack, logits_fn, x, y, eps=eps, **kw)
    for i in range(batch):
        alone = _run(attack, logits_fn, x[i : i + 1], y[i : i + 1], eps=eps[i], **kw)
        np.testing.assert_allclose(np.asarray(whole[i : i + 1]), np.asarray(alone), atol=1e-6)


@SETTINGS
@given(
    attack=st.sampled_from(["fgsm", "bim", "pgd"]),
    norm=st.sampled_from(["linf", "l2", "l1"]),
    dtype=st.sampled_from([jnp.bfloat16, jnp.float16]),
    seed=st.integers(0, 2**16),
)
def test_bounds_not_representable_in_dtype(attack: str, norm: str, dtype: Any, seed: int) -> None:
    """Bounds such as (0.1, 0.3) round outward in bfloat16; the result stays inside them."""
    lo, hi = 0.1, 0.3
    x = (lo + (hi - lo) * jax.random.uniform(jax.random.key(seed), (4, 6))).astype(dtype)
    x = jnp.clip(x, jnp.asarray(0.1004, dtype), jnp.asarray(0.2988, dtype))  # representable, inside
    x_adv = _run(attack, _model((6,)), x, None, eps=1.0, norm=norm, bounds=(lo, hi))
    xa = np.asarray(x_adv.astype(jnp.float32))
    assert x_adv.dtype == dtype
    assert np.all(xa >= np.float32(lo)) and np.all(xa <= np.float32(hi))
