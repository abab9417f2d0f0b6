"""Adversarial training refuses nonsense: bad hyperparameters when a step is
built, bad batches through checkify under ``jit``, and both at once in eager
calls of the losses."""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jaxadv
from jaxadv import training

CLASSES = 4
RNG = np.random.default_rng(0)
X = jnp.asarray(RNG.uniform(0.05, 0.95, size=(6, 12)), jnp.float32)
Y = jnp.asarray([0, 1, 2, 3, 1, 2], jnp.int32)
BAD_Y = Y.at[2].set(CLASSES)  # one label outside [0, C)
KEY = jax.random.key(0)
W = jnp.asarray(RNG.normal(size=(12, CLASSES)), jnp.float32)


def logits_fn(params: Any) -> Any:
    return jaxadv.from_apply(lambda p, x: x @ p, params)


class Linear(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.Dense(CLASSES)(x)


MODEL = Linear()
TX = optax.sgd(0.1)


def _state() -> training.TrainState:
    return training.init_train_state(MODEL.init(KEY, X), TX)


def _nnx() -> tuple[Any, Any]:
    module = nnx.Linear(12, CLASSES, rngs=nnx.Rngs(0))
    return module, nnx.Optimizer(module, TX, wrt=nnx.Param)


# --- losses, eager: every bad value raises -------------------------------------

LOSSES: dict[str, Callable[..., Any]] = {
    "pgd": lambda **kw: training.pgd_at_loss(**{"step_size": 0.05, "steps": 2, **kw}),
    "fast": lambda **kw: training.fast_at_loss(**kw),
    "trades": lambda **kw: training.trades_loss(**{"step_size": 0.05, "steps": 2, **kw}),
}

BAD_LOSS_ARGS = [
    ({"eps": -0.1}, "eps must be >= 0"),
    ({"step_size": -0.05}, "step_size must be >= 0"),
    ({"bounds": (1.0, 0.0)}, "lo <= hi"),
    ({"y": BAD_Y}, r"y must hold labels in \[0, 4\)"),
    ({"x": X + 2.0}, "x must lie inside bounds"),
    ({"x": X - 2.0}, "x must lie inside bounds"),
]


@pytest.mark.parametrize("method", sorted(LOSSES))
@pytest.mark.parametrize(("bad", "match"), BAD_LOSS_ARGS)
def test_losses_refuse_bad_values_eagerly(method: str, bad: dict[str, Any], match: str) -> None:
    kw = {"logits_fn": logits_fn(W), "x": X, "y": Y, "key": KEY, "eps": 0.1, **bad}
    with pytest.raises(ValueError, match=match):
        LOSSES[method](**kw)
    # The same call inside jax.grad (parameters traced, batch concrete) raises too.
    kw.pop("logits_fn")
    with pytest.raises(ValueError, match=match):
        jax.grad(lambda w: LOSSES[method](logits_fn=logits_fn(w), **kw))(W)


@pytest.mark.parametrize("method", ["pgd", "trades"])
def test_losses_refuse_fewer_than_one_step(method: str) -> None:
    with pytest.raises(ValueError, match="steps must be >= 1"):
        LOSSES[method](logits_fn=logits_fn(W), x=X, y=Y, key=KEY, eps=0.1, steps=0)


def test_trades_refuses_negative_beta() -> None:
    with pytest.raises(ValueError, match="beta must be >= 0"):
        training.trades_loss(logits_fn(W), X, Y, key=KEY, eps=0.1, step_size=0.05, steps=2, beta=-1.0)


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(LOSSES))
def test_checked_losses_report_bad_values_under_jit(method: str) -> None:
    """Under jit the values are abstract; jaxadv.checked runs the checks."""

    def loss(w: jax.Array, x: jax.Array, y: jax.Array, eps: jax.Array) -> Any:
        return LOSSES[method](logits_fn=logits_fn(w), x=x, y=y, key=KEY, eps=eps)

    run = jax.jit(jaxadv.checked(loss))
    err, value = run(W, X, Y, 0.1)
    err.throw()
    np.testing.assert_allclose(value, loss(W, X, Y, 0.1), rtol=1e-5)
    for x, y, eps, match in (
        (X, Y, -0.1, "eps must be >= 0"),
        (X, BAD_Y, 0.1, "y must hold labels"),
        (X + 2.0, Y, 0.1, "x must lie inside bounds"),
    ):
        err, _ = run(W, x, y, eps)
        with pytest.raises(ValueError, match=match):
            err.throw()


# --- builders: static hyperparameters are refused when the step is built -------


def _build_linen(**kw: Any) -> Any:
    return training.make_train_step(MODEL, TX, **kw)


def _build_nnx(**kw: Any) -> Any:
    return training.make_nnx_train_step(**kw)


BAD_CONFIGS = [
    ({"method": "pgd", "eps": -0.1, "step_size": 0.05, "steps": 2}, "eps must be >= 0"),
    ({"method": "fast", "eps": jnp.asarray(-0.1)}, "eps must be >= 0"),
    ({"method": "fast", "eps": float("nan")}, "eps must be >= 0"),
    ({"method": "pgd", "eps": 0.1, "step_size": -0.05, "steps": 2}, "step_size must be >= 0"),
    ({"method": "fast", "eps": 0.1, "step_size": -0.05}, "step_size must be >= 0"),
    ({"method": "pgd", "eps": 0.1, "step_size": 0.05, "steps": 0}, "steps must be >= 1"),
    ({"method": "trades", "eps": 0.1, "step_size": 0.05}, "needs steps="),
    ({"method": "pgd", "eps": 0.1, "step_size": 0.05, "steps": 2.0}, "steps must be a Python int"),
    ({"method": "trades", "eps": 0.1, "step_size": 0.05, "steps": 2, "beta": -1.0}, "beta must be >= 0"),
    ({"method": "pgd", "eps": 0.1, "step_size": 0.05, "steps": 2, "bounds": (1.0, 0.0)}, "lo <= hi"),
    ({"method": "fast", "eps": 0.1, "bounds": (0.0,)}, "bounds must be a pair"),
    ({"method": "fast", "eps": 0.1, "norm": "l3"}, "norm must be one of"),
    ({"method": "fast"}, "needs eps="),
    ({"method": "free", "eps": 0.1}, "method must be one of"),
]


@pytest.mark.parametrize("build", [_build_linen, _build_nnx], ids=["linen", "nnx"])
@pytest.mark.parametrize(("config", "match"), BAD_CONFIGS)
def test_step_builders_refuse_bad_hyperparameters(build: Any, config: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build(**config)


def _build_free_linen(**kw: Any) -> Any:
    return training.make_free_train_step(MODEL, TX, **kw)


@pytest.mark.parametrize(
    "build", [_build_free_linen, training.make_nnx_free_train_step], ids=["linen", "nnx"]
)
@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"eps": -0.1, "replays": 2}, "eps must be >= 0"),
        ({"eps": 0.1, "replays": 0}, "replays must be >= 1"),
        ({"eps": 0.1, "replays": 2, "bounds": (1.0, 0.0)}, "lo <= hi"),
        ({"eps": None, "replays": 2}, "needs eps="),
    ],
)
def test_free_builders_refuse_bad_hyperparameters(build: Any, config: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build(**config)


# --- steps: the batch's values, through checkify ---------------------------------

STEP_CONFIGS = {
    "clean": {},
    "pgd": {"eps": 0.1, "step_size": 0.05, "steps": 2},
    "fast": {"eps": 0.1},
    "trades": {"eps": 0.1, "step_size": 0.05, "steps": 2},
}


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(STEP_CONFIGS))
def test_checked_linen_step_reports_bad_batches(method: str) -> None:
    config = STEP_CONFIGS[method]
    plain = training.make_train_step(MODEL, TX, method=method, **config)
    step = training.make_train_step(MODEL, TX, method=method, checked=True, **config)
    state = _state()

    err, (new_state, metrics) = step(state, X, Y, KEY)
    err.throw()
    ref_state, ref_metrics = plain(state, X, Y, KEY)
    np.testing.assert_allclose(metrics["loss"], ref_metrics["loss"], rtol=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(new_state), jax.tree_util.tree_leaves(ref_state), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)

    err, _ = step(state, X, BAD_Y, KEY)
    with pytest.raises(ValueError, match=r"y must hold labels in \[0, 4\)"):
        err.throw()
    if method != "clean":  # clean training has no threat model, hence no bounds
        err, _ = step(state, X + 2.0, Y, KEY)
        with pytest.raises(ValueError, match="x must lie inside bounds"):
            err.throw()
    # Shapes are static: they raise without any wrapper.
    with pytest.raises(ValueError, match="y must have shape"):
        plain(state, X, Y[:3], KEY)


@pytest.mark.slow
def test_jaxadv_checked_wraps_a_compiled_linen_step_in_either_order() -> None:
    """A jitted step reuses its first trace; the checked and plain calls must not share one."""
    step = training.make_train_step(MODEL, TX, method="pgd", **STEP_CONFIGS["pgd"])
    state = _state()
    step(state, X, BAD_Y, KEY)  # plain call first: compiled without the checks
    checked_step = jax.jit(jaxadv.checked(step))
    err, _ = checked_step(state, X, BAD_Y, KEY)
    with pytest.raises(ValueError, match="y must hold labels"):
        err.throw()
    err, _ = checked_step(state, X + 2.0, Y, KEY)
    with pytest.raises(ValueError, match="x must lie inside bounds"):
        err.throw()
    step(state, X, Y, KEY)  # and the plain step still runs after a checked trace


def test_unjitted_linen_step_refuses_a_concrete_bad_batch() -> None:
    step = training.make_train_step(MODEL, TX, method="trades", jit=False, **STEP_CONFIGS["trades"])
    with pytest.raises(ValueError, match="y must hold labels"):
        step(_state(), X, BAD_Y, KEY)


def test_checked_free_step_reports_bad_batches() -> None:
    step = training.make_free_train_step(MODEL, TX, eps=0.1, replays=2, checked=True)
    state, delta = _state(), jnp.zeros_like(X)
    err, (_, new_delta, _) = step(state, delta, X, Y, KEY)
    err.throw()
    assert new_delta.shape == X.shape
    for x, y, match in ((X, BAD_Y, "y must hold labels"), (X + 2.0, Y, "x must lie inside bounds")):
        err, _ = step(state, delta, x, y, KEY)
        with pytest.raises(ValueError, match=match):
            err.throw()


@pytest.mark.parametrize("method", ["clean", "trades"])
def test_checked_nnx_step_reports_bad_batches_and_updates_in_place(method: str) -> None:
    step = training.make_nnx_train_step(method=method, checked=True, **STEP_CONFIGS[method])
    plain = training.make_nnx_train_step(method=method, **STEP_CONFIGS[method])
    (module, opt), (ref_module, ref_opt) = _nnx(), _nnx()
    before = np.asarray(module.kernel[...])
    err, metrics = step(module, opt, X, Y, KEY)
    err.throw()
    ref_metrics = plain(ref_module, ref_opt, X, Y, KEY)
    np.testing.assert_allclose(metrics["loss"], ref_metrics["loss"], rtol=1e-6)
    assert not np.array_equal(np.asarray(module.kernel[...]), before)
    np.testing.assert_allclose(module.kernel[...], ref_module.kernel[...], rtol=1e-6)

    err, _ = step(module, opt, X, BAD_Y, KEY)
    with pytest.raises(ValueError, match="y must hold labels"):
        err.throw()


def test_checked_nnx_free_step_reports_bad_batches() -> None:
    step = training.make_nnx_free_train_step(eps=0.1, replays=2, checked=True)
    module, opt = _nnx()
    err, (delta, _) = step(module, opt, jnp.zeros_like(X), X, Y)
    err.throw()
    assert float(jnp.max(jnp.abs(delta))) > 0
    for x, y, match in ((X, BAD_Y, "y must hold labels"), (X + 2.0, Y, "x must lie inside bounds")):
        err, _ = step(module, opt, jnp.zeros_like(X), x, y)
        with pytest.raises(ValueError, match=match):
            err.throw()
