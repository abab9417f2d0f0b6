"""Adversarial training: losses, whole steps (linen and NNX), Free, the monitor."""

from __future__ import annotations

import warnings
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jaxadv
from jaxadv import training
from jaxadv.attacks.base import prepare
from jaxadv.attacks.iterative import projected_gradient
from jaxadv.compose.loop import run_from
from jaxadv.keys import draw_rows, row_keys

# --- a linear model: every quantity is cheap and exact ------------------------


def _row_noise(key: Any, x: Any) -> Any:
    """TRADES' start noise: each example's normal draw from its own key (jaxadv.keys)."""
    return draw_rows(lambda k: jax.random.normal(k, x.shape[1:]), row_keys(key, x.shape[0]))


def linear_apply(params: Any, x: jax.Array) -> jax.Array:
    return x.reshape(x.shape[0], -1) @ params["w"] + params["b"]


def _linear_problem(seed: int = 0, batch: int = 6, dim: int = 12, classes: int = 4) -> tuple[Any, ...]:
    rng = np.random.default_rng(seed)
    params = {
        "w": jnp.asarray(rng.normal(size=(dim, classes)), jnp.float32),
        "b": jnp.asarray(rng.normal(size=(classes,)) * 0.1, jnp.float32),
    }
    x = jnp.asarray(rng.uniform(0.05, 0.95, size=(batch, dim)), jnp.float32)
    y = jnp.asarray(rng.integers(0, classes, size=batch), jnp.int32)
    return params, x, y


def _pairs(tree_a: Any, tree_b: Any) -> list[tuple[Any, Any]]:
    """The leaves of two pytrees of the same structure, side by side."""
    a, b = jax.tree_util.tree_leaves(tree_a), jax.tree_util.tree_leaves(tree_b)
    assert len(a) == len(b)
    return list(zip(a, b, strict=True))


def _mean_ce(logits: jax.Array, y: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def _reference_adv(method: str, params: Any, x: jax.Array, y: jax.Array, key: Any, norm: str) -> jax.Array:
    """The adversarial batch of each method, built from the library's attack pieces."""
    f = jaxadv.from_apply(linear_apply, params)
    if method == "pgd":
        return jaxadv.pgd(f, x, y, key=key, eps=0.3, step_size=0.1, steps=4, norm=norm)
    if method == "fast":  # FGSM of step 1.25 eps from a uniform start = one PGD step
        return jaxadv.pgd(f, x, y, key=key, eps=0.3, step_size=0.375, steps=1, norm=norm)
    q = jax.nn.softmax(f(x), axis=-1)
    p = prepare(f, x, q, bounds=(0.0, 1.0), eps=0.3, soft_labels=True)
    x0 = jaxadv.threat_models.project_to_feasible(x + 0.001 * _row_noise(key, x), x, 0.3, norm, 0.0, 1.0)
    return run_from(
        projected_gradient(norm=norm, loss=training.kl_divergence),
        p,
        x0,
        key=jax.random.key(0),
        step_size=jnp.asarray(0.1),
        steps=4,
        targeted=False,
        loop="auto",
    )


def _outer(method: str, params: Any, x: jax.Array, x_adv: jax.Array, y: jax.Array) -> jax.Array:
    if method == "trades":
        clean, adv = linear_apply(params, x), linear_apply(params, x_adv)
        kl = training.kl_divergence(adv, jax.nn.softmax(clean, axis=-1))
        return _mean_ce(clean, y) + 2.0 * kl.mean()
    return _mean_ce(linear_apply(params, x_adv), y)


def _method_loss(method: str, params: Any, x: jax.Array, y: jax.Array, key: Any, norm: str) -> jax.Array:
    f = jaxadv.from_apply(linear_apply, params)
    if method == "pgd":
        return training.pgd_at_loss(f, x, y, key=key, eps=0.3, step_size=0.1, steps=4, norm=norm)
    if method == "fast":
        return training.fast_at_loss(f, x, y, key=key, eps=0.3, norm=norm)
    return training.trades_loss(f, x, y, key=key, eps=0.3, step_size=0.1, steps=4, beta=2.0, norm=norm)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["pgd", "fast", "trades"])
def test_loss_gradient_is_outer_gradient_at_constant_adversarial_batch(method: str) -> None:
    """No gradient leaks through the inner maximisation: the parameter gradient
    equals the outer loss's gradient at the adversarial batch held constant.

    L2 attacks, because their steps depend smoothly on the parameters (an L-inf
    sign step has zero derivative, so a leak would go unnoticed there)."""
    norm = "l2"
    params, x, y = _linear_problem()
    key = jax.random.key(3)
    x_adv = _reference_adv(method, params, x, y, key, norm)
    assert float(jnp.max(jnp.abs(x_adv - x))) > 0.05
    loss_ref, grad_ref = jax.value_and_grad(lambda p: _outer(method, p, x, x_adv, y))(params)

    loss_fn = jax.jit(jax.value_and_grad(lambda p: _method_loss(method, p, x, y, key, norm)))
    loss, grad = loss_fn(params)
    np.testing.assert_allclose(loss, loss_ref, rtol=1e-5, atol=1e-6)
    for g, r in _pairs(grad, grad_ref):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-5)
    # Eager (host loop) and jitted (fori loop) losses agree.
    np.testing.assert_allclose(_method_loss(method, params, x, y, key, norm), loss, rtol=1e-5)

    # The check is sensitive: differentiating through the attack gives another gradient.
    def leaky(p: Any) -> jax.Array:
        return _outer(method, p, x, _reference_adv(method, p, x, y, key, norm), y)

    leaked = jax.grad(leaky)(params)
    assert not np.allclose(leaked["w"], grad_ref["w"], rtol=1e-3, atol=1e-4)


def test_kl_divergence_matches_definition() -> None:
    rng = np.random.default_rng(0)
    z = jnp.asarray(rng.normal(size=(5, 4)), jnp.float32)
    q = jax.nn.softmax(jnp.asarray(rng.normal(size=(5, 4)), jnp.float32))
    q = q.at[0].set(jnp.asarray([1.0, 0.0, 0.0, 0.0]))
    p = jax.nn.softmax(z)
    expected = np.sum(np.where(q > 0, q * (np.log(np.maximum(q, 1e-30)) - np.log(p)), 0.0), axis=1)
    np.testing.assert_allclose(training.kl_divergence(z, q), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(training.kl_divergence(z, jax.nn.softmax(z)), 0.0, atol=1e-6)


# --- linen with batch norm and dropout ----------------------------------------


class BNNet(nn.Module):
    """conv -> batch norm -> relu -> dropout -> dense, with a ``train`` switch."""

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        h = nn.Conv(8, (3, 3), strides=(2, 2))(x)
        h = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(h))
        h = nn.Dropout(0.2, deterministic=not train)(h)
        return nn.Dense(10)(h.reshape(h.shape[0], -1))


@pytest.fixture(scope="module")
def bn_setup(digits: Any) -> tuple[Any, ...]:
    train = digits[0]
    x, y = jnp.asarray(train.x[:32]), jnp.asarray(train.y[:32])
    model = BNNet()
    variables = model.init(jax.random.key(0), x, train=False)
    # Move the running statistics away from their initial values.
    _, mutated = model.apply(
        variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(9)}
    )
    variables = {"params": variables["params"], "batch_stats": mutated["batch_stats"]}
    return model, variables, x, y


HYPER = dict(eps=0.15, step_size=0.05, steps=3, train_kwargs={"train": True}, eval_kwargs={"train": False})


def _train_pass(model: Any, variables: Any, x: jax.Array, key: Any) -> tuple[jax.Array, Any]:
    out, mutated = model.apply(variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": key})
    return out, mutated["batch_stats"]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["pgd", "fast", "trades"])
def test_linen_step_attacks_in_eval_mode_is_deterministic_and_keeps_batch_stats(
    bn_setup: Any, method: str
) -> None:
    """The step's loss and batch statistics are those of ONE training-mode pass on
    the adversarial batch that the inference-mode attack produced."""
    model, variables, x, y = bn_setup
    tx = optax.sgd(0.1)
    state = training.init_train_state(variables, tx)
    key = jax.random.key(4)
    attack_key, dropout_key = jax.random.split(key)
    eval_fn = jaxadv.from_flax(model, variables, train=False)
    if method == "pgd":
        x_adv = jaxadv.pgd(eval_fn, x, y, key=attack_key, eps=0.15, step_size=0.05, steps=3)
    elif method == "fast":
        x_adv = jaxadv.pgd(eval_fn, x, y, key=attack_key, eps=0.15, step_size=1.25 * 0.15, steps=1)
    else:
        q = jax.nn.softmax(eval_fn(x), axis=-1)
        p = prepare(eval_fn, x, q, bounds=(0.0, 1.0), eps=0.15, soft_labels=True)
        x0 = jaxadv.threat_models.project_to_feasible(
            x + 0.001 * _row_noise(attack_key, x), x, 0.15, "linf", 0, 1
        )
        x_adv = run_from(
            projected_gradient(norm="linf", loss=training.kl_divergence),
            p,
            x0,
            key=jax.random.key(0),
            step_size=jnp.asarray(0.05),
            steps=3,
            targeted=False,
            loop="host",
        )
    if method == "trades":
        logits, stats = _train_pass(model, variables, jnp.concatenate([x, x_adv]), dropout_key)
        clean, adv = logits[:32], logits[32:]
        kl = training.kl_divergence(adv, jax.nn.softmax(clean, axis=-1)).mean()
        expected_loss = _mean_ce(clean, y) + 6.0 * kl
    else:
        logits, stats = _train_pass(model, variables, x_adv, dropout_key)
        expected_loss = _mean_ce(logits, y)

    hyper = dict(HYPER, step_size=None) if method == "fast" else HYPER  # Fast: 1.25 eps
    step = training.make_train_step(model, tx, method=method, **hyper)
    new_state, metrics = step(state, x, y, key)
    np.testing.assert_allclose(metrics["loss"], expected_loss, rtol=1e-4)
    for got, want in _pairs(new_state.batch_stats, stats):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert int(new_state.step) == 1

    # Deterministic under the key: the same key gives the same bits, another key another step.
    again, _ = step(state, x, y, key)
    for got, want in _pairs(again, new_state):
        np.testing.assert_array_equal(got, want)
    other, _ = step(state, x, y, jax.random.key(5))
    assert not np.array_equal(other.params["Dense_0"]["kernel"], new_state.params["Dense_0"]["kernel"])


# --- Free adversarial training -------------------------------------------------


@pytest.mark.slow
def test_free_step_replays_with_one_backward_pass_each(bn_setup: Any) -> None:
    """Each replay uses one backward pass for both the parameter update and an
    FGSM step of size eps on the persistent perturbation; deterministic."""
    model, variables, x, y = bn_setup
    tx = optax.sgd(0.5)
    state = training.init_train_state(variables, tx)
    delta0 = jax.random.uniform(jax.random.key(7), x.shape, minval=-0.1, maxval=0.1)
    key = jax.random.key(8)
    step = training.make_free_train_step(model, tx, eps=0.1, replays=2, train_kwargs={"train": True})
    new_state, delta, _ = step(state, delta0, x, y, key)

    @jax.jit
    def replay(params: Any, stats: Any, d: jax.Array, rng: Any) -> tuple[Any, Any, jax.Array]:
        def loss(params: Any, d: jax.Array) -> tuple[jax.Array, Any]:
            logits, new_stats = _train_pass(
                model, {"params": params, "batch_stats": stats}, jnp.clip(x + d, 0, 1), rng
            )
            return _mean_ce(logits, y), new_stats

        (_, new_stats), (g_p, g_d) = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, d)
        params = jax.tree_util.tree_map(lambda p, g: p - 0.5 * g, params, g_p)
        return params, new_stats, jnp.clip(d + 0.1 * jnp.sign(g_d), -0.1, 0.1)

    params, stats, d = variables["params"], variables["batch_stats"], delta0
    for rng in jax.random.split(key, 2):
        params, stats, d = replay(params, stats, d, rng)
    for got, want in _pairs(new_state.params, params):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    for got, want in _pairs(new_state.batch_stats, stats):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(delta, d, atol=1e-6)
    assert int(new_state.step) == 2
    assert float(jnp.max(jnp.abs(delta))) <= 0.1 + 1e-6

    again, delta_again, _ = step(state, delta0, x, y, key)
    np.testing.assert_array_equal(delta_again, delta)
    np.testing.assert_array_equal(again.params["Dense_0"]["kernel"], new_state.params["Dense_0"]["kernel"])
    with pytest.raises(ValueError, match="delta"):
        step(state, delta0[:4], x, y, key)


# --- NNX ------------------------------------------------------------------------


class NNXNet(nnx.Module):
    """conv -> batch norm -> relu -> dense."""

    def __init__(self, rngs: nnx.Rngs) -> None:
        self.conv = nnx.Conv(1, 8, (3, 3), strides=(2, 2), rngs=rngs)
        self.bn = nnx.BatchNorm(8, momentum=0.9, rngs=rngs)
        self.fc = nnx.Linear(8 * 16, 10, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = nnx.relu(self.bn(self.conv(x)))
        return self.fc(h.reshape(h.shape[0], -1))


def _nnx_net(seed: int) -> NNXNet:
    module = NNXNet(nnx.Rngs(seed))
    module.train()
    return module


@pytest.mark.slow
def test_nnx_loss_attacks_an_inference_copy(digits: Any) -> None:
    """pgd_at_loss on an NNX module: the attack runs on an inference-mode copy of
    the current module, the loss and the batch-statistics update on the module."""
    x, y = jnp.asarray(digits[0].x[:16]), jnp.asarray(digits[0].y[:16])
    module, twin = _nnx_net(2), _nnx_net(2)
    key = jax.random.key(6)
    loss, grads = nnx.value_and_grad(
        lambda m: training.pgd_at_loss(m, x, y, key=key, eps=0.15, step_size=0.05, steps=3)
    )(module)
    x_adv = jaxadv.pgd(jaxadv.from_nnx(twin), x, y, key=key, eps=0.15, step_size=0.05, steps=3)
    ref_loss, ref_grads = nnx.value_and_grad(lambda m: _mean_ce(m(x_adv), y))(twin)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    got, want = grads["fc"]["kernel"][...], ref_grads["fc"]["kernel"][...]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    # Only the training pass touched the batch statistics, identically in both.
    np.testing.assert_allclose(module.bn.mean[...], twin.bn.mean[...], rtol=1e-5, atol=1e-7)
    assert not np.allclose(module.bn.mean[...], _nnx_net(2).bn.mean[...])


@pytest.mark.slow
def test_nnx_steps_are_deterministic_and_update_in_place(digits: Any) -> None:
    x, y = jnp.asarray(digits[0].x[:16]), jnp.asarray(digits[0].y[:16])
    step = training.make_nnx_train_step(method="trades", eps=0.15, step_size=0.05, steps=2)
    kernels = []
    for _ in range(2):
        module = _nnx_net(1)
        opt = nnx.Optimizer(module, optax.adam(1e-2), wrt=nnx.Param)
        metrics = step(module, opt, x, y, jax.random.key(3))
        kernels.append(np.asarray(module.fc.kernel[...]))
        assert np.isfinite(float(metrics["loss"])) and int(opt.step[...]) == 1
    np.testing.assert_array_equal(kernels[0], kernels[1])
    assert not np.array_equal(kernels[0], _nnx_net(1).fc.kernel[...])

    module = _nnx_net(0)
    opt = nnx.Optimizer(module, optax.adam(1e-2), wrt=nnx.Param)
    free = training.make_nnx_free_train_step(eps=0.1, replays=2)
    delta, metrics = free(module, opt, jnp.zeros_like(x), x, y)
    assert float(jnp.max(jnp.abs(delta))) == pytest.approx(0.1, abs=1e-6)
    assert int(opt.step[...]) == 2 and np.isfinite(float(metrics["loss"]))


# --- robustness gain on digits, and the monitor -----------------------------------


def _fit_digits(method: str, train: Any, *, epochs: int, eps: float) -> Any:
    """A plain optax loop around pgd_at_loss (or cross-entropy), same seed and budget."""
    model = jaxadv.examples.DigitsCNN()
    params = model.init(jax.random.key(0), jnp.asarray(train.x[:1]))["params"]
    tx = optax.adam(3e-3)
    opt_state = tx.init(params)

    @jax.jit
    def step(params: Any, opt_state: Any, xb: jax.Array, yb: jax.Array, key: Any) -> tuple[Any, Any]:
        def loss(p: Any) -> jax.Array:
            f = jaxadv.from_flax(model, {"params": p})
            if method == "clean":
                return _mean_ce(f(xb), yb)
            return training.pgd_at_loss(f, xb, yb, key=key, eps=eps, step_size=eps / 3, steps=3)

        updates, opt_state = tx.update(jax.grad(loss)(params), opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    rng = np.random.default_rng(0)
    key = jax.random.key(1)
    for _ in range(epochs):
        order = rng.permutation(len(train.y))
        for start in range(0, len(order) - 63, 64):
            idx = order[start : start + 64]
            key, sub = jax.random.split(key)
            params, opt_state = step(params, opt_state, train.x[idx], train.y[idx], sub)
    return jaxadv.from_flax(model, {"params": params})


# Slow tier: adversarial training runs for epochs.
@pytest.mark.slow
@pytest.mark.full_optimization
def test_pgd_at_raises_pgd_accuracy_and_monitor_flags_collapse(digits: Any) -> None:
    train, test = digits
    x, y = jnp.asarray(test.x[:200]), jnp.asarray(test.y[:200])
    eps, key = 0.15, jax.random.key(2)
    normal = _fit_digits("clean", train, epochs=4, eps=eps)
    robust = _fit_digits("pgd", train, epochs=4, eps=eps)
    monitor = training.robust_accuracy_monitor(robust, x, y, step=0, key=key, eps=eps, steps=10)
    with pytest.warns(training.CatastrophicOverfittingWarning, match="step 1"):
        monitor = training.robust_accuracy_monitor(normal, x, y, monitor, step=1, key=key, eps=eps, steps=10)
    acc_robust, acc_normal = monitor.history[0][1], monitor.history[1][1]
    # The monitor measures what jaxadv.pgd measures.
    x_adv = jaxadv.pgd(normal, x, y, key=key, eps=eps, steps=10)
    assert acc_normal == pytest.approx(jaxadv.examples.accuracy(normal, x_adv, y))
    assert acc_robust > acc_normal + 0.25, (acc_robust, acc_normal)
    assert jaxadv.examples.accuracy(robust, x, y) > 0.9
    assert monitor.collapsed and monitor.collapsed_at == 1 and monitor.best_step == 0


def test_update_monitor_flags_collapse_once() -> None:
    state = training.MonitorState()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for step, acc in enumerate([0.30, 0.45, 0.40, 0.30]):
            state = training.update_monitor(state, acc, step=step, threshold=0.2)
    assert not state.collapsed and state.best_accuracy == 0.45 and state.best_step == 1
    with pytest.warns(training.CatastrophicOverfittingWarning, match="step 4"):
        state = training.update_monitor(state, 0.02, step=4, threshold=0.2)
    assert state.collapsed and state.collapsed_at == 4 and state.best_step == 1
    state = training.update_monitor(state, 0.5, step=5, threshold=0.2, warn=False)
    assert state.collapsed and state.collapsed_at == 4 and state.best_accuracy == 0.5
    assert [s for s, _ in state.history] == [0, 1, 2, 3, 4, 5]


# --- argument checks ------------------------------------------------------------


def test_argument_errors(bn_setup: Any) -> None:
    model, variables, x, y = bn_setup
    tx = optax.sgd(0.1)
    with pytest.raises(ValueError, match="method"):
        training.make_train_step(model, tx, method="mart", eps=0.1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="eps"):
        training.make_train_step(model, tx, method="pgd", step_size=0.1, steps=3)
    with pytest.raises(ValueError, match="step_size"):
        training.make_train_step(model, tx, method="trades", eps=0.1, steps=3)
    with pytest.raises(ValueError, match="steps"):
        training.make_train_step(model, tx, method="pgd", eps=0.1, step_size=0.1, steps=0)
    with pytest.raises(ValueError, match="replays"):
        training.make_free_train_step(model, tx, eps=0.1, replays=0)
    with pytest.raises(ValueError, match="collections"):
        training.init_train_state({"params": {}, "cache": {}}, tx)
    params, xl, yl = _linear_problem()
    f = jaxadv.from_apply(linear_apply, params)
    with pytest.raises(ValueError, match="attack_logits_fn"):
        training.pgd_at_loss(f, xl, yl, key=jax.random.key(0), eps=0.1, step_size=0.1, steps=2, has_aux=True)
    with pytest.raises(ValueError, match="eps"):
        training.fast_at_loss(f, xl, yl, key=jax.random.key(0), eps=-0.1)
    with pytest.raises(ValueError, match="bounds"):
        training.trades_loss(f, xl + 2.0, yl, key=jax.random.key(0), eps=0.1, step_size=0.1, steps=2)


@pytest.mark.slow
def test_losses_accept_a_plain_closure() -> None:
    """A closure over the parameters works too and gives the adapter's gradient."""
    params, x, y = _linear_problem()
    key = jax.random.key(0)

    def with_closure(p: Any) -> jax.Array:
        return training.pgd_at_loss(
            lambda xi: linear_apply(p, xi), x, y, key=key, eps=0.3, step_size=0.1, steps=2, norm="l2"
        )

    def with_adapter(p: Any) -> jax.Array:
        f = jaxadv.from_apply(linear_apply, p)
        return training.pgd_at_loss(f, x, y, key=key, eps=0.3, step_size=0.1, steps=2, norm="l2")

    got, want = jax.jit(jax.grad(with_closure))(params), jax.jit(jax.grad(with_adapter))(params)
    np.testing.assert_allclose(got["w"], want["w"], rtol=1e-5, atol=1e-6)
