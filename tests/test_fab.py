"""FAB: exact projections, minimal perturbations of linear models, eps mode, targets, bad input.

The linear models of ``tests/small_models.py`` have known minimal perturbations
(``distance_to_boundary``); their inputs lie far inside a wide box so that the
box does not bind. Every model here is one structure (:func:`small_models.knobbed_apply`: affine
logits with knobs for a scale and for NaN/inf regions) with the same shapes, so
the tests share one compiled loop per norm.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import small_models as sm
from scipy.optimize import linprog

import jaxadv
from jaxadv.attacks.fab import fab, fab_targeted, project_hyperplane_box
from jaxadv.typing import Norm

BOX = (-10.0, 10.0)
FEATURES, CLASSES, BATCH, STEPS = 64, 4, 16, 20


@pytest.fixture(scope="module")
def linear() -> tuple[Any, np.ndarray, np.ndarray]:
    """The linear model of ``tests/small_models.py`` and inputs far inside ``BOX``."""
    w = sm.random_weights(0, FEATURES, CLASSES)
    x = np.random.default_rng(1).uniform(-0.5, 0.5, (BATCH, FEATURES)).astype(np.float32)
    return sm.knobbed(w), w, x


# --- the projections --------------------------------------------------------------


def _reference_step(t: np.ndarray, w: np.ndarray, b: float, lo: np.ndarray, hi: np.ndarray, norm: str) -> Any:
    """The minimal-norm step onto <w, t + d> = b inside [lo, hi], solved independently:
    bisection on the multiplier for L-inf and L2, a linear program for L1; ``None``
    where the box cannot reach the hyperplane."""
    r = b - float(w @ t)
    sgn = np.sign(r) if r else 1.0
    down, up = lo - t, hi - t

    def step(lam: float) -> np.ndarray:
        move = sgn * (np.sign(w) if norm == "linf" else w) * lam
        return np.clip(move, down, up)

    if norm == "l1":
        n = len(t)
        res = linprog(
            np.ones(2 * n),
            A_eq=np.concatenate([w, -w])[None].astype(np.float64),
            b_eq=[r],
            bounds=[(0, max(v, 0.0)) for v in up] + [(0, max(-v, 0.0)) for v in down],
            method="highs",
        )
        return res.x[:n] - res.x[n:] if res.status == 0 else None
    if sgn * float(w @ step(1e9)) < abs(r):
        return None
    a, c = 0.0, 1e9
    for _ in range(200):
        mid = 0.5 * (a + c)
        a, c = (mid, c) if sgn * float(w @ step(mid)) < abs(r) else (a, mid)
    return step(c)


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_projection_is_the_exact_minimiser(norm: Norm) -> None:
    rng = np.random.default_rng(3)
    m, n = 24, 7
    t = rng.uniform(0.0, 1.0, (m, n)).astype(np.float64)
    w = rng.normal(size=(m, n))
    w[:, 0] = np.where(rng.uniform(size=m) < 0.3, 0.0, w[:, 0])  # some zero normals
    b = np.sum(w * t, axis=1) + rng.normal(size=m) * rng.choice(
        [0.05, 0.5, 5.0], m
    )  # some out of the box's reach
    lo, hi = np.zeros(n), np.ones(n)
    d = np.asarray(
        project_hyperplane_box(t.astype(np.float32), w.astype(np.float32), b, norm=norm), np.float64
    )
    p = {"linf": np.inf, "l2": 2, "l1": 1}[norm]
    assert np.all(t + d >= -1e-6) and np.all(t + d <= 1 + 1e-6)
    reached = 0
    for i in range(m):
        ref = _reference_step(t[i], w[i], b[i], lo, hi, norm)
        if ref is None:  # out of reach: the corner that gets closest
            corner = np.where(np.sign(w[i]) * np.sign(b[i] - w[i] @ t[i]) > 0, hi - t[i], lo - t[i])
            np.testing.assert_allclose(d[i], np.where(w[i] != 0, corner, 0.0), atol=1e-5)
            continue
        reached += 1
        assert abs(w[i] @ (t[i] + d[i]) - b[i]) <= 1e-4 * (1 + abs(b[i]))
        np.testing.assert_allclose(np.linalg.norm(d[i], p), np.linalg.norm(ref, p), rtol=1e-4, atol=1e-6)
    assert 0 < reached < m


# --- minimal perturbations of a linear model -------------------------------------


@pytest.mark.parametrize("norm", ["l2", "linf", "l1"])
def test_minimal_perturbation_of_a_linear_model(linear: Any, norm: Norm) -> None:
    f, w, x = linear
    out = fab(f, x, key=jax.random.key(0), norm=norm, steps=STEPS, bounds=BOX, return_info=True)
    assert out.x_adv.shape == x.shape and out.x_adv.dtype == jnp.float32
    assert bool(jnp.all(out.success))
    np.testing.assert_array_equal(out.success, jaxadv.is_adversarial(f, out.x_adv, jaxadv.predict(f, x)))
    ratio = np.asarray(jaxadv.norm_of(out.x_adv - x, norm)) / sm.distance_to_boundary(x, w, norm)
    assert ratio.min() >= 1 - 1e-4 and ratio.max() <= 1.01, (ratio.min(), ratio.max())
    # Without the final search: the overshoot of the last adversarial iterate is left.
    plain = fab(f, x, key=jax.random.key(0), norm=norm, steps=STEPS, bounds=BOX, search_steps=0)
    ratio_plain = np.asarray(jaxadv.norm_of(plain - x, norm)) / sm.distance_to_boundary(x, w, norm)
    assert np.all(ratio <= ratio_plain + 1e-6) and ratio_plain.max() <= 1.05


def test_box_binds_and_is_kept(linear: Any) -> None:
    f, w, x = linear
    x01 = (x + 0.5).clip(0.0, 1.0)  # inside [0, 1], some pixels near the bounds
    out = fab(f, x01, key=jax.random.key(0), norm="l2", steps=STEPS, bounds=(0.0, 1.0), num_restarts=2)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    # The box only removes perturbations: never below the unconstrained minimum.
    dist = np.asarray(jaxadv.norm_of(out - x01, "l2"))
    fooled = np.asarray(jaxadv.is_adversarial(f, out, jaxadv.predict(f, x01)))
    assert np.all(dist[fooled] >= sm.distance_to_boundary(x01, w, "l2")[fooled] * (1 - 1e-4))


def test_eps_mode_returns_only_perturbations_within_eps(linear: Any) -> None:
    f, w, x = linear
    exact = sm.distance_to_boundary(x, w, "l2")
    eps = float(np.median(exact))
    for e in (eps, jnp.full((BATCH,), eps)):
        out = fab(f, x, key=jax.random.key(1), eps=e, norm="l2", steps=STEPS, bounds=BOX, return_info=True)
        dist = np.asarray(jaxadv.norm_of(out.x_adv - x, "l2"))
        assert np.all(dist <= eps)
        success = np.asarray(out.success)
        np.testing.assert_array_equal(success, dist > 0)  # x itself where it failed
        np.testing.assert_array_equal(success[exact < 0.99 * eps], True)
        np.testing.assert_array_equal(success[exact > eps], False)
    # An infinite eps counts every adversarial example: minimal-norm mode.
    unbounded = fab(f, x, key=jax.random.key(1), eps=jnp.inf, norm="l2", steps=STEPS, bounds=BOX)
    minimal = fab(f, x, key=jax.random.key(1), norm="l2", steps=STEPS, bounds=BOX)
    np.testing.assert_array_equal(unbounded, minimal)


def test_bfloat16_eps_mode_keeps_dtype_box_and_ball(linear: Any) -> None:
    f, w, x = linear
    xb = jnp.asarray(x, jnp.bfloat16)
    eps = float(np.median(sm.distance_to_boundary(np.asarray(xb, np.float32), w, "linf")))
    out = fab(f, xb, key=jax.random.key(0), eps=eps, norm="linf", steps=STEPS, bounds=BOX, return_info=True)
    assert out.x_adv.dtype == jnp.bfloat16 and out.x_adv.shape == x.shape
    dist = np.asarray(jaxadv.norm_of(out.x_adv.astype(jnp.float32) - xb.astype(jnp.float32), "linf"))
    assert np.all(dist <= eps) and 0 < int(out.success.sum()) < BATCH


def test_under_jit_with_traced_model_and_eps(linear: Any) -> None:
    f, w, x = linear

    def run(params: Any, eps: jax.Array) -> Any:
        g = jaxadv.from_apply(sm.knobbed_apply, params)
        return fab(g, x, key=jax.random.key(2), eps=eps, norm="linf", steps=STEPS, bounds=BOX)

    params = (jnp.asarray(w), jnp.zeros(CLASSES), jnp.float32(1), jnp.float32(np.inf), jnp.float32(np.inf))
    eps = jnp.float32(np.median(sm.distance_to_boundary(x, w, "linf")))
    # The lowest backend optimisation level: half the compile time, the same result.
    quick: dict[str, str | bool] = {
        "xla_backend_optimization_level": "0",
        "xla_llvm_disable_expensive_passes": True,
    }
    compiled = jax.jit(run).lower(params, eps).compile(compiler_options=quick)
    direct = fab(f, x, key=jax.random.key(2), eps=eps, norm="linf", steps=STEPS, bounds=BOX)
    np.testing.assert_allclose(np.asarray(compiled(params, eps)), np.asarray(direct), atol=1e-5)
    smaller = np.asarray(compiled(params, eps / 4))  # a new eps: the same program
    assert np.all(np.asarray(jaxadv.norm_of(smaller - x, "linf")) <= float(eps) / 4)


# --- targets ----------------------------------------------------------------------


def _decoy_model() -> tuple[Any, np.ndarray, np.ndarray]:
    """Class 0 wins; class 1 has the second logit but a far boundary, class 2 the
    nearest boundary, class 3 is out of reach. The boundaries of classes 1 and 2 with
    class 0 move disjoint features, so crossing one never crosses the other. (The
    shapes of the ``linear`` fixture: the same compiled loop.)"""
    rng = np.random.default_rng(5)
    w = np.zeros((FEATURES, CLASSES), np.float32)
    w[:32, 1] = 0.3 * rng.normal(size=32)
    w[32:, 2] = 3.0 * rng.normal(size=32)
    b = np.array([1.0, 0.6, -1.0, -100.0], np.float32)
    x = rng.uniform(-0.05, 0.05, (BATCH, FEATURES)).astype(np.float32)
    return sm.knobbed(w, b), w, x


def test_targeted_reaches_the_target() -> None:
    f, w, x = _decoy_model()
    z = np.asarray(jaxadv.logits(f, x))
    assert np.all(np.argsort(-z, axis=1)[:, :3] == [0, 1, 2])
    kw: dict[str, Any] = dict(key=jax.random.key(0), norm="linf", steps=STEPS, bounds=BOX)
    t1 = fab_targeted(f, x, num_target_classes=1, **kw)
    np.testing.assert_array_equal(jaxadv.predict(f, t1), 1)
    # The exact L-inf distance to the boundary between classes 0 and 1.
    exact = (z[:, 0] - z[:, 1]) / np.sum(np.abs(w[:, 1] - w[:, 0]))
    ratio = np.asarray(jaxadv.norm_of(t1 - x, "linf")) / exact
    assert ratio.min() >= 1 - 1e-4 and ratio.max() <= 1.01
    # Untargeted FAB, and FAB-T over all other classes, find the nearer class 2.
    near = np.asarray(jaxadv.norm_of(t1 - x, "linf"))
    for out in (fab(f, x, **kw), fab_targeted(f, x, num_target_classes=CLASSES - 1, **kw)):
        np.testing.assert_array_equal(jaxadv.predict(f, out), 2)
        assert np.all(np.asarray(jaxadv.norm_of(out - x, "linf")) < 0.99 * near)


# --- edge cases -------------------------------------------------------------------


def test_non_finite_and_huge_logits(linear: Any) -> None:
    _, w, x = linear
    kw: dict[str, Any] = dict(key=jax.random.key(0), norm="l2", steps=STEPS, bounds=BOX, num_restarts=2)
    huge = sm.knobbed(w, scale=1e30)
    out = fab(huge, x, **kw)
    ratio = np.asarray(jaxadv.norm_of(out - x, "l2")) / sm.distance_to_boundary(x, w, "l2")
    assert ratio.min() >= 1 - 1e-4 and ratio.max() <= 1.01  # the scale does not matter
    # NaN at some clean points, NaN or inf on the way for others.
    broken = sm.knobbed(w, nan_at=0.3, inf_at=0.2)
    res = fab(broken, x, np.argmax(x @ w, axis=1), return_info=True, **kw)
    a = np.asarray(res.x_adv)
    assert np.all(np.isfinite(a)) and a.min() >= BOX[0] and a.max() <= BOX[1]
    bad = np.asarray(~jnp.all(jnp.isfinite(jaxadv.logits(broken, x)), axis=1))
    assert bad.any()
    np.testing.assert_array_equal(a[bad], x[bad])
    assert not np.asarray(res.success)[bad].any()


def test_empty_batch(linear: Any) -> None:
    f, _, _ = linear
    x = jnp.zeros((0, FEATURES), jnp.bfloat16)
    for attack in (fab, fab_targeted):
        extra = {"num_target_classes": CLASSES - 1} if attack is fab_targeted else {}
        out = attack(f, x, key=jax.random.key(0), **extra)
        assert out.shape == (0, FEATURES) and out.dtype == jnp.bfloat16


def test_rejects_bad_input(linear: Any) -> None:
    f, _, x = linear
    k = jax.random.key(0)
    cases: list[tuple[dict[str, Any], str]] = [
        (dict(norm="l3"), "norm must be one of"),
        (dict(steps=0), "steps must be >= 1"),
        (dict(steps=2.5), "steps must be a Python int"),
        (dict(num_restarts=0), "num_restarts must be >= 1"),
        (dict(search_steps=-1), "search_steps must be a Python int >= 0"),
        (dict(eps=-0.1), "eps must be >= 0"),
        (dict(eps=jnp.ones(3)), r"eps must be a scalar or have shape \[batch\]"),
        (dict(alpha_max=1.5), r"alpha_max must be in \[0, 1.0\]"),
        (dict(backward_factor=-0.1), r"backward_factor must be in \[0, 1.0\]"),
        (dict(eta=-1.0), "eta must be >= 0"),
        (dict(key=None), "key is required"),
        (dict(y=np.zeros(BATCH, np.float32)), "must hold integer class indices"),
        (dict(y=np.full(BATCH, CLASSES)), r"y must hold labels in \[0, 4\)"),
        (dict(x=x.astype(np.int32)), "x must be a floating-point array"),
        (dict(x=x + 20.0), "x must lie inside bounds"),
    ]
    for over, message in cases:
        kw: dict[str, Any] = dict(x=x, y=None, key=k, bounds=BOX, steps=2) | over
        with pytest.raises(ValueError, match=message):
            fab(f, kw.pop("x"), kw.pop("y"), **kw)
    with pytest.raises(ValueError, match="num_target_classes must be >= 1"):
        fab_targeted(f, x, key=k, bounds=BOX, num_target_classes=0)
