"""Model adapters (:mod:`jaxadv.models`): Flax linen, Flax NNX and plain functions.

* Linen with BatchNorm and Dropout, adapted with ``train=False``: the attack
  uses the running statistics and no dropout (deterministic, equal to
  ``apply(..., train=False)``), and the variables are never changed; with
  ``train=True`` the ``mutable=False`` guard raises an error naming
  ``batch_stats``.
* ``mean``/``std`` in the adapter: attacking raw inputs equals attacking a
  model that normalises internally, and ``eps`` is measured in the raw space.
* Models with several outputs: without ``output=`` a ``ValueError`` that says
  so; with an index, a key or a callable the attack works.
* Flax NNX with BatchNorm and Dropout: ``from_flax(module)`` and the module
  itself both work and agree with the module in eval mode; the user's module
  is not mutated (batch statistics, RNG counters, train/eval flags); its
  parameters are traced (a second module of the same structure compiles
  nothing new).
* ``logits`` / ``predict`` / ``from_apply`` basics.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxadv


class BNNet(nn.Module):
    """Dense -> BatchNorm -> ReLU -> Dropout -> Dense."""

    classes: int = 4

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = nn.Dense(16)(x.reshape(x.shape[0], -1))
        x = nn.BatchNorm(use_running_average=not train)(x)
        x = nn.Dropout(0.5, deterministic=not train)(nn.relu(x))
        return nn.Dense(self.classes)(x)


class Normalising(nn.Module):
    """A small net that normalises its NHWC input itself."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = (x - jnp.asarray(self.mean)) / jnp.asarray(self.std)
        return Plain()(x)


class Plain(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.relu(nn.Dense(8)(x))  # acts on the channel axis of NHWC inputs
        return nn.Dense(5)(x.reshape(x.shape[0], -1))


class NNXNet(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.l1 = nnx.Linear(12, 16, rngs=rngs)
        self.bn = nnx.BatchNorm(16, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)
        self.l2 = nnx.Linear(16, 4, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.drop(nnx.relu(self.bn(self.l1(x.reshape(x.shape[0], -1)))))
        return self.l2(h)


def _multi_apply(params: Any, x: jax.Array) -> Any:
    z = x.reshape(x.shape[0], -1) @ params["w"]
    return {"logits": z, "features": 2 * z}


def _tuple_apply(params: Any, x: jax.Array) -> Any:
    z = x.reshape(x.shape[0], -1) @ params["w"]
    return z, jnp.tanh(z)


def _linear_apply(params: Any, x: jax.Array) -> jax.Array:
    return x.reshape(x.shape[0], -1) @ params["w"]


@contextlib.contextmanager
def count_compiles() -> Iterator[list[str]]:
    events: list[str] = []

    def listener(name: str, duration: float, **kwargs: Any) -> None:
        if name in ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/backend_compile_duration"):
            events.append(name)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield events
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def _snapshot(tree: Any) -> Any:
    """NumPy copies of every leaf (PRNG keys as their raw key data)."""

    def copy(leaf: Any) -> np.ndarray:
        if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        return np.array(leaf)

    return jax.tree_util.tree_map(copy, tree)


def _x(shape: tuple[int, ...] = (8, 12), seed: int = 0) -> jax.Array:
    return jax.random.uniform(jax.random.key(seed), shape)


# --- linen ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bn_linen() -> tuple[BNNet, Any]:
    model = BNNet()
    variables = model.init(jax.random.key(0), _x(), train=False)
    # Non-trivial running statistics, so that batch statistics would differ from them.
    stats = variables["batch_stats"]["BatchNorm_0"]
    variables = {
        "params": variables["params"],
        "batch_stats": {"BatchNorm_0": {"mean": stats["mean"] + 0.3, "var": stats["var"] * 2.0}},
    }
    return model, variables


@pytest.mark.slow
def test_linen_batchnorm_dropout_inference(bn_linen: Any) -> None:
    model, variables = bn_linen
    before = jax.tree_util.tree_map(np.array, variables)
    logits_fn = jaxadv.from_flax(model, variables, train=False)
    x = _x()
    np.testing.assert_allclose(
        np.asarray(jaxadv.logits(logits_fn, x)), np.asarray(model.apply(variables, x, train=False)), atol=1e-6
    )
    a = jaxadv.pgd(logits_fn, x, key=jax.random.key(1), eps=0.1, steps=3)
    b = jaxadv.pgd(logits_fn, x, key=jax.random.key(1), eps=0.1, steps=3)
    c = jaxadv.bim(logits_fn, x, eps=0.1, steps=3)
    d = jaxadv.bim(logits_fn, x, eps=0.1, steps=3)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.asarray(c), np.asarray(d))
    assert float(jnp.max(jnp.abs(a - x))) > 0
    jax.tree_util.tree_map(np.testing.assert_array_equal, variables, before)
    # The statistics the attack sees are the running ones: equal to an explicit eval-mode closure.
    ref = jaxadv.bim(lambda z: model.apply(variables, z, train=False), x, eps=0.1, steps=3)
    np.testing.assert_allclose(np.asarray(c), np.asarray(ref), atol=1e-6)


def test_linen_train_mode_is_refused(bn_linen: Any) -> None:
    model, variables = bn_linen
    logits_fn = jaxadv.from_flax(model, variables, train=True)
    with pytest.raises(Exception, match="batch_stats"):
        jaxadv.fgsm(logits_fn, _x(), eps=0.1)


def test_linen_needs_variables() -> None:
    with pytest.raises(ValueError, match="variables"):
        jaxadv.from_flax(Plain())


@pytest.mark.slow
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_mean_std_equals_internal_normalisation(norm: str) -> None:
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    x = _x((6, 5, 5, 3), 2)
    inner = Normalising(mean, std)
    variables = inner.init(jax.random.key(3), x)
    internal = jaxadv.from_flax(inner, variables)
    plain = Plain()
    adapted = jaxadv.from_flax(plain, {"params": variables["params"]["Plain_0"]}, mean=mean, std=std)
    np.testing.assert_allclose(
        np.asarray(jaxadv.logits(internal, x)), np.asarray(jaxadv.logits(adapted, x)), rtol=1e-5, atol=1e-5
    )
    eps = 0.05 if norm == "linf" else 0.5
    kw: dict[str, Any] = dict(key=jax.random.key(4), eps=eps, steps=4, norm=norm)
    a = jaxadv.pgd(internal, x, **kw)
    b = jaxadv.pgd(adapted, x, **kw)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
    # eps is measured on the raw inputs, not on (x - mean) / std.
    dist = np.asarray(jaxadv.norm_of(b - x, norm))
    assert np.all(dist <= eps + 1e-5)
    assert np.max(dist) > 0.9 * eps


def test_mean_std_with_from_apply() -> None:
    params = {"w": jax.random.normal(jax.random.key(5), (12, 3))}
    x = _x((4, 12), 6)
    f = jaxadv.from_apply(_linear_apply, params, mean=0.5, std=0.25)
    np.testing.assert_allclose(
        np.asarray(jaxadv.logits(f, x)), np.asarray(((x - 0.5) / 0.25) @ params["w"]), rtol=1e-5
    )
    x_adv = jaxadv.fgsm(f, x, eps=0.03)
    np.testing.assert_allclose(np.asarray(jnp.max(jnp.abs(x_adv - x), axis=1)), 0.03, rtol=1e-4)


# --- several outputs -----------------------------------------------------------------------


def test_several_outputs_need_output() -> None:
    params = {"w": jax.random.normal(jax.random.key(7), (12, 3))}
    x = _x((4, 12), 8)
    ref = jaxadv.fgsm(jaxadv.from_apply(_linear_apply, params), x, eps=0.1)
    for apply_fn, output in ((_multi_apply, "logits"), (_tuple_apply, 0)):
        with pytest.raises(ValueError, match="output="):
            jaxadv.fgsm(jaxadv.from_apply(apply_fn, params), x, eps=0.1)
        got = jaxadv.fgsm(jaxadv.from_apply(apply_fn, params, output=output), x, eps=0.1)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(ref))
    got = jaxadv.pgd(
        jaxadv.from_apply(_tuple_apply, params, output=lambda out: out[0]), x, key=jax.random.key(0), eps=0.1
    )
    assert got.shape == x.shape


def test_linen_several_outputs() -> None:
    class Two(nn.Module):
        @nn.compact
        def __call__(self, x: jax.Array) -> Any:
            z = nn.Dense(3)(x)
            return z, z.sum(-1)

    x = _x((4, 12), 9)
    model = Two()
    variables = model.init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="output="):
        jaxadv.fgsm(jaxadv.from_flax(model, variables), x, eps=0.1)
    out = jaxadv.fgsm(jaxadv.from_flax(model, variables, output=0), x, eps=0.1)
    assert out.shape == x.shape


# --- NNX -----------------------------------------------------------------------------------


def _nnx_module(seed: int) -> NNXNet:
    module = NNXNet(nnx.Rngs(seed, dropout=seed + 1))
    module.bn.mean[...] = module.bn.mean[...] + 0.2
    module.bn.var[...] = module.bn.var[...] * 3.0
    return module


def test_nnx_module_and_adapter_agree_and_do_not_mutate() -> None:
    module = _nnx_module(0)
    before = _snapshot(nnx.state(module))
    x = _x()
    eval_copy = nnx.clone(module)
    eval_copy.eval()
    want = eval_copy(x)
    np.testing.assert_allclose(np.asarray(jaxadv.logits(module, x)), np.asarray(want), atol=1e-6)
    np.testing.assert_allclose(
        np.asarray(jaxadv.logits(jaxadv.from_flax(module), x)), np.asarray(want), atol=1e-6
    )
    kw: dict[str, Any] = dict(key=jax.random.key(1), eps=0.1, steps=3)
    a = jaxadv.pgd(module, x, **kw)
    b = jaxadv.pgd(jaxadv.from_flax(module), x, **kw)
    c = jaxadv.pgd(jaxadv.from_nnx(module), x, **kw)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(c))
    assert float(jnp.max(jnp.abs(a - x))) > 0
    # Unchanged: batch statistics, parameters, RNG counters, and the train-mode flags.
    after = _snapshot(nnx.state(module))
    jax.tree_util.tree_map(np.testing.assert_array_equal, after, before)
    assert module.bn.use_running_average is False
    assert module.drop.deterministic is False
    # The module still trains: dropout is live in the user's copy.
    assert not np.allclose(np.asarray(module(x)), np.asarray(want))


def test_nnx_refuses_variables() -> None:
    with pytest.raises(ValueError, match="NNX"):
        jaxadv.from_flax(_nnx_module(0), {"params": {}})


def test_nnx_params_are_traced() -> None:
    x = _x()
    kw: dict[str, Any] = dict(key=jax.random.key(2), eps=0.1, steps=2)
    first = jaxadv.pgd(_nnx_module(0), x, **kw)
    second_module = _nnx_module(5)
    with count_compiles() as events:
        second = jaxadv.pgd(second_module, x, **kw)
        second.block_until_ready()
    assert events == []
    assert not np.allclose(np.asarray(first), np.asarray(second))


# --- basics ---------------------------------------------------------------------------------


def test_logits_predict_and_closures() -> None:
    params = {"w": jax.random.normal(jax.random.key(10), (12, 3))}
    x = _x((5, 12), 11)
    f = jaxadv.from_apply(_linear_apply, params)
    np.testing.assert_allclose(np.asarray(jaxadv.logits(f, x)), np.asarray(x @ params["w"]), rtol=1e-6)
    np.testing.assert_array_equal(
        np.asarray(jaxadv.predict(f, x)), np.asarray(jnp.argmax(x @ params["w"], -1))
    )
    # A plain closure is accepted too and gives the same attack.
    closure = jaxadv.bim(lambda z: _linear_apply(params, z), x, eps=0.1, steps=2)
    np.testing.assert_allclose(np.asarray(closure), np.asarray(jaxadv.bim(f, x, eps=0.1, steps=2)), atol=1e-6)
    with pytest.raises(ValueError, match="callable"):
        jaxadv.fgsm(params, x, eps=0.1)  # type: ignore[arg-type]
