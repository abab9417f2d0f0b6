"""Tests for the threat-model pieces in :mod:`jaxadv.threat_models`.

What is checked, per norm (``linf``, ``l2``, ``l1``):

* ``project`` returns points inside the ball, leaves points already inside
  unchanged, and is the *Euclidean* projection: equal to a closed form for
  L-inf / L2, to a NumPy bisection on the soft-threshold ``theta`` for L1, and
  satisfying the variational inequality ``<d - P(d), z - P(d)> <= 0`` for
  points ``z`` of the ball.
* ``steepest_direction`` has unit norm (``sign`` for L-inf, unit L2, unit L1
  spread over the configured fraction of coordinates), attains the dual norm
  of the gradient, and maps a zero gradient to zeros without NaN.
* ``random_start`` samples lie in the ball and are uniform there: the radius
  satisfies ``P(||d|| <= r eps) = r**n`` in dimension ``n`` and the coordinate
  moments match those of the uniform distribution on the ball.
* ``project_to_feasible`` lands in the ball *and* the box (per-channel bounds
  too); ``per_example`` broadcasts a ``[batch]`` eps; ``norm_of`` matches NumPy.
* ``row_sum`` equals a float64 sum to float32 rounding, adds each row in the
  same order whatever the number of rows (bit for bit, compiled), and follows
  the pairwise order it documents along any axis (checked against a NumPy
  replay of it).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxadv
from jaxadv.threat_models import mask_blocked

NORMS = ("linf", "l2", "l1")
NP_ORD = {"linf": np.inf, "l2": 2, "l1": 1}


def _np_norm(d: np.ndarray, norm: str) -> np.ndarray:
    return np.linalg.norm(np.asarray(d, np.float64).reshape(d.shape[0], -1), ord=NP_ORD[norm], axis=1)


def _l1_reference(v: np.ndarray, eps: float) -> np.ndarray:
    """Euclidean projection of one vector onto the L1 ball by bisection on theta."""
    v = np.asarray(v, np.float64)
    a = np.abs(v)
    if a.sum() <= eps:
        return v
    lo, hi = 0.0, float(a.max())
    for _ in range(200):
        theta = 0.5 * (lo + hi)
        if np.maximum(a - theta, 0.0).sum() > eps:
            lo = theta
        else:
            hi = theta
    return np.sign(v) * np.maximum(a - 0.5 * (lo + hi), 0.0)


def _random(shape: tuple[int, ...], seed: int, scale: float = 1.0) -> jax.Array:
    return scale * jax.random.normal(jax.random.key(seed), shape)


# --- project -----------------------------------------------------------------


@pytest.mark.parametrize("norm", NORMS)
def test_project_lands_in_ball(norm: str) -> None:
    d = _random((6, 4, 3, 2), 0, scale=2.0)
    for eps in (0.0, 0.05, 0.7, 3.0):
        p = jaxadv.threat_models.project(d, eps, norm)
        assert p.shape == d.shape and p.dtype == d.dtype
        assert np.all(_np_norm(np.asarray(p), norm) <= eps * (1 + 1e-5) + 1e-7)
        assert not np.any(np.isnan(np.asarray(p)))


@pytest.mark.parametrize("norm", NORMS)
def test_project_leaves_inside_points_unchanged(norm: str) -> None:
    d = _random((5, 10), 1)
    eps = 1.01 * _np_norm(np.asarray(d), norm).max()
    np.testing.assert_array_equal(np.asarray(jaxadv.threat_models.project(d, eps, norm)), np.asarray(d))


def test_project_linf_and_l2_closed_forms() -> None:
    d = np.asarray(_random((5, 7), 2, scale=2.0))
    eps = 0.8
    np.testing.assert_allclose(
        np.asarray(jaxadv.threat_models.project(jnp.asarray(d), eps, "linf")), np.clip(d, -eps, eps)
    )
    n = np.linalg.norm(d, axis=1, keepdims=True)
    np.testing.assert_allclose(
        np.asarray(jaxadv.threat_models.project(jnp.asarray(d), eps, "l2")),
        d * np.minimum(1.0, eps / n),
        rtol=1e-6,
    )


@pytest.mark.slow
def test_project_l1_matches_bisection_reference() -> None:
    for n in (5, 300):
        d = np.asarray(_random((8, n), n, scale=1.5))
        eps = np.linspace(0.05, 2.0, 8).astype(np.float32)
        got = np.asarray(jaxadv.threat_models.project(jnp.asarray(d), jnp.asarray(eps), "l1"))
        want = np.stack([_l1_reference(d[i], float(eps[i])) for i in range(8)])
        np.testing.assert_allclose(got, want, atol=2e-6)
        # Zero radius: the projection is the origin.
        np.testing.assert_array_equal(
            np.asarray(jaxadv.threat_models.project(jnp.asarray(d), 0.0, "l1")), 0.0
        )


@pytest.mark.slow
@pytest.mark.parametrize("norm", NORMS)
def test_project_is_euclidean_projection(norm: str) -> None:
    """Variational inequality of the Euclidean projection onto a convex set."""
    d = _random((4, 12), 3, scale=2.0)
    eps = 0.9
    p = np.asarray(jaxadv.threat_models.project(d, eps, norm), np.float64)
    z = np.asarray(jaxadv.threat_models.random_start(jax.random.key(4), (2000, 12), eps, norm), np.float64)
    dn = np.asarray(d, np.float64)
    for i in range(4):
        inner = (z - p[i]) @ (dn[i] - p[i])
        assert inner.max() <= 1e-5
        # And P(d) is at least as close to d as any sampled point of the ball.
        dist = np.linalg.norm(z - dn[i], axis=1)
        assert np.linalg.norm(p[i] - dn[i]) <= dist.min() + 1e-5


@pytest.mark.parametrize("norm", NORMS)
def test_project_per_example_eps(norm: str) -> None:
    d = _random((4, 3, 5), 5, scale=3.0)
    eps = jnp.asarray([0.0, 0.1, 0.5, 2.0])
    p = jaxadv.threat_models.project(d, eps, norm)
    norms = _np_norm(np.asarray(p), norm)
    np.testing.assert_allclose(norms, np.asarray(eps), rtol=1e-5, atol=1e-6)
    for i in range(4):
        np.testing.assert_allclose(
            np.asarray(p[i : i + 1]),
            np.asarray(jaxadv.threat_models.project(d[i : i + 1], eps[i], norm)),
            atol=1e-6,
        )


def test_unknown_norm_raises() -> None:
    d = jnp.zeros((2, 3))
    for fn in (
        lambda: jaxadv.threat_models.project(d, 0.1, "linf2"),  # type: ignore[arg-type]
        lambda: jaxadv.threat_models.steepest_direction(d, "l3"),  # type: ignore[arg-type]
        lambda: jaxadv.norm_of(d, "L3"),  # type: ignore[arg-type]
        lambda: jaxadv.threat_models.random_start(jax.random.key(0), (2, 3), 0.1, "l0"),  # type: ignore[arg-type]
    ):
        with pytest.raises(ValueError, match="norm"):
            fn()


# --- steepest_direction ----------------------------------------------------


def test_steepest_direction_linf_is_sign() -> None:
    g = _random((3, 4, 5), 6)
    d = jaxadv.threat_models.steepest_direction(g, "linf")
    np.testing.assert_array_equal(np.asarray(d), np.sign(np.asarray(g)))
    np.testing.assert_allclose(
        np.asarray(jnp.sum(g * d, axis=(1, 2))), _np_norm(np.asarray(g), "l1"), rtol=1e-5
    )


def test_steepest_direction_l2_unit_and_aligned() -> None:
    g = _random((3, 4, 5), 7)
    d = jaxadv.threat_models.steepest_direction(g, "l2")
    np.testing.assert_allclose(_np_norm(np.asarray(d), "l2"), 1.0, rtol=1e-6)
    np.testing.assert_allclose(
        np.asarray(jnp.sum(g * d, axis=(1, 2))), _np_norm(np.asarray(g), "l2"), rtol=1e-5
    )


@pytest.mark.parametrize("sparsity", [0.01, 0.05, 0.25, 1.0])
def test_steepest_direction_l1_unit_and_sparse(sparsity: float) -> None:
    n = 200
    g = _random((4, n), 8)
    d = np.asarray(jaxadv.threat_models.steepest_direction(g, "l1", l1_sparsity=sparsity))
    k = max(1, round(sparsity * n))
    np.testing.assert_allclose(np.abs(d).sum(axis=1), 1.0, rtol=1e-6)
    assert np.all((d != 0).sum(axis=1) == k)
    gn = np.asarray(g)
    for i in range(4):
        top = np.argsort(-np.abs(gn[i]))[:k]
        assert set(np.flatnonzero(d[i])) == set(top)
        np.testing.assert_array_equal(np.sign(d[i, top]), np.sign(gn[i, top]))
    # k = 1 attains the dual norm: <g, d> = ||g||_inf.
    d1 = jaxadv.threat_models.steepest_direction(g, "l1", l1_sparsity=1.0 / n)
    np.testing.assert_allclose(np.asarray(jnp.sum(g * d1, axis=1)), _np_norm(gn, "linf"), rtol=1e-6)


@pytest.mark.parametrize("norm", NORMS)
def test_steepest_direction_of_zero_is_zero(norm: str) -> None:
    g = jnp.zeros((3, 6)).at[1].set(jnp.arange(6.0) - 2.5)
    d = np.asarray(jaxadv.threat_models.steepest_direction(g, norm))
    assert not np.any(np.isnan(d))
    np.testing.assert_array_equal(d[0], 0.0)
    np.testing.assert_array_equal(d[2], 0.0)
    assert np.abs(d[1]).sum() > 0


def test_steepest_direction_bad_sparsity() -> None:
    with pytest.raises(ValueError, match="l1_sparsity"):
        jaxadv.threat_models.steepest_direction(jnp.ones((1, 4)), "l1", l1_sparsity=0.0)


# --- random_start ------------------------------------------------------------


@pytest.mark.parametrize("norm", NORMS)
def test_random_start_in_ball_and_per_example(norm: str) -> None:
    eps = jnp.asarray([0.0, 0.01, 0.3, 2.0])
    d = jaxadv.threat_models.random_start(jax.random.key(9), (4, 3, 3, 2), eps, norm)
    assert d.shape == (4, 3, 3, 2) and d.dtype == jnp.float32
    norms = _np_norm(np.asarray(d), norm)
    assert np.all(norms <= np.asarray(eps) * (1 + 1e-5) + 1e-7)
    assert np.all(norms[1:] > 0)
    np.testing.assert_array_equal(np.asarray(d[0]), 0.0)


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_random_start_radius_law(norm: str) -> None:
    """Uniform on the ball <=> P(||d|| <= r eps) = r**n (volume scales as r**n)."""
    m, eps = 4000, 0.5
    for n in (2, 8):
        d = np.asarray(jaxadv.threat_models.random_start(jax.random.key(10 + n), (m, n), eps, norm))
        radius = _np_norm(d, norm) / eps
        for r in (0.5, 0.8, 0.9, 0.97):
            p = r**n
            assert abs(np.mean(radius <= r) - p) < 4 * np.sqrt(p * (1 - p) / m) + 1e-3


def test_random_start_coordinate_moments() -> None:
    m, n, eps = 4000, 4, 1.0
    key = jax.random.key(11)
    # L-inf: uniform on [-eps, eps]: E|d_i| = eps / 2, E d_i = 0.
    d = np.asarray(jaxadv.threat_models.random_start(key, (m, n), eps, "linf"))
    assert abs(np.abs(d).mean() - eps / 2) < 0.01
    assert np.abs(d.mean(axis=0)).max() < 0.03
    # L2 ball in R^n: E ||d||^2 = eps^2 n / (n + 2); coordinates are exchangeable and symmetric.
    d = np.asarray(jaxadv.threat_models.random_start(key, (m, n), eps, "l2"))
    assert abs((d**2).sum(axis=1).mean() - n / (n + 2)) < 0.02
    assert np.abs(d.mean(axis=0)).max() < 0.03
    # L1 ball in R^n: E |d_i| = eps / (n + 1); each orthant has mass 2**-n.
    d = np.asarray(jaxadv.threat_models.random_start(key, (m, n), eps, "l1"))
    assert abs(np.abs(d).mean() - 1 / (n + 1)) < 0.01
    orthant = (d > 0).astype(int) @ (2 ** np.arange(n))
    counts = np.bincount(orthant, minlength=2**n) / m
    assert np.abs(counts - 2.0**-n).max() < 4 * np.sqrt(2.0**-n / m)


def test_random_start_depends_on_key() -> None:
    a = jaxadv.threat_models.random_start(jax.random.key(0), (2, 5), 0.3, "l2")
    b = jaxadv.threat_models.random_start(jax.random.key(0), (2, 5), 0.3, "l2")
    c = jaxadv.threat_models.random_start(jax.random.key(1), (2, 5), 0.3, "l2")
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.allclose(np.asarray(a), np.asarray(c))


# --- project_to_feasible, per_example, norm_of, mask_blocked -----------------------


@pytest.mark.parametrize("norm", NORMS)
def test_project_to_feasible_ball_and_box(norm: str) -> None:
    # NHWC inputs with per-channel bounds of shape (C,).
    lo = jnp.asarray([0.0, -1.0, 0.2])
    hi = jnp.asarray([1.0, 0.0, 0.3])
    u = jax.random.uniform(jax.random.key(12), (5, 4, 4, 3))
    x = lo + u * (hi - lo)
    x_adv = x + _random(x.shape, 13, scale=0.5)
    eps = jnp.asarray([0.0, 0.05, 0.2, 1.0, 100.0])
    out = jaxadv.threat_models.project_to_feasible(x_adv, x, eps, norm, lo, hi)
    assert out.shape == x.shape
    assert bool(jnp.all(out >= lo)) and bool(jnp.all(out <= hi))
    norms = _np_norm(np.asarray(out - x), norm)
    assert np.all(norms <= np.asarray(eps) * (1 + 1e-5) + 1e-6)
    np.testing.assert_allclose(np.asarray(out[0]), np.asarray(x[0]))
    # Huge eps: only the box is active.
    np.testing.assert_allclose(np.asarray(out[4]), np.asarray(jnp.clip(x_adv[4], lo, hi)), atol=1e-6)


def test_project_to_feasible_l1_is_the_exact_projection_onto_ball_and_box() -> None:
    """L1: the nearest point of ball and box, never farther from ``x_adv`` than the
    ball's projection clipped to the box, and the whole budget spent when the box
    leaves room for it (the clip of a ball projection can end inside the ball)."""
    tm = jaxadv.threat_models
    x = jax.random.uniform(jax.random.key(3), (64, 16), minval=0.1, maxval=0.9)
    x_adv = x + _random(x.shape, 4, scale=0.6)
    eps = 1.0
    out = tm.project_to_feasible(x_adv, x, eps, "l1", 0.0, 1.0)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(tm.project_l1_box(x_adv, x, eps, 0.0, 1.0)))
    clipped = jnp.clip(x + tm.project(x_adv - x, eps, "l1"), 0.0, 1.0)
    near = np.asarray(jnp.sum((out - x_adv) ** 2, axis=1))
    near_clip = np.asarray(jnp.sum((clipped - x_adv) ** 2, axis=1))
    assert np.all(near <= near_clip * (1 + 1e-6) + 1e-9)
    assert np.any(near < near_clip * (1 - 1e-3))  # strictly nearer on some rows
    room = np.asarray(jnp.sum(jnp.where(x_adv > x, 1.0 - x, x), axis=1))
    spent = np.asarray(jnp.sum(jnp.abs(out - x), axis=1))
    outside = np.asarray(jnp.sum(jnp.abs(jnp.clip(x_adv, 0.0, 1.0) - x), axis=1)) > eps
    assert outside.any()
    np.testing.assert_allclose(spent[outside & (room > eps)], eps, rtol=1e-5)
    assert np.any(np.asarray(jnp.sum(jnp.abs(clipped - x), axis=1))[outside] < eps * (1 - 1e-3))


def test_project_l1_box_stays_feasible_for_points_far_outside() -> None:
    """Points 1e30 away: in float32 each coordinate's two breakpoints (``|y_i|`` and
    ``|y_i| - u_i``) round to one, and no multiplier spends the budget exactly. The
    projection still lands in the ball and the box (a sort-based solve once returned
    L1 distances of 400 at radius 0.5 here)."""
    x = jax.random.uniform(jax.random.key(5), (16, 784))
    x_adv = x + 1e30 * jax.random.normal(jax.random.key(6), x.shape)
    for eps in (0.03, 0.5, 4.5):
        out = np.asarray(jaxadv.threat_models.project_l1_box(x_adv, x, eps, 0.0, 1.0))
        assert np.all(out >= 0.0) and np.all(out <= 1.0)
        assert np.all(np.abs(out - np.asarray(x)).sum(axis=1) <= eps * (1 + 1e-5))


def test_per_example_shapes() -> None:
    x = jnp.zeros((3, 4, 5, 2))
    assert jaxadv.threat_models.per_example(0.5, x).shape == ()
    e = jaxadv.threat_models.per_example(jnp.asarray([1.0, 2.0, 3.0]), x)
    assert e.shape == (3, 1, 1, 1) and e.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray((x + e)[:, 2, 3, 1]), [1.0, 2.0, 3.0])


@pytest.mark.parametrize("norm", NORMS)
def test_norm_of_matches_numpy(norm: str) -> None:
    d = _random((3, 2, 5), 14)
    np.testing.assert_allclose(np.asarray(jaxadv.norm_of(d, norm)), _np_norm(np.asarray(d), norm), rtol=1e-5)


def test_clip_to_bounds_and_mask_blocked() -> None:
    x = jnp.asarray([[0.0, 0.5, 1.0, 1.0]])
    np.testing.assert_array_equal(
        np.asarray(jaxadv.threat_models.clip_to_bounds(x * 3 - 1, 0.0, 1.0)), [[0.0, 0.5, 1.0, 1.0]]
    )
    g = jnp.asarray([[-1.0, 2.0, 3.0, -4.0]])
    # At the lower bound a descent coordinate is blocked; at the upper one an ascent coordinate.
    np.testing.assert_array_equal(np.asarray(mask_blocked(g, x, 0.0, 1.0)), [[0.0, 2.0, 0.0, -4.0]])


def test_project_l1_bfloat16_input() -> None:
    """The sort-based L1 projection runs in float32 for low-precision inputs."""
    d = _random((2, 600), 15).astype(jnp.bfloat16)
    want = jaxadv.threat_models.project(d.astype(jnp.float32), 3.0, "l1")
    got = jaxadv.threat_models.project(d, 3.0, "l1")
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(got.astype(jnp.float32)), np.asarray(want), rtol=2**-8, atol=1e-6)
    assert np.all(np.asarray(jaxadv.norm_of(got, "l1")) <= 3.0 * (1 + 2**-7))


def _np_pairwise(row: np.ndarray) -> np.float32:
    """NumPy replay, in float32, of the order ``row_sum`` documents."""
    v = np.asarray(row, np.float32)
    while v.size > 1:
        half = v.size // 2
        v = np.concatenate([v[:half] + v[half : 2 * half], v[2 * half :]])
    return v[0]


@pytest.mark.parametrize("cols", [1, 2, 3, 10, 64, 100, 3072])
def test_row_sum_is_a_pairwise_sum_independent_of_the_batch(cols: int) -> None:
    v = np.asarray(jax.random.normal(jax.random.key(cols), (64, cols)), np.float32) ** 2
    fn = jax.jit(jaxadv.threat_models.row_sum)
    full = np.asarray(fn(jnp.asarray(v)))
    assert full.shape == (64,)
    np.testing.assert_allclose(full, v.astype(np.float64).sum(axis=1), rtol=1e-5)
    np.testing.assert_array_equal(full, [_np_pairwise(r) for r in v])
    for rows in (1, 3, 8, 32):
        np.testing.assert_array_equal(np.asarray(fn(jnp.asarray(v[:rows]))), full[:rows])


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_row_sum_over_any_axis_folds_that_axis_pairwise(axis: int) -> None:
    v = np.asarray(jax.random.normal(jax.random.key(7), (5, 9, 6)), np.float32)
    got = np.asarray(jax.jit(jaxadv.threat_models.row_sum, static_argnums=1)(jnp.asarray(v), axis))
    rows = np.moveaxis(v, axis, -1)  # each entry of the result: one line along `axis`
    want = np.array([_np_pairwise(r) for r in rows.reshape(-1, rows.shape[-1])]).reshape(rows.shape[:-1])
    np.testing.assert_array_equal(got, want)


@pytest.mark.slow
def test_norms_do_not_depend_on_the_batch_size() -> None:
    # 64 and 3072 features: shapes where a plain jnp.sum rounds by batch size on XLA:CPU.
    for shape in ((64, 8, 8, 1), (16, 32, 32, 3)):
        d = jax.random.normal(jax.random.key(1), shape)
        for norm in ("l2", "l1"):
            fn = jax.jit(lambda v, norm=norm: jaxadv.norm_of(v, norm))
            full = np.asarray(fn(d))
            for rows in (1, 8):
                np.testing.assert_array_equal(np.asarray(fn(d[:rows])), full[:rows])
