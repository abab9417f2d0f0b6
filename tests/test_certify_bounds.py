"""Interval (IBP) and CROWN bounds: soundness, exactness where the answer is known, and
consistency with attacks on trained models."""

from __future__ import annotations

import itertools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import small_models as sm
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxadv
import jaxadv.certify as certify

NORMS = ("linf", "l2", "l1")
DUAL = {"linf": 1, "l2": 2, "l1": np.inf}
TOL = 1e-4


def small_cnn(seed: int) -> Any:
    """:class:`small_models.SmallCNN` with random weights and normalised inputs."""
    model = sm.SmallCNN()
    variables = model.init(jax.random.key(seed), jnp.zeros((1, 6, 6, 1)))
    return jaxadv.from_flax(model, variables, mean=0.4, std=0.3)


# --- points of the threat model -----------------------------------------------------


def feasible_points(x: np.ndarray, eps: float, norm: str, rng: np.random.Generator, count: int) -> np.ndarray:
    """``[count, batch, ...]`` points of the ball around ``x`` clipped into [0, 1] (clipping
    towards a box that contains ``x`` never moves a point away from ``x``)."""
    shape = (count, *x.shape)
    d = int(np.prod(x.shape[1:]))
    if norm == "linf":
        delta = rng.uniform(-eps, eps, size=shape)
        delta[: count // 4] = eps * np.sign(delta[: count // 4])  # vertices of the cube
    else:
        if norm == "l2":
            delta = rng.normal(size=shape)
        else:
            delta = rng.laplace(size=shape) * (rng.uniform(size=shape) < 0.3)
            # vertices of the L1 ball: +-eps along one coordinate
            vertex = np.zeros(shape)
            idx = rng.integers(0, d, size=(count, x.shape[0]))
            flat = vertex.reshape(count, x.shape[0], d)
            flat[np.arange(count)[:, None], np.arange(x.shape[0])[None], idx] = rng.choice([-1.0, 1.0])
            delta = np.where(np.arange(count)[:, None, None] < count // 2, flat, delta.reshape(flat.shape))
            delta = delta.reshape(shape)
        flat = delta.reshape(count, x.shape[0], -1)
        norms = np.linalg.norm(flat, ord=2 if norm == "l2" else 1, axis=-1)
        radius = eps * rng.uniform(size=norms.shape) ** (1 / d)
        radius[: count // 2] = eps  # on the sphere
        delta = (flat * (radius / np.maximum(norms, 1e-12))[..., None]).reshape(shape)
    return np.clip(x[None] + delta, 0.0, 1.0).astype(np.float32)


def assert_inside(values: Any, lower: Any, upper: Any, tol: float = TOL) -> None:
    values, lower, upper = np.asarray(values), np.asarray(lower), np.asarray(upper)
    assert np.all(values >= lower - tol), float(np.min(values - lower))
    assert np.all(values <= upper + tol), float(np.max(values - upper))


def _picked(z: jax.Array, onehot: jax.Array) -> jax.Array:
    """The labelled logit of each row (losses see one-hot labels): PGD on it pushes that logit up."""
    return jnp.sum(z * onehot, axis=-1)


def extreme_logits(f: Any, x: np.ndarray, eps: float, norm: str, num_classes: int) -> np.ndarray:
    """``[2 C, batch, C]`` logits at PGD points that maximise / minimise each logit: one PGD
    run on ``2 C`` copies of the batch, copy ``j`` pushing logit ``j mod C`` up on a model
    whose logits are multiplied by ``+1`` (first ``C`` copies) or ``-1`` (the others)."""
    copies = 2 * num_classes
    xs = np.broadcast_to(x[None], (copies, *x.shape)).reshape(copies * len(x), *x.shape[1:])
    ys = np.repeat(np.tile(np.arange(num_classes), 2), len(x)).astype(np.int32)
    signs = jnp.asarray(np.repeat([1.0, -1.0], num_classes * len(x)).astype(np.float32))[:, None]
    x_adv = jaxadv.pgd(
        lambda v: f(v) * signs,
        xs,
        ys,
        key=jax.random.key(0),
        eps=eps,
        step_size=eps / 4,
        steps=20,
        norm=norm,
        loss=_picked,
    )
    return np.asarray(f(x_adv)).reshape(copies, len(x), num_classes)


# --- soundness -------------------------------------------------------------------------


@pytest.mark.parametrize("norm", NORMS)
@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**16), eps=st.floats(0.0, 0.3))
def test_mlp_bounds_contain_every_sampled_point(norm: str, seed: int, eps: float) -> None:
    f = sm.relu_mlp(seed)
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(3, 6)).astype(np.float32)
    ibp = certify.ibp_bounds(f, x, eps=eps, norm=norm)
    crown = certify.crown_bounds(f, x, eps=eps, norm=norm)
    points = feasible_points(x, eps, norm, rng, 256)
    z = jax.vmap(f)(jnp.asarray(points))
    assert_inside(z, ibp.lower, ibp.upper)
    assert_inside(z, crown.lower, crown.upper)
    # CROWN inside IBP
    assert np.all(np.asarray(crown.lower) >= np.asarray(ibp.lower) - 1e-5)
    assert np.all(np.asarray(crown.upper) <= np.asarray(ibp.upper) + 1e-5)


def test_mlp_bounds_contain_the_box_corners() -> None:
    f = sm.relu_mlp(3)
    x = np.random.default_rng(3).uniform(size=(3, 6)).astype(np.float32)
    eps = 0.15
    lo, hi = np.maximum(x - eps, 0), np.minimum(x + eps, 1)
    corners = np.array(
        [np.where(np.array(bits, bool), hi, lo) for bits in itertools.product((0, 1), repeat=6)]
    )
    z = jax.vmap(f)(jnp.asarray(corners, jnp.float32))
    for bounds in (certify.ibp_bounds(f, x, eps=eps), certify.crown_bounds(f, x, eps=eps)):
        assert_inside(z, bounds.lower, bounds.upper)


@pytest.mark.slow
@pytest.mark.parametrize("model, norm", [("mlp", "linf"), ("cnn", "linf")])
def test_bounds_contain_pgd_extremes(model: str, norm: str) -> None:
    rng = np.random.default_rng(1)
    if model == "mlp":
        f, x = sm.relu_mlp(1), rng.uniform(size=(3, 6)).astype(np.float32)
    else:
        f, x = small_cnn(1), rng.uniform(size=(2, 6, 6, 1)).astype(np.float32)
    eps = 0.1 if norm == "linf" else 0.5
    z = extreme_logits(f, x, eps, norm, 3)
    ibp = certify.ibp_bounds(f, x, eps=eps, norm=norm)
    crown = certify.crown_bounds(f, x, eps=eps, norm=norm)
    assert_inside(z, ibp.lower, ibp.upper)
    assert_inside(z, crown.lower, crown.upper)
    assert np.all(np.asarray(crown.upper - crown.lower) <= np.asarray(ibp.upper - ibp.lower) + 1e-5)


@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 2**16), eps=st.floats(0.0, 0.2))
def test_cnn_bounds_contain_every_sampled_point(seed: int, eps: float) -> None:
    f = small_cnn(seed)
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(2, 6, 6, 1)).astype(np.float32)
    ibp = certify.ibp_bounds(f, x, eps=eps)
    crown = certify.crown_bounds(f, x, eps=eps)
    z = jax.vmap(f)(jnp.asarray(feasible_points(x, eps, "linf", rng, 128)))
    assert_inside(z, ibp.lower, ibp.upper)
    assert_inside(z, crown.lower, crown.upper)
    assert np.all(np.asarray(crown.lower) >= np.asarray(ibp.lower) - 1e-5)
    assert np.all(np.asarray(crown.upper) <= np.asarray(ibp.upper) + 1e-5)


# --- exact cases -------------------------------------------------------------------------


@pytest.mark.parametrize("norm", NORMS)
def test_single_linear_layer_is_exact(norm: str) -> None:
    """Away from the box, min/max of x'W + b over the ball is xW + b -+ eps ||W_col||_dual."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(5, 4)).astype(np.float32)
    b = rng.normal(size=4).astype(np.float32)
    f = sm.affine(w, b)
    x = rng.uniform(0.4, 0.6, size=(3, 5)).astype(np.float32)
    eps = 0.05
    center = x @ w + b
    radius = eps * np.linalg.norm(w, ord=DUAL[norm], axis=0)
    crown = certify.crown_bounds(f, x, eps=eps, norm=norm)
    np.testing.assert_allclose(crown.lower, center - radius, atol=1e-5)
    np.testing.assert_allclose(crown.upper, center + radius, atol=1e-5)
    ibp = certify.ibp_bounds(f, x, eps=eps, norm=norm)
    linf_radius = eps * np.abs(w).sum(0)  # IBP always bounds the L-inf box
    np.testing.assert_allclose(ibp.lower, center - linf_radius, atol=1e-5)
    np.testing.assert_allclose(ibp.upper, center + linf_radius, atol=1e-5)


def test_linear_layer_with_normalisation_and_active_box() -> None:
    """from_flax mean/std are constants; with the box active the L-inf bounds are exact too."""
    model = nn.Dense(3)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 4)))
    mean, std = 0.5, 0.25
    f = jaxadv.from_flax(model, variables, mean=mean, std=std)
    w = np.asarray(variables["params"]["kernel"]) / std
    b = np.asarray(variables["params"]["bias"]) - mean * w.sum(0)
    x = np.array([[0.0, 1.0, 0.95, 0.3]], np.float32)
    eps = 0.1
    lo, hi = np.maximum(x - eps, 0), np.minimum(x + eps, 1)
    exact_lower = (np.where(w > 0, lo.T, hi.T)[None] * w).sum(1) + b
    exact_upper = (np.where(w > 0, hi.T, lo.T)[None] * w).sum(1) + b
    for bounds in (certify.ibp_bounds(f, x, eps=eps), certify.crown_bounds(f, x, eps=eps)):
        np.testing.assert_allclose(bounds.lower, exact_lower, atol=1e-4)
        np.testing.assert_allclose(bounds.upper, exact_upper, atol=1e-4)


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_zero_eps_gives_the_logits(model: str) -> None:
    rng = np.random.default_rng(2)
    f, x = (
        (sm.relu_mlp(2), rng.uniform(size=(3, 6)))
        if model == "mlp"
        else (small_cnn(2), rng.uniform(size=(2, 6, 6, 1)))
    )
    x = x.astype(np.float32)
    z = np.asarray(f(x))
    for bounds in (certify.ibp_bounds(f, x, eps=0.0), certify.crown_bounds(f, x, eps=0.0)):
        np.testing.assert_allclose(bounds.lower, z, atol=1e-5)
        np.testing.assert_allclose(bounds.upper, z, atol=1e-5)


def reference_crown(params: Any, x: np.ndarray, eps: float, norm: str) -> tuple[np.ndarray, np.ndarray]:
    """CROWN for a dense ReLU network written with explicit matrices (one example, float64).

    Pre-activation bounds of every layer by CROWN intersected with interval
    propagation from the previous layer's bounds; the output likewise.
    """
    ws = [np.asarray(w, np.float64) for w, _ in params]
    bs = [np.asarray(b, np.float64) for _, b in params]
    box_lo, box_hi = np.maximum(x - eps, 0.0), np.minimum(x + eps, 1.0)
    dual = DUAL[norm]

    def concretize(lam: np.ndarray, bias: np.ndarray) -> np.ndarray:
        c, r = (box_lo + box_hi) / 2, (box_hi - box_lo) / 2
        box = lam @ c - np.abs(lam) @ r
        if norm != "linf":
            box = np.maximum(box, lam @ x - eps * np.linalg.norm(lam, ord=dual, axis=1))
        return box + bias

    pre: list[tuple[np.ndarray, np.ndarray]] = []

    def lower_of(k: int, spec: np.ndarray) -> np.ndarray:
        """Lower bounds of spec @ z_k, z_k the pre-activation of layer k (0-based)."""
        lam, bias = spec @ ws[k].T, spec @ bs[k]
        for j in range(k - 1, -1, -1):
            lo, hi = pre[j]
            unstable = (lo < 0) & (hi > 0)
            su = np.where(hi <= 0, 0.0, np.where(lo >= 0, 1.0, hi / np.where(unstable, hi - lo, 1)))
            bu = np.where(unstable, -su * lo, 0.0)
            sl = np.where(lo >= 0, 1.0, np.where(unstable & (hi >= -lo), 1.0, 0.0))
            pos, neg = np.maximum(lam, 0), np.minimum(lam, 0)
            lam_z = pos * sl + neg * su
            bias = bias + neg @ bu + lam_z @ bs[j]
            lam = lam_z @ ws[j].T
        return concretize(lam, bias)

    iv_lo, iv_hi = box_lo, box_hi
    for k in range(len(ws)):
        c, r = (iv_lo + iv_hi) / 2, (iv_hi - iv_lo) / 2
        ibp_lo, ibp_hi = c @ ws[k] + bs[k] - r @ np.abs(ws[k]), c @ ws[k] + bs[k] + r @ np.abs(ws[k])
        eye = np.eye(ws[k].shape[1])
        lo, hi = np.maximum(ibp_lo, lower_of(k, eye)), np.minimum(ibp_hi, -lower_of(k, -eye))
        if k == len(ws) - 1:
            return lo, hi
        pre.append((lo, hi))
        iv_lo, iv_hi = np.maximum(lo, 0), np.maximum(hi, 0)
    raise AssertionError("unreachable")


@pytest.mark.parametrize("norm", NORMS)
def test_crown_matches_a_matrix_reference(norm: str) -> None:
    f = sm.relu_mlp(5)
    x = np.random.default_rng(5).uniform(size=(3, 6)).astype(np.float32)
    eps = 0.2 if norm == "linf" else 0.6
    crown = certify.crown_bounds(f, x, eps=eps, norm=norm)
    params = f.args[0]
    for i in range(len(x)):
        lo, hi = reference_crown(params, x[i].astype(np.float64), eps, norm)
        np.testing.assert_allclose(crown.lower[i], lo, atol=1e-4)
        np.testing.assert_allclose(crown.upper[i], hi, atol=1e-4)
    # The reference is not vacuous: some neurons are unstable, so CROWN beats IBP.
    ibp = certify.ibp_bounds(f, x, eps=eps, norm=norm)
    assert np.any(np.asarray(crown.upper - crown.lower) < np.asarray(ibp.upper - ibp.lower) - 1e-3)


# --- margins and specifications -----------------------------------------------------------


def test_margins_ibp_is_lower_minus_upper_and_crown_folds_the_spec() -> None:
    f = sm.relu_mlp(7)
    rng = np.random.default_rng(7)
    x = rng.uniform(size=(3, 6)).astype(np.float32)
    y = np.asarray(jnp.argmax(f(x), -1))
    eps = 0.1
    ibp = certify.ibp_bounds(f, x, eps=eps)
    m_ibp = np.asarray(certify.margin_bounds(f, x, y, eps=eps, method="ibp"))
    expected = np.asarray(ibp.lower)[np.arange(3), y][:, None] - np.asarray(ibp.upper)
    expected[np.arange(3), y] = 0.0
    np.testing.assert_allclose(m_ibp, expected, atol=1e-6)
    crown = certify.crown_bounds(f, x, eps=eps)
    m_crown = np.asarray(certify.margin_bounds(f, x, y, eps=eps))
    combined = np.asarray(crown.lower)[np.arange(3), y][:, None] - np.asarray(crown.upper)
    combined[np.arange(3), y] = 0.0
    assert np.all(m_crown >= combined - 1e-5)
    assert np.all(m_crown >= m_ibp - 1e-5)
    # sound: sampled margins are above the bound
    z = np.asarray(jax.vmap(f)(jnp.asarray(feasible_points(x, eps, "linf", rng, 256))))
    margins = z[:, np.arange(3), y][..., None] - z
    assert np.all(margins >= m_crown[None] - TOL)
    # verified <=> all margins to the other classes positive
    for method, m in (("crown", m_crown), ("ibp", m_ibp)):
        v = np.asarray(certify.verified(f, x, y, eps=eps, method=method))
        others = np.arange(3)[None] != y[:, None]
        np.testing.assert_array_equal(v, np.all((m > 0) | ~others, axis=1))


def test_crown_spec_matches_its_rows() -> None:
    f = sm.relu_mlp(8)
    x = np.random.default_rng(8).uniform(size=(3, 6)).astype(np.float32)
    spec = np.array([[1.0, 0.0, 0.0], [1.0, -1.0, 0.0], [0.5, 0.5, -2.0]], np.float32)
    b = certify.crown_bounds(f, x, eps=0.05, spec=spec)
    assert b.lower.shape == (3, 3)
    full = certify.crown_bounds(f, x, eps=0.05)
    np.testing.assert_allclose(b.lower[:, 0], full.lower[:, 0], atol=1e-6)
    np.testing.assert_allclose(b.upper[:, 0], full.upper[:, 0], atol=1e-6)
    z = np.asarray(f(x)) @ spec.T
    assert np.all(b.lower <= z + 1e-6) and np.all(z <= b.upper + 1e-6)


# --- primitives -----------------------------------------------------------------------------


class Mixed(nn.Module):
    """Batch norm (inference), tanh, sigmoid, leaky relu, max and average pooling."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.Conv(3, (2, 2))(x)
        x = nn.BatchNorm(use_running_average=True)(x)
        x = jnp.tanh(x)
        x = nn.max_pool(x, (2, 2), (2, 2))
        x = nn.leaky_relu(nn.Conv(3, (2, 2))(x), 0.1)
        x = nn.avg_pool(x, (2, 2), (1, 1))
        x = jax.nn.sigmoid(nn.Dense(4)(x.reshape(x.shape[0], -1)))
        return jnp.exp(x) - jnp.log(x + 1.0)


@pytest.mark.slow
def test_ibp_handles_batch_norm_pooling_and_monotone_activations() -> None:
    model = Mixed()
    variables = model.init(jax.random.key(0), jnp.zeros((1, 6, 6, 1)))
    stats = jax.tree_util.tree_map(lambda v: v + 0.3, variables["batch_stats"])
    variables = {"params": variables["params"], "batch_stats": stats}
    f = jaxadv.from_flax(model, variables, mean=0.5, std=0.5)
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(2, 6, 6, 1)).astype(np.float32)
    eps = 0.1
    ibp = certify.ibp_bounds(f, x, eps=eps)
    z = jax.vmap(f)(jnp.asarray(feasible_points(x, eps, "linf", rng, 256)))
    assert_inside(z, ibp.lower, ibp.upper)
    np.testing.assert_allclose(certify.ibp_bounds(f, x, eps=0.0).lower, f(x), atol=1e-5)
    with pytest.raises(ValueError, match="tanh"):
        certify.crown_bounds(f, x, eps=eps)


def square_apply(params: Any, x: jax.Array) -> jax.Array:
    return (x.reshape(x.shape[0], -1) ** 2) @ params


def test_unsupported_primitive_is_named() -> None:
    f = jaxadv.from_apply(square_apply, jnp.ones((3, 2)))
    x = np.full((1, 3), 0.5, np.float32)
    with pytest.raises(ValueError, match="integer_pow"):
        certify.ibp_bounds(f, x, eps=0.1)
    with pytest.raises(ValueError, match="integer_pow"):
        certify.crown_bounds(f, x, eps=0.1)


def test_inputs_are_checked() -> None:
    f = sm.relu_mlp(0)
    x = np.full((3, 6), 0.5, np.float32)
    with pytest.raises(ValueError, match="eps"):
        certify.ibp_bounds(f, x, eps=-0.1)
    with pytest.raises(ValueError, match="norm"):
        certify.crown_bounds(f, x, eps=0.1, norm="l3")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="bounds"):
        certify.crown_bounds(f, x + 1.0, eps=0.1)
    with pytest.raises(ValueError, match="NaN"):
        certify.ibp_bounds(f, np.full((3, 6), np.nan, np.float32), eps=0.1)
    with pytest.raises(ValueError, match="spec"):
        certify.crown_bounds(f, x, eps=0.1, spec=np.ones((2, 4)))
    with pytest.raises(ValueError, match="labels"):
        certify.margin_bounds(f, x, np.array([0, 3, 1]), eps=0.1)
    empty = certify.crown_bounds(f, x[:0], eps=0.1)
    assert empty.lower.shape == (0, 3)
    assert certify.ibp_bounds(f, x[:0], eps=0.1).upper.shape == (0, 3)


def test_per_example_eps_and_jit() -> None:
    f = sm.relu_mlp(4)
    x = np.random.default_rng(4).uniform(size=(3, 6)).astype(np.float32)
    eps = np.array([0.0, 0.05, 0.1], np.float32)
    b = certify.crown_bounds(f, x, eps=eps)
    for i in range(3):
        one = certify.crown_bounds(f, x, eps=float(eps[i]))
        np.testing.assert_allclose(b.lower[i], one.lower[i], atol=1e-6)
    jitted = jax.jit(lambda xx, e: certify.ibp_bounds(f, xx, eps=e))(x, eps)
    np.testing.assert_allclose(jitted.lower, certify.ibp_bounds(f, x, eps=eps).lower, atol=1e-6)


# --- trained digits models: certified <= empirical robust accuracy -------------------------


@pytest.fixture(scope="module")
def digits_mlp(digits: Any) -> tuple[Any, np.ndarray, np.ndarray]:
    """A one-hidden-layer (32) digits MLP behind input normalisation, stored trained."""
    test = digits[1]
    return sm.trained_digits("mlp32").logits_fn, test.x[:32], test.y[:32]


@pytest.mark.slow
def test_verified_examples_resist_pgd(digits_mlp: Any) -> None:
    f, x, y = digits_mlp
    norm, eps = "linf", 0.03
    x_adv = jaxadv.pgd(f, x, y, key=jax.random.key(0), eps=eps, steps=20, norm=norm)
    robust = np.asarray(jaxadv.predict(f, x_adv)) == y
    v_crown = np.asarray(certify.verified(f, x, y, eps=eps, norm=norm))
    v_ibp = np.asarray(certify.verified(f, x, y, eps=eps, norm=norm, method="ibp"))
    for v in (v_crown, v_ibp):
        assert not np.any(v & ~robust)  # a verified example is never broken
        assert v.mean() <= robust.mean()
    assert not np.any(v_ibp & ~v_crown)
    assert v_crown.mean() > 0  # not vacuous at this eps
