"""Training for certification: Gaussian augmentation, SmoothAdv, IBP and CROWN-IBP losses."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import small_models as sm
from flax import nnx

import jaxadv
from jaxadv import examples, training
from jaxadv.losses import as_onehot, cross_entropy

BATCH = 32
MODEL = examples.DigitsMLP(hidden=(32, 32))
KEY = jax.random.key(0)


@pytest.fixture(scope="module")
def batch() -> tuple[jax.Array, jax.Array]:
    train, _ = examples.load_digits(0)
    return jnp.asarray(train.x[:BATCH]), jnp.asarray(train.y[:BATCH])


@pytest.fixture(scope="module")
def variables(batch: Any) -> Any:
    return MODEL.init(jax.random.key(1), batch[0][:1])


def _f(variables: Any) -> Any:
    return jaxadv.from_flax(MODEL, variables)


def _clean_ce(f: Any, x: jax.Array, y: jax.Array) -> jax.Array:
    logits = f(x)
    return jnp.mean(cross_entropy(logits, as_onehot(y, logits.shape[-1])))


#: Every loss with hyperparameters that make it cheap; called as loss(f, x, y, **overrides).
LOSSES: dict[str, Callable[..., Any]] = {
    "gaussian": lambda f, x, y, **kw: training.gaussian_augmentation_loss(
        f, x, y, **{"key": KEY, "sigma": 0.25, **kw}
    ),
    "smoothadv": lambda f, x, y, **kw: training.smoothadv_loss(
        f, x, y, **{"key": KEY, "sigma": 0.25, "eps": 0.5, "steps": 2, "m": 2, **kw}
    ),
    "ibp": lambda f, x, y, **kw: training.ibp_loss(f, x, y, **{"eps": 0.05, "kappa": 0.5, **kw}),
    "crown_ibp": lambda f, x, y, **kw: training.crown_ibp_loss(
        f, x, y, **{"eps": 0.05, "kappa": 0.0, "crown_weight": 1.0, **kw}
    ),
}


# --- optimisation ----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(LOSSES))
def test_gradients_are_finite_and_adam_steps_decrease_the_loss(
    method: str, batch: Any, variables: Any
) -> None:
    x, y = batch
    tx = optax.adam(1e-2)

    @jax.jit
    def step(v: Any, opt_state: Any) -> tuple[Any, Any, jax.Array, Any]:
        loss, grads = jax.value_and_grad(lambda v: LOSSES[method](_f(v), x, y))(v)
        updates, opt_state = tx.update(grads, opt_state, v)
        return optax.apply_updates(v, updates), opt_state, loss, grads

    v, opt_state = variables, tx.init(variables)
    losses = []
    for i in range(6):
        v, opt_state, loss, grads = step(v, opt_state)
        losses.append(float(loss))
        if i == 0:
            leaves = jax.tree_util.tree_leaves(grads)
            assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
            assert any(bool(jnp.any(g != 0)) for g in leaves)
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.8 * losses[0], losses


@pytest.mark.slow
def test_crown_ibp_compiles_with_traced_hyperparameters_and_matches_eager(batch: Any, variables: Any) -> None:
    """Under jit (eps, kappa, beta traced, as a schedule needs) value and gradient are the eager ones."""
    x, y = batch

    def loss(v: Any, eps: jax.Array, kappa: jax.Array, beta: jax.Array) -> jax.Array:
        return training.crown_ibp_loss(_f(v), x, y, eps=eps, kappa=kappa, crown_weight=beta)

    eager_value, eager_grad = jax.value_and_grad(loss)(variables, 0.05, 0.25, 0.5)
    value, grad = jax.jit(jax.value_and_grad(loss))(variables, 0.05, 0.25, 0.5)
    np.testing.assert_allclose(value, eager_value, rtol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(grad), jax.tree_util.tree_leaves(eager_grad), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


# --- IBP ----------------------------------------------------------------------------


def _hand_ibp_loss(params: Any, x: jax.Array, y: jax.Array, eps: float, kappa: float) -> jax.Array:
    """IBP written out for a one-hidden-layer ReLU net (centre/radius form)."""
    flat = x.reshape(x.shape[0], -1)
    lo, hi = jnp.maximum(flat - eps, 0.0), jnp.minimum(flat + eps, 1.0)
    c, r = (lo + hi) / 2, (hi - lo) / 2
    h_lo, h_hi = c @ params["w1"] - r @ jnp.abs(params["w1"]), c @ params["w1"] + r @ jnp.abs(params["w1"])
    h_lo, h_hi = jax.nn.relu(h_lo), jax.nn.relu(h_hi)
    c, r = (h_lo + h_hi) / 2, (h_hi - h_lo) / 2
    z_lo = c @ params["w2"] - r @ jnp.abs(params["w2"]) + params["b"]
    z_hi = c @ params["w2"] + r @ jnp.abs(params["w2"]) + params["b"]
    onehot = jax.nn.one_hot(y, z_lo.shape[-1])
    worst = jnp.where(onehot > 0, z_lo, z_hi)
    robust = optax.softmax_cross_entropy(worst, onehot).mean()
    clean = optax.softmax_cross_entropy(sm.one_hidden_relu_apply(params, x), onehot).mean()
    return kappa * clean + (1 - kappa) * robust


def test_ibp_loss_and_its_gradient_match_hand_written_interval_arithmetic(batch: Any) -> None:
    x, y = batch
    rng = np.random.default_rng(0)
    params = {
        "w1": jnp.asarray(rng.normal(size=(64, 16)) / 8, jnp.float32),
        "w2": jnp.asarray(rng.normal(size=(16, 10)) / 4, jnp.float32),
        "b": jnp.asarray(rng.normal(size=(10,)) * 0.1, jnp.float32),
    }

    def ours(p: Any) -> jax.Array:
        return training.ibp_loss(jaxadv.from_apply(sm.one_hidden_relu_apply, p), x, y, eps=0.1, kappa=0.3)

    value, grad = jax.value_and_grad(ours)(params)
    ref_value, ref_grad = jax.value_and_grad(lambda p: _hand_ibp_loss(p, x, y, 0.1, 0.3))(params)
    np.testing.assert_allclose(value, ref_value, rtol=1e-5)
    for name in params:
        np.testing.assert_allclose(grad[name], ref_grad[name], rtol=1e-4, atol=1e-6)


def test_ibp_loss_at_eps_zero_is_the_clean_cross_entropy_exactly(batch: Any, variables: Any) -> None:
    """At eps = 0 the interval bounds are the clean logits, bit for bit (centre x, radius 0)."""
    x, y = batch
    f = _f(variables)
    clean = _clean_ce(f, x, y)
    assert training.ibp_loss(f, x, y, eps=0.0, kappa=0.0) == clean
    lower, upper = jaxadv.certify.ibp_bounds(f, x, eps=0.0)
    np.testing.assert_array_equal(lower, f(x))
    np.testing.assert_array_equal(upper, f(x))
    np.testing.assert_allclose(training.crown_ibp_loss(f, x, y, eps=0.0, kappa=0.0), clean, rtol=1e-6)


@pytest.mark.parametrize("method", ["ibp", "crown_ibp"])
def test_kappa_one_is_the_clean_cross_entropy_exactly(method: str, batch: Any, variables: Any) -> None:
    x, y = batch
    f = _f(variables)
    assert LOSSES[method](f, x, y, eps=0.2, kappa=1.0) == _clean_ce(f, x, y)


def test_worst_case_logits_bound_the_clean_ones_and_grow_with_eps(batch: Any, variables: Any) -> None:
    x, y = batch
    f = _f(variables)
    lower, upper = jaxadv.certify.ibp_bounds(f, x, eps=0.05)
    z = f(x)
    assert bool(jnp.all(lower <= z)) and bool(jnp.all(z <= upper))
    clean = _clean_ce(f, x, y)
    # The robust term upper-bounds the cross-entropy anywhere in the ball (PGD's point
    # included) and grows with eps: interval arithmetic is monotone in the input box.
    x_adv = jaxadv.pgd(f, x, y, key=KEY, eps=0.05, step_size=0.01, steps=10)
    previous = clean
    for eps in (0.01, 0.05, 0.1):
        ibp = training.ibp_loss(f, x, y, eps=eps, kappa=0.0)
        crown = training.crown_ibp_loss(f, x, y, eps=eps, kappa=0.0, crown_weight=1.0)
        assert clean <= crown <= ibp
        assert ibp >= previous
        previous = ibp
        if eps >= 0.05:
            assert _clean_ce(f, x_adv, y) <= crown


def test_crown_ibp_with_beta_zero_is_ibp(batch: Any, variables: Any) -> None:
    """beta = 0 leaves the IBP margins alone; a concrete 0 skips CROWN, a traced 0 runs it."""
    x, y = batch
    f = _f(variables)
    ibp = training.ibp_loss(f, x, y, eps=0.05, kappa=0.25)
    np.testing.assert_allclose(
        training.crown_ibp_loss(f, x, y, eps=0.05, kappa=0.25, crown_weight=0.0), ibp, rtol=1e-5
    )
    traced = jax.jit(lambda b: training.crown_ibp_loss(f, x, y, eps=0.05, kappa=0.25, crown_weight=b))(0.0)
    np.testing.assert_allclose(traced, ibp, rtol=1e-5)


def test_ibp_schedule_ramps_linearly() -> None:
    def at(step: Any, **kw: Any) -> tuple[float, float]:
        eps, kappa = training.ibp_schedule(step, **{"warmup": 10, "ramp": 20, "eps": 0.1, **kw})
        return float(eps), float(kappa)

    assert at(0) == (0.0, 1.0)
    assert at(10) == (0.0, 1.0)
    np.testing.assert_allclose(at(15), (0.025, 0.875), rtol=1e-6)
    np.testing.assert_allclose(at(20), (0.05, 0.75), rtol=1e-6)
    np.testing.assert_allclose(at(30), (0.1, 0.5), rtol=1e-6)
    np.testing.assert_allclose(at(1000), (0.1, 0.5), rtol=1e-6)
    np.testing.assert_allclose(at(20, kappa_start=0.8, kappa_end=0.0), (0.05, 0.4), rtol=1e-6)
    assert at(9, ramp=0) == (0.0, 1.0)
    np.testing.assert_allclose(at(10, ramp=0), (0.1, 0.5), rtol=1e-6)
    # Traced step (e.g. state.step in a compiled step): the same values.
    eps, kappa = jax.jit(lambda t: training.ibp_schedule(t, warmup=10, ramp=20, eps=0.1))(jnp.int32(15))
    np.testing.assert_allclose((eps, kappa), (0.025, 0.875), rtol=1e-6)


# --- randomized smoothing --------------------------------------------------------------


def test_gaussian_augmentation_with_tiny_sigma_is_the_clean_cross_entropy(batch: Any, variables: Any) -> None:
    x, y = batch
    f = _f(variables)
    loss = training.gaussian_augmentation_loss(f, x, y, key=KEY, sigma=1e-6)
    np.testing.assert_allclose(loss, _clean_ce(f, x, y), rtol=1e-4)
    assert (
        abs(float(training.gaussian_augmentation_loss(f, x, y, key=KEY, sigma=0.5) - _clean_ce(f, x, y)))
        > 1e-3
    )


def test_smoothadv_without_attack_is_gaussian_augmentation(batch: Any, variables: Any) -> None:
    """eps = 0, m = 1: the same draw from the same key, so the same loss bit for bit."""
    x, y = batch
    f = _f(variables)
    gauss = training.gaussian_augmentation_loss(f, x, y, key=KEY, sigma=0.25)
    assert training.smoothadv_loss(f, x, y, key=KEY, sigma=0.25, eps=0.0, steps=2, m=1) == gauss


def test_smoothadv_attack_raises_the_loss_of_a_trained_model(batch: Any, mlp: Any) -> None:
    x, y = batch
    f = mlp.logits_fn  # the stored digits MLP of conftest.py
    assert LOSSES["smoothadv"](f, x, y, eps=1.0) > LOSSES["smoothadv"](f, x, y, eps=0.0)


@pytest.mark.parametrize("method", ["gaussian", "smoothadv"])
def test_noisy_losses_are_deterministic_per_key(method: str, batch: Any, variables: Any) -> None:
    x, y = batch
    f = _f(variables)
    a = LOSSES[method](f, x, y, key=jax.random.key(3))
    assert a == LOSSES[method](f, x, y, key=jax.random.key(3))
    assert a != LOSSES[method](f, x, y, key=jax.random.key(4))


@pytest.mark.parametrize("method", ["gaussian", "smoothadv"])
def test_noisy_losses_pass_aux_through(method: str, batch: Any, variables: Any) -> None:
    x, y = batch
    f = _f(variables)

    def with_aux(inputs: jax.Array) -> tuple[jax.Array, jax.Array]:
        return f(inputs), jnp.sum(inputs)

    extra = {"attack_logits_fn": f} if method == "smoothadv" else {}
    loss, aux = LOSSES[method](with_aux, x, y, has_aux=True, **extra)
    assert loss == LOSSES[method](f, x, y)
    assert jnp.shape(aux) == ()


# --- Flax NNX --------------------------------------------------------------------------


@pytest.mark.parametrize("method", sorted(LOSSES))
def test_nnx_module_gives_the_loss_of_the_same_weights(method: str, batch: Any) -> None:
    x, y = batch
    module = nnx.Linear(64, 10, rngs=nnx.Rngs(0))

    class Flat(nnx.Module):
        def __init__(self, inner: nnx.Linear) -> None:
            self.inner = inner

        def __call__(self, inputs: jax.Array) -> jax.Array:
            return self.inner(inputs.reshape(inputs.shape[0], -1))

    model = Flat(module)
    loss, grads = nnx.jit(nnx.value_and_grad(lambda m: LOSSES[method](m, x, y)))(model)
    params = {"w": module.kernel[...], "b": module.bias[...]}
    reference = LOSSES[method](sm.affine(params["w"], params["b"]), x, y)
    np.testing.assert_allclose(loss, reference, rtol=1e-5)
    assert bool(jnp.all(jnp.isfinite(grads["inner"]["kernel"][...])))


# --- refusals ------------------------------------------------------------------------------

BAD = [
    ("gaussian", {"sigma": 0.0}, "sigma must be > 0"),
    ("gaussian", {"sigma": -1.0}, "sigma must be > 0"),
    ("gaussian", {"key": None}, "key is required"),
    ("smoothadv", {"sigma": -0.1}, "sigma must be > 0"),
    ("smoothadv", {"eps": -0.1}, "eps must be >= 0"),
    ("smoothadv", {"m": 0}, "m must be >= 1"),
    ("smoothadv", {"steps": 0}, "steps must be >= 1"),
    ("smoothadv", {"step_size": -1.0}, "step_size must be >= 0"),
    ("smoothadv", {"bounds": (1.0, 0.0)}, "lo <= hi"),
    ("ibp", {"eps": -0.1}, "eps must be >= 0"),
    ("ibp", {"kappa": 1.5}, r"kappa must lie in \[0, 1\]"),
    ("ibp", {"kappa": -0.1}, r"kappa must lie in \[0, 1\]"),
    ("ibp", {"norm": "l3"}, "norm must be one of"),
    ("crown_ibp", {"crown_weight": 2.0}, r"crown_weight must lie in \[0, 1\]"),
    ("crown_ibp", {"kappa": -1.0}, r"kappa must lie in \[0, 1\]"),
    ("crown_ibp", {"eps": -0.1}, "eps must be >= 0"),
    ("crown_ibp", {"batch_size": 0}, "batch_size must be >= 1"),
]


@pytest.mark.parametrize(("method", "bad", "match"), BAD)
def test_bad_hyperparameters_are_refused(
    method: str, bad: dict[str, Any], match: str, batch: Any, variables: Any
) -> None:
    x, y = batch
    with pytest.raises(ValueError, match=match):
        LOSSES[method](_f(variables), x, y, **bad)
    # Also while the parameters are traced by jax.grad.
    with pytest.raises(ValueError, match=match):
        jax.grad(lambda v: LOSSES[method](_f(v), x, y, **bad))(variables)


@pytest.mark.parametrize("method", sorted(LOSSES))
def test_bad_batches_are_refused(method: str, batch: Any, variables: Any) -> None:
    x, y = batch
    f = _f(variables)
    with pytest.raises(ValueError, match=r"y must hold labels in \[0, 10\)"):
        LOSSES[method](f, x, y.at[0].set(10))
    with pytest.raises(ValueError, match="at least one example"):
        LOSSES[method](f, x[:0], y[:0])
    with pytest.raises(ValueError, match="NaN/inf"):
        LOSSES[method](f, x.at[0, 0, 0, 0].set(jnp.nan), y)
    if method != "gaussian":  # the Gaussian loss has no box: the noise leaves it anyway
        with pytest.raises(ValueError, match="x must lie inside bounds"):
            LOSSES[method](f, x + 2.0, y)


def test_ibp_schedule_refuses_bad_values() -> None:
    for kw, match in (
        ({"warmup": -1}, "warmup must be a Python int >= 0"),
        ({"ramp": 2.5}, "ramp must be a Python int >= 0"),
        ({"eps": -0.1}, "eps must be >= 0"),
        ({"kappa_start": 1.5}, r"kappa_start must lie in \[0, 1\]"),
        ({"kappa_end": -0.5}, r"kappa_end must lie in \[0, 1\]"),
    ):
        with pytest.raises(ValueError, match=match):
            training.ibp_schedule(3, **{"warmup": 1, "ramp": 2, "eps": 0.1, **kw})
    with pytest.raises(ValueError, match="step must be >= 0"):
        training.ibp_schedule(-1, warmup=1, ramp=2, eps=0.1)


CHECKED = [
    ("gaussian", "sigma", 0.25, -0.25, "sigma must be > 0"),
    ("smoothadv", "eps", 0.5, -0.5, "eps must be >= 0"),
    ("ibp", "eps", 0.05, -0.05, "eps must be >= 0"),
    ("ibp", "kappa", 0.5, 1.5, r"kappa must lie in \[0, 1\]"),
    ("crown_ibp", "crown_weight", 0.5, -0.5, r"crown_weight must lie in \[0, 1\]"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("method", "name", "good", "bad", "match"), CHECKED)
def test_checked_losses_report_bad_traced_values_under_jit(
    method: str, name: str, good: float, bad: float, match: str, batch: Any, variables: Any
) -> None:
    x, y = batch

    def loss(v: Any, x: jax.Array, y: jax.Array, value: jax.Array) -> Any:
        return LOSSES[method](_f(v), x, y, **{name: value})

    run = jax.jit(jaxadv.checked(loss))
    err, value = run(variables, x, y, good)
    err.throw()
    np.testing.assert_allclose(value, loss(variables, x, y, good), rtol=1e-5)
    err, _ = run(variables, x, y, bad)
    with pytest.raises(ValueError, match=match):
        err.throw()
    err, _ = run(variables, x, y.at[0].set(10), good)
    with pytest.raises(ValueError, match="y must hold labels"):
        err.throw()
    # Without checked, the traced values are not checked (as in the attacks).
    jax.jit(loss)(variables, x, y, bad)
