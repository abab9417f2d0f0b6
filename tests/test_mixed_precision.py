"""Attacking a bfloat16 model: it works, and robust accuracy matches float32.

The digits CNN is run in bfloat16 with :func:`jaxadv.sharding.cast_model`
(parameters and inputs cast, Flax layers then compute in bfloat16). PGD-10
against it must give the robust accuracy of the float32 model within
``TOLERANCE`` = 2 percentage points, on the 397 test digits, at two radii
where robust accuracy is neither near 0 nor near the clean accuracy. The
measured gap is at most 1 point (see docs/scaling.md).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxadv
from jaxadv.evaluation import SuiteAttack
from jaxadv.sharding import cast_model

#: Largest allowed gap in robust accuracy between the bf16 and float32 models.
TOLERANCE = 0.02


def _pgd10(logits_fn: Any, x: Any, y: Any, *, key: Any, eps: Any, norm: Any, bounds: Any) -> Any:
    return jaxadv.pgd(logits_fn, x, y, key=key, eps=eps, steps=10, norm=norm, bounds=bounds)


def _robust_accuracy(logits_fn: Any, x: Any, y: Any, eps: float) -> float:
    result = jaxadv.evaluate(
        logits_fn,
        x,
        y,
        eps=eps,
        suite=[SuiteAttack("pgd-10", _pgd10)],
        key=jax.random.key(0),
        batch_size=512,
        progress=False,
        checks=False,
    )
    return result.robust_accuracy


def test_cast_model_computes_in_bfloat16(cnn: Any, digits: Any) -> None:
    x, y = digits[1]
    bf16 = cast_model(cnn.logits_fn, jnp.bfloat16)
    assert jaxadv.logits(bf16, x[:4]).dtype == jnp.bfloat16
    floats = [leaf for leaf in jax.tree_util.tree_leaves(bf16) if jnp.issubdtype(leaf.dtype, jnp.floating)]
    assert floats and all(leaf.dtype == jnp.bfloat16 for leaf in floats)
    # The user's model is untouched.
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(cnn.logits_fn))
    agree = np.mean(np.asarray(jaxadv.predict(bf16, x)) == np.asarray(jaxadv.predict(cnn.logits_fn, x)))
    assert agree >= 0.99


# Slow tier: robust accuracy over the whole digits test set.
@pytest.mark.slow
@pytest.mark.full_optimization
@pytest.mark.parametrize("eps", [0.1, 0.15])
def test_pgd_robust_accuracy_bf16_matches_float32(cnn: Any, digits: Any, eps: float) -> None:
    x, y = digits[1]
    f32 = _robust_accuracy(cnn.logits_fn, x, y, eps)
    bf16 = _robust_accuracy(cast_model(cnn.logits_fn, jnp.bfloat16), x, y, eps)
    assert 0.05 < f32 < 0.9  # a radius where the attack partly succeeds
    assert abs(bf16 - f32) <= TOLERANCE, (f32, bf16)


@pytest.mark.slow
@pytest.mark.full_optimization
def test_bfloat16_inputs_stay_bfloat16_and_feasible(cnn: Any, digits: Any) -> None:
    x, y = digits[1]
    xb = jnp.asarray(x[:128], jnp.bfloat16)
    model = cast_model(cnn.logits_fn, jnp.bfloat16)
    eps = 0.1
    x_adv = jaxadv.pgd(model, xb, y[:128], key=jax.random.key(1), eps=eps, steps=10)
    assert x_adv.dtype == jnp.bfloat16 and x_adv.shape == xb.shape
    a = np.asarray(x_adv, np.float32)
    assert np.all(np.isfinite(a)) and a.min() >= 0.0 and a.max() <= 1.0
    # Inside the ball up to one bfloat16 rounding of values in [0, 1] (2**-8).
    dist = np.asarray(jaxadv.norm_of(jnp.asarray(a) - jnp.asarray(xb, jnp.float32), "linf"))
    assert dist.max() <= eps + 2.0**-8
    # The attack is as strong as with float32 inputs (the digits are exact in bfloat16).
    ref = jaxadv.pgd(model, x[:128], y[:128], key=jax.random.key(1), eps=eps, steps=10)
    acc_bf16_in = np.mean(np.asarray(jaxadv.predict(model, x_adv)) == y[:128])
    acc_f32_in = np.mean(np.asarray(jaxadv.predict(model, ref)) == y[:128])
    assert abs(acc_bf16_in - acc_f32_in) <= TOLERANCE
