"""Behaviour of FGSM, targeted FGSM, BIM and PGD (:mod:`jaxadv.attacks`).

Two kinds of checks:

* Exact analytic checks on linear models (``from_apply`` with a module-level
  ``apply`` function). For a binary (two-logit) linear model with weight
  difference ``w`` the input gradient of the cross-entropy is parallel to ``w``
  everywhere, so: FGSM moves the logit margin by exactly ``eps * ||w||_1`` and is
  the optimal L-inf attack; the L2 / sparse-L1 fast gradient methods move by
  ``eps`` along ``w / ||w||_2`` / the largest coordinate of ``w`` (margin change
  ``eps`` times the dual norm); targeted FGSM moves toward the target; BIM and
  PGD with ``step_size * steps`` large enough reach the same vertex as FGSM; BIM
  with a short total step moves by exactly ``steps * step_size``.
* Statistical checks on the digits MLP of ``conftest.py``: BIM is at least as
  strong as FGSM, PGD is a deterministic function of its key, targeted BIM/PGD
  reach their targets, ``y=None`` and one-hot labels match integer labels,
  models with 3 and 100 classes work, and L2 / L1 PGD use their whole budget
  (norm <= eps, and close to eps) with L2 steps of length ``step_size``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import small_models as sm

import jaxadv
from jaxadv import examples

WIDE = (-10.0, 10.0)  # bounds that never clip in the analytic tests
N_FEATURES = 20


def _linear(num_classes: int, seed: int, n: int = N_FEATURES) -> tuple[Any, dict[str, jax.Array]]:
    k1, k2 = jax.random.split(jax.random.key(seed))
    params = {
        "w": jax.random.normal(k1, (n, num_classes)),
        "b": 0.1 * jax.random.normal(k2, (num_classes,)),
    }
    return sm.affine(params["w"], params["b"]), params


def _inputs(batch: int, seed: int, n: int = N_FEATURES) -> jax.Array:
    return jax.random.uniform(jax.random.key(seed), (batch, n))


def _margin(params: dict[str, jax.Array], x: Any) -> np.ndarray:
    """Binary model: z_1 - z_0 in float64."""
    w = np.asarray(params["w"], np.float64)
    b = np.asarray(params["b"], np.float64)
    z = np.asarray(x, np.float64) @ w + b
    return z[:, 1] - z[:, 0]


def _ce(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    m = logits.max(axis=1, keepdims=True)
    lse = np.log(np.exp(logits - m).sum(axis=1)) + m[:, 0]
    return lse - logits[np.arange(len(y)), y]


# --- analytic checks on linear models ----------------------------------------------


@pytest.mark.parametrize(
    ("norm", "ord_dual", "sparsity"), [("linf", 1, 0.05), ("l2", 2, 0.05), ("l1", np.inf, 1.0 / N_FEATURES)]
)
def test_fgm_moves_margin_by_eps_times_dual_norm(norm: str, ord_dual: float, sparsity: float) -> None:
    logits_fn, params = _linear(2, 0)
    x = _inputs(8, 1)
    y = jnp.asarray([0, 1, 0, 1, 1, 0, 0, 1])
    eps = 0.1
    x_adv = jaxadv.fgsm(logits_fn, x, y, eps=eps, norm=norm, bounds=WIDE, l1_sparsity=sparsity)
    w = np.asarray(params["w"][:, 1] - params["w"][:, 0], np.float64)
    s = 1.0 - 2.0 * np.asarray(y)  # +1: push z_1 - z_0 up (true class 0), -1: down
    change = _margin(params, x_adv) - _margin(params, x)
    np.testing.assert_allclose(change, s * eps * np.linalg.norm(w, ord=ord_dual), rtol=1e-4)
    delta = np.asarray(x_adv - x, np.float64)
    if norm == "linf":
        want = eps * s[:, None] * np.sign(w)[None]
    elif norm == "l2":
        want = eps * s[:, None] * (w / np.linalg.norm(w))[None]
    else:
        want = np.zeros_like(delta)
        i = np.argmax(np.abs(w))
        want[:, i] = eps * s * np.sign(w[i])
    np.testing.assert_allclose(delta, want, atol=1e-6)


def test_fgsm_is_optimal_linf_attack_on_binary_linear_model() -> None:
    logits_fn, params = _linear(2, 2)
    x = _inputs(4, 3)
    y = jnp.asarray([0, 1, 1, 0])
    eps = 0.2
    x_adv = jaxadv.fgsm(logits_fn, x, y, eps=eps, bounds=WIDE)
    w, b = np.asarray(params["w"], np.float64), np.asarray(params["b"], np.float64)
    best = _ce(np.asarray(x_adv, np.float64) @ w + b, np.asarray(y))
    # Any other point of the ball (vertices and interior points) has a loss no higher.
    rng = np.random.default_rng(0)
    for i in range(4):
        d = eps * rng.choice([-1.0, 1.0], size=(2000, N_FEATURES))
        d[1000:] *= rng.uniform(size=(1000, N_FEATURES))
        cand = np.asarray(x[i], np.float64) + d
        losses = _ce(cand @ w + b, np.full(2000, int(y[i])))
        assert losses.max() <= best[i] + 1e-6


def test_fgsm_clips_to_bounds_and_per_example_eps() -> None:
    logits_fn, params = _linear(2, 4)
    x = _inputs(3, 5)
    y = jnp.asarray([0, 1, 0])
    eps = jnp.asarray([0.0, 0.05, 0.5])
    x_adv = jaxadv.fgsm(logits_fn, x, y, eps=eps)
    w = np.asarray(params["w"][:, 1] - params["w"][:, 0])
    s = 1.0 - 2.0 * np.asarray(y)
    want = np.clip(np.asarray(x) + np.asarray(eps)[:, None] * s[:, None] * np.sign(w), 0.0, 1.0)
    np.testing.assert_allclose(np.asarray(x_adv), want, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(x_adv[0]), np.asarray(x[0]))


@pytest.mark.slow
def test_targeted_fgsm_moves_toward_target() -> None:
    # Binary: the margin toward the target grows by exactly eps * ||w||_1.
    logits_fn, params = _linear(2, 6)
    x = _inputs(6, 7)
    t = jnp.asarray([1, 1, 0, 0, 1, 0])
    eps = 0.05
    x_adv = jaxadv.fgsm(logits_fn, x, t, eps=eps, targeted=True, bounds=WIDE)
    w = np.asarray(params["w"][:, 1] - params["w"][:, 0], np.float64)
    s = 2.0 * np.asarray(t) - 1.0
    change = _margin(params, x_adv) - _margin(params, x)
    np.testing.assert_allclose(change, s * eps * np.abs(w).sum(), rtol=1e-4)
    # Ten classes: the target's cross-entropy drops and its probability rises for every example.
    logits_fn, params = _linear(10, 8)
    x = _inputs(16, 9)
    t = jax.random.randint(jax.random.key(10), (16,), 0, 10)
    x_adv = jaxadv.fgsm(logits_fn, x, t, eps=0.02, targeted=True, bounds=WIDE)
    before = np.asarray(jaxadv.cross_entropy(jaxadv.logits(logits_fn, x), jax.nn.one_hot(t, 10)))
    after = np.asarray(jaxadv.cross_entropy(jaxadv.logits(logits_fn, x_adv), jax.nn.one_hot(t, 10)))
    assert np.all(after < before)
    # Untargeted on the same labels does the opposite.
    x_up = jaxadv.fgsm(logits_fn, x, t, eps=0.02, bounds=WIDE)
    up = np.asarray(jaxadv.cross_entropy(jaxadv.logits(logits_fn, x_up), jax.nn.one_hot(t, 10)))
    assert np.all(up > before)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_bim_and_pgd_reach_the_fgsm_point_on_binary_linear_model(norm: str) -> None:
    logits_fn, _ = _linear(2, 11)
    x = _inputs(8, 12)
    y = jnp.asarray([0, 1] * 4)
    eps = 0.1
    ref = jaxadv.fgsm(logits_fn, x, y, eps=eps, norm=norm, bounds=WIDE)
    bim = jaxadv.bim(logits_fn, x, y, eps=eps, step_size=0.03, steps=5, norm=norm, bounds=WIDE)
    np.testing.assert_allclose(np.asarray(bim), np.asarray(ref), atol=1e-6)
    # From a random start inside the ball, 2 * eps of travel reaches the same point.
    pgd = jaxadv.pgd(
        logits_fn, x, y, key=jax.random.key(0), eps=eps, step_size=0.05, steps=5, norm=norm, bounds=WIDE
    )
    if norm == "linf":
        np.testing.assert_allclose(np.asarray(pgd), np.asarray(ref), atol=1e-6)
    else:  # L2: the projection keeps a component of the random start orthogonal to w
        np.testing.assert_allclose(np.asarray(jaxadv.norm_of(pgd - x, "l2")), eps, rtol=1e-5)


def test_bim_short_total_step_is_exact() -> None:
    logits_fn, params = _linear(2, 13)
    x = _inputs(4, 14)
    y = jnp.asarray([1, 0, 1, 0])
    x_adv = jaxadv.bim(logits_fn, x, y, eps=0.1, step_size=0.02, steps=3, bounds=WIDE)
    w = np.asarray(params["w"][:, 1] - params["w"][:, 0])
    s = 1.0 - 2.0 * np.asarray(y)
    np.testing.assert_allclose(np.asarray(x_adv - x), 0.06 * s[:, None] * np.sign(w)[None], atol=1e-6)


# --- digits models ----------------------------------------------------------------------

BATCH = 128


@pytest.fixture(scope="module")
def test_batch(digits: Any) -> tuple[jax.Array, jax.Array]:
    test = digits[1]
    return jnp.asarray(test.x[:BATCH]), jnp.asarray(test.y[:BATCH])


@pytest.mark.parametrize("eps", [0.1, 0.2])
def test_bim_at_least_as_strong_as_fgsm(mlp: Any, test_batch: Any, eps: float) -> None:
    x, y = test_batch
    clean = examples.accuracy(mlp.logits_fn, x, y)
    acc_fgsm = examples.accuracy(mlp.logits_fn, jaxadv.fgsm(mlp.logits_fn, x, y, eps=eps), y)
    acc_bim = examples.accuracy(mlp.logits_fn, jaxadv.bim(mlp.logits_fn, x, y, eps=eps, steps=10), y)
    assert clean > 0.95
    assert acc_fgsm < clean
    assert acc_bim <= acc_fgsm


def test_pgd_is_a_function_of_its_key(mlp: Any, test_batch: Any) -> None:
    x, y = test_batch
    kw = dict(eps=0.1, steps=3)
    a = jaxadv.pgd(mlp.logits_fn, x, y, key=jax.random.key(1), **kw)
    b = jaxadv.pgd(mlp.logits_fn, x, y, key=jax.random.key(1), **kw)
    c = jaxadv.pgd(mlp.logits_fn, x, y, key=jax.random.key(2), **kw)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert float(jnp.mean(jnp.abs(a - c))) > 1e-3


@pytest.mark.parametrize("attack", ["bim", "pgd"])
@pytest.mark.parametrize("choose", ["random", "least_likely"])
def test_targeted_attacks_reach_the_target(mlp: Any, test_batch: Any, attack: str, choose: str) -> None:
    x, y = test_batch
    if choose == "random":
        t = jaxadv.random_targets(jax.random.key(3), y, 10)
    else:
        t = jaxadv.least_likely(mlp.logits_fn, x)
    assert bool(jnp.all(t != y))
    kw: dict[str, Any] = dict(eps=0.3, steps=20, step_size=0.04, targeted=True)
    if attack == "pgd":
        x_adv = jaxadv.pgd(mlp.logits_fn, x, t, key=jax.random.key(4), **kw)
    else:
        x_adv = jaxadv.bim(mlp.logits_fn, x, t, **kw)
    hit = float(jnp.mean(jaxadv.predict(mlp.logits_fn, x_adv) == t))
    assert hit > 0.8
    assert float(jnp.max(jnp.abs(x_adv - x))) <= 0.3 + 1e-6


@pytest.mark.slow
def test_y_none_means_own_predictions_and_onehot_equals_int(mlp: Any, test_batch: Any) -> None:
    x, _ = test_batch
    pred = jaxadv.predict(mlp.logits_fn, x)
    onehot = jax.nn.one_hot(pred, 10)
    for attack in (
        lambda y: jaxadv.fgsm(mlp.logits_fn, x, y, eps=0.1),
        lambda y: jaxadv.bim(mlp.logits_fn, x, y, eps=0.1, steps=3),
        lambda y: jaxadv.pgd(mlp.logits_fn, x, y, key=jax.random.key(5), eps=0.5, norm="l2", steps=3),
    ):
        ref = np.asarray(attack(pred))
        np.testing.assert_array_equal(np.asarray(attack(None)), ref)
        np.testing.assert_allclose(np.asarray(attack(onehot)), ref, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("num_classes", [3, 100])
def test_any_number_of_classes(digits: Any, num_classes: int) -> None:
    x = jnp.asarray(digits[1].x[:32])
    model = examples.DigitsMLP(hidden=(32,), num_classes=num_classes)
    variables = model.init(jax.random.key(0), x[:1])
    logits_fn = jaxadv.from_flax(model, variables)
    pred = jaxadv.predict(logits_fn, x)
    x_adv = jaxadv.pgd(logits_fn, x, key=jax.random.key(1), eps=0.3, steps=10)
    assert x_adv.shape == x.shape
    assert float(jnp.mean(jaxadv.predict(logits_fn, x_adv) == pred)) < 0.5
    t = jnp.full((32,), num_classes - 1)
    x_t = jaxadv.bim(logits_fn, x, t, eps=0.3, steps=10, targeted=True)
    assert float(jnp.mean(jaxadv.predict(logits_fn, x_t) == t)) > 0.8
    with pytest.raises(ValueError, match="y must hold labels"):
        jaxadv.fgsm(logits_fn, x, jnp.full((32,), num_classes), eps=0.1)


@pytest.mark.parametrize(("norm", "eps", "step_size"), [("l2", 1.0, 0.5), ("l1", 4.0, 1.0)])
def test_l2_l1_pgd_use_their_budget(
    mlp: Any, test_batch: Any, norm: str, eps: float, step_size: float
) -> None:
    """At a large step the iterates sit on the sphere of radius eps (box permitting)."""
    x, y = test_batch
    kw: dict[str, Any] = dict(key=jax.random.key(6), steps=10, norm=norm, l1_sparsity=0.1)
    x_adv = jaxadv.pgd(mlp.logits_fn, x, y, eps=eps, step_size=step_size, **kw)
    n = np.asarray(jaxadv.norm_of(x_adv - x, norm))
    assert np.all(n <= eps + 1e-5)
    assert np.mean(n >= 0.9 * eps) > 0.8
    assert float(jnp.min(x_adv)) >= 0.0 and float(jnp.max(x_adv)) <= 1.0
    # A larger radius gives a stronger attack: the eps scaling is real.
    x_small = jaxadv.pgd(mlp.logits_fn, x, y, eps=eps / 4, step_size=step_size / 4, **kw)
    assert np.all(np.asarray(jaxadv.norm_of(x_small - x, norm)) <= eps / 4 + 1e-5)
    assert examples.accuracy(mlp.logits_fn, x_adv, y) < examples.accuracy(mlp.logits_fn, x_small, y)


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_steps_scale_with_step_size(mlp: Any, test_batch: Any, norm: str) -> None:
    x, y = test_batch
    for alpha in (0.3, 0.6):
        x_adv = jaxadv.pgd(
            mlp.logits_fn,
            x,
            y,
            eps=100.0,
            step_size=alpha,
            steps=1,
            norm=norm,
            random_start=False,
            bounds=WIDE,
        )
        np.testing.assert_allclose(np.asarray(jaxadv.norm_of(x_adv - x, norm)), alpha, rtol=1e-5)
