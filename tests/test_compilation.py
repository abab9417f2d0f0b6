"""The attacks under JAX transformations, and what they compile.

* ``jax.jit``: every attack runs inside a user's ``jit`` (the loop becomes one
  ``lax.fori_loop``) and gives the result of a direct call.
* ``jax.vmap`` over ``eps``: one program returns a whole eps sweep, equal to
  separate calls.
* ``jax.grad``: gradients through an attack (wrt the model's parameters and
  wrt ``eps``) exist and are finite; the exact value ``d||x' - x||_2 / d eps = 1``
  holds for the L2 fast gradient method; the gradient of a clean loss computed
  beside an attack is unaffected by it.
* No recompilation: after a warm-up call, new parameters of the same shapes and
  new ``eps`` / ``step_size`` / ``steps`` compile nothing, for direct calls and
  under the user's ``jit``. Compilations are counted with
  :mod:`jax.monitoring` (jax 0.10.2 emits ``/jax/core/compile/jaxpr_trace_duration``
  and ``/jax/core/compile/backend_compile_duration`` per trace / XLA compile).
* Compile cost flat in ``steps``: the lowered program under ``jit`` has the same
  size for ``steps=10`` and ``steps=1000`` (a loop, not an unrolled body).
* ``loop="host"`` and ``loop="fori"`` agree; ``loop="host"`` under ``jit`` raises.
"""

from __future__ import annotations

import contextlib
import re
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import small_models as sm

import jaxadv

TRACE = "/jax/core/compile/jaxpr_trace_duration"
COMPILE = "/jax/core/compile/backend_compile_duration"
WIDE = (-10.0, 10.0)


class _Counter:
    def __init__(self) -> None:
        self.events: list[str] = []

    def __call__(self, name: str, duration: float, **kwargs: Any) -> None:
        del duration, kwargs
        self.events.append(name)

    def count(self, name: str) -> int:
        return sum(e == name for e in self.events)


@contextlib.contextmanager
def count_compiles() -> Iterator[_Counter]:
    """Record the tracing and XLA-compilation events of the enclosed block."""
    counter = _Counter()
    jax.monitoring.register_event_duration_secs_listener(counter)
    try:
        yield counter
    finally:
        jax.monitoring.unregister_event_duration_listener(counter)


def _params(seed: int, n: int = 12, classes: int = 5) -> dict[str, jax.Array]:
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    return {
        "w1": jax.random.normal(k1, (n, 16)) / np.sqrt(n),
        "b1": 0.1 * jax.random.normal(k2, (16,)),
        "w2": jax.random.normal(k3, (16, classes)),
        "b2": jnp.zeros((classes,)),
    }


@pytest.fixture(scope="module")
def problem() -> tuple[Any, jax.Array, jax.Array]:
    params = _params(0)
    x = jax.random.uniform(jax.random.key(1), (6, 3, 4))
    y = jnp.argmax(sm.tanh_mlp_apply(params, x), axis=-1)
    return params, x, y


# One entry per attack: (name, call(logits_fn, x, y, eps, step_size, **kw)).
ATTACKS = {
    "fgsm": lambda f, x, y, eps, alpha, **kw: jaxadv.fgsm(f, x, y, eps=eps, **kw),
    "fgm_l2": lambda f, x, y, eps, alpha, **kw: jaxadv.fgsm(f, x, y, eps=eps, norm="l2", **kw),
    "bim": lambda f, x, y, eps, alpha, **kw: jaxadv.bim(f, x, y, eps=eps, step_size=alpha, steps=3, **kw),
    "pgd": lambda f, x, y, eps, alpha, **kw: jaxadv.pgd(
        f, x, y, key=jax.random.key(2), eps=eps, step_size=alpha, steps=3, **kw
    ),
    "pgd_l2": lambda f, x, y, eps, alpha, **kw: jaxadv.pgd(
        f, x, y, key=jax.random.key(2), eps=4 * eps, step_size=4 * alpha, steps=3, norm="l2", **kw
    ),
    "pgd_l1": lambda f, x, y, eps, alpha, **kw: jaxadv.pgd(
        f, x, y, key=jax.random.key(2), eps=8 * eps, step_size=8 * alpha, steps=3, norm="l1", **kw
    ),
}


# fgsm, bim and pgd (L-inf) are checked for every attack by tests/test_registry.py.
@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in ATTACKS if n not in ("fgsm", "bim", "pgd")])
def test_under_jit_equals_direct_call(problem: Any, name: str) -> None:
    params, x, y = problem
    attack = ATTACKS[name]

    @jax.jit
    def run(params: Any, x: jax.Array, eps: jax.Array) -> jax.Array:
        return attack(jaxadv.from_apply(sm.tanh_mlp_apply, params), x, y, eps, eps / 2)

    got = run(params, x, jnp.asarray(0.1))
    want = attack(jaxadv.from_apply(sm.tanh_mlp_apply, params), x, y, 0.1, 0.05)
    assert got.shape == x.shape and got.dtype == x.dtype
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)
    # The loop is compiled into the program, not run on the host.
    if name not in ("fgsm", "fgm_l2"):
        text = jax.jit(run).lower(params, x, jnp.asarray(0.1)).as_text()
        assert "stablehlo.while" in text


@pytest.mark.parametrize("name", ["fgsm", "bim", "pgd_l2"])
def test_vmap_over_eps_is_an_eps_sweep(problem: Any, name: str) -> None:
    params, x, y = problem
    logits_fn = jaxadv.from_apply(sm.tanh_mlp_apply, params)
    attack = ATTACKS[name]
    grid = jnp.asarray([0.0, 0.05, 0.1, 0.2])
    sweep = jax.jit(jax.vmap(lambda e: attack(logits_fn, x, y, e, e / 2)))(grid)
    assert sweep.shape == (4, *x.shape)
    for i, e in enumerate(np.asarray(grid)):
        one = attack(logits_fn, x, y, float(e), float(e) / 2)
        np.testing.assert_allclose(np.asarray(sweep[i]), np.asarray(one), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(sweep[0]), np.asarray(x))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ATTACKS))
def test_grad_through_attack_wrt_params_is_finite(problem: Any, name: str) -> None:
    params, x, y = problem
    attack = ATTACKS[name]

    def robust_loss(params: Any) -> jax.Array:
        logits_fn = jaxadv.from_apply(sm.tanh_mlp_apply, params)
        x_adv = attack(logits_fn, x, y, 0.1, 0.05)
        return jnp.mean(jaxadv.cross_entropy(sm.tanh_mlp_apply(params, x_adv), jax.nn.one_hot(y, 5)))

    g = jax.grad(robust_loss)(params)
    leaves = jax.tree_util.tree_leaves(g)
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in leaves)
    assert any(float(jnp.max(jnp.abs(leaf))) > 0 for leaf in leaves)
    if name in ("fgm_l2", "pgd_l2"):
        # The L2 attack point itself depends smoothly on the parameters.
        gx = jax.grad(
            lambda p: jnp.sum(attack(jaxadv.from_apply(sm.tanh_mlp_apply, p), x, y, 0.1, 0.05) ** 2)
        )(params)
        assert float(jnp.max(jnp.abs(gx["w1"]))) > 0


def test_grad_wrt_eps_of_l2_fgm_is_exact(problem: Any) -> None:
    params, x, y = problem
    logits_fn = jaxadv.from_apply(sm.tanh_mlp_apply, params)

    def total_norm(eps: jax.Array) -> jax.Array:
        x_adv = jaxadv.fgsm(logits_fn, x, y, eps=eps, norm="l2", bounds=WIDE)
        return jnp.sum(jaxadv.norm_of(x_adv - x, "l2"))

    # Under jit: one program instead of an op-by-op gradient (10 s of small compilations).
    np.testing.assert_allclose(float(jax.jit(jax.grad(total_norm))(jnp.asarray(0.3))), x.shape[0], rtol=1e-4)


def test_clean_loss_gradient_beside_an_attack(problem: Any) -> None:
    params, x, y = problem
    onehot = jax.nn.one_hot(y, 5)

    def clean_loss(params: Any) -> jax.Array:
        return jnp.mean(jaxadv.cross_entropy(sm.tanh_mlp_apply(params, x), onehot))

    def with_attack(params: Any) -> tuple[jax.Array, jax.Array]:
        x_adv = jaxadv.pgd(
            jaxadv.from_apply(sm.tanh_mlp_apply, params), x, y, key=jax.random.key(3), eps=0.1, steps=3
        )
        return clean_loss(params), x_adv

    (g, x_adv) = jax.jit(jax.grad(with_attack, has_aux=True))(params)
    want = jax.jit(jax.grad(clean_loss))(params)
    for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
    assert float(jnp.max(jnp.abs(x_adv - x))) <= 0.1 + 1e-6


def _perturbed(params: Any, seed: int) -> Any:
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree_util.tree_unflatten(
        tree, [leaf + 0.01 * jax.random.normal(k, leaf.shape) for leaf, k in zip(leaves, keys, strict=True)]
    )


@pytest.mark.parametrize("name", [n for n in ATTACKS if n not in ("fgsm", "bim", "pgd")])
def test_no_recompilation_for_new_params_and_hyperparameters(problem: Any, name: str) -> None:
    params, x, y = problem
    attack = ATTACKS[name]
    first = attack(jaxadv.from_apply(sm.tanh_mlp_apply, params), x, y, 0.1, 0.03)
    new_params = _perturbed(params, 4)
    with count_compiles() as c:
        second = attack(jaxadv.from_apply(sm.tanh_mlp_apply, new_params), x, y, 0.07, 0.02)
        second.block_until_ready()
    assert c.count(COMPILE) == 0 and c.count(TRACE) == 0, c.events
    assert not np.allclose(np.asarray(first), np.asarray(second))


@pytest.mark.slow
def test_no_recompilation_for_flax_variables_and_steps(mlp: Any, digits: Any) -> None:
    x = jnp.asarray(digits[1].x[:16])
    key = jax.random.key(0)

    def calls(logits_fn: Any, eps: float, steps: int) -> None:
        jaxadv.pgd(logits_fn, x, key=key, eps=eps, step_size=eps / 4, steps=steps).block_until_ready()
        e = jnp.full((16,), 4 * eps)
        jaxadv.pgd(logits_fn, x, key=key, eps=e, steps=steps, norm="l2").block_until_ready()
        jaxadv.bim(logits_fn, x, eps=eps, steps=steps + 1).block_until_ready()
        jaxadv.fgsm(logits_fn, x, eps=eps / 2).block_until_ready()

    calls(mlp.logits_fn, 0.1, 2)
    other = jaxadv.from_flax(mlp.model, _perturbed(mlp.variables, 5))
    with count_compiles() as c:
        calls(other, 0.2, 4)  # new variables, eps, step sizes and step counts
    assert c.count(COMPILE) == 0 and c.count(TRACE) == 0, c.events


def test_no_retrace_under_users_jit(mlp: Any, digits: Any) -> None:
    x = jnp.asarray(digits[1].x[:16])
    attack = jax.jit(jaxadv.pgd, static_argnames=("steps", "norm"))
    attack(mlp.logits_fn, x, key=jax.random.key(0), eps=0.1, step_size=0.02, steps=3)
    other = jaxadv.from_flax(mlp.model, _perturbed(mlp.variables, 6))
    with count_compiles() as c:
        out = attack(other, x, key=jax.random.key(1), eps=0.2, step_size=0.05, steps=3)
        out.block_until_ready()
    assert c.count(COMPILE) == 0 and c.count(TRACE) == 0, c.events
    assert float(jnp.max(jnp.abs(out - x))) <= 0.2 + 1e-6

    # A user function closing over nothing: the model travels as an argument.
    @jax.jit
    def robust_accuracy(logits_fn: Any, x: jax.Array, eps: jax.Array) -> jax.Array:
        x_adv = jaxadv.bim(logits_fn, x, eps=eps, steps=2)
        return jnp.mean(jnp.argmax(logits_fn(x_adv), -1) == jnp.argmax(logits_fn(x), -1))

    robust_accuracy(mlp.logits_fn, x, 0.1)
    with count_compiles() as c:
        robust_accuracy(other, x, 0.3).block_until_ready()
    assert c.count(COMPILE) == 0 and c.count(TRACE) == 0, c.events


def _lowered(steps: int, logits_fn: Any, x: jax.Array) -> str:
    def run(params: Any, x: jax.Array) -> jax.Array:
        f = jaxadv.from_apply(sm.tanh_mlp_apply, params)
        return jaxadv.pgd(f, x, key=jax.random.key(0), eps=0.1, steps=steps)

    return jax.jit(run).lower(logits_fn, x).as_text()


def test_program_size_flat_in_steps(problem: Any) -> None:
    params, x, _ = problem
    small, large = _lowered(10, params, x), _lowered(1000, params, x)
    assert small.count("dot_general") == large.count("dot_general") > 0
    assert small.count("stablehlo.while") == large.count("stablehlo.while") >= 1
    # Equal up to the printed trip count.
    assert re.sub(r"\d+", "N", small) == re.sub(r"\d+", "N", large)
    assert abs(len(small) - len(large)) <= 8


@pytest.mark.slow
def test_host_and_fori_loops_agree(mlp: Any, digits: Any) -> None:
    x = jnp.asarray(digits[1].x[:64])
    y = jnp.asarray(digits[1].y[:64])
    kw: dict[str, Any] = dict(key=jax.random.key(7), steps=5)
    # L2: smooth steps, tight tolerance.
    a = jaxadv.pgd(mlp.logits_fn, x, y, eps=1.0, norm="l2", loop="host", **kw)
    b = jaxadv.pgd(mlp.logits_fn, x, y, eps=1.0, norm="l2", loop="fori", **kw)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4)
    # L-inf sign steps: a gradient coordinate near zero may flip; compare the outcome.
    a = jaxadv.pgd(mlp.logits_fn, x, y, eps=0.1, loop="host", **kw)
    b = jaxadv.pgd(mlp.logits_fn, x, y, eps=0.1, loop="fori", **kw)
    assert float(jnp.mean(jnp.abs(a - b) < 1e-5)) > 0.99
    pa, pb = jaxadv.predict(mlp.logits_fn, a), jaxadv.predict(mlp.logits_fn, b)
    assert abs(float(jnp.mean(pa == y)) - float(jnp.mean(pb == y))) <= 2 / 64


def test_host_loop_under_jit_raises(problem: Any) -> None:
    params, x, y = problem
    logits_fn = jaxadv.from_apply(sm.tanh_mlp_apply, params)
    with pytest.raises(ValueError, match="loop='host'"):
        jax.jit(lambda x: jaxadv.pgd(logits_fn, x, y, key=jax.random.key(0), eps=0.1, loop="host"))(x)
    with pytest.raises(ValueError, match="loop must be"):
        jaxadv.bim(logits_fn, x, y, eps=0.1, loop="python")  # type: ignore[arg-type]


@pytest.mark.slow
def test_direct_call_runs_the_whole_loop_as_one_program(
    mlp: Any, digits: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jaxadv import engine

    x = jnp.asarray(digits[1].x[:32])
    y = jnp.asarray(digits[1].y[:32])
    host = jaxadv.pgd(mlp.logits_fn, x, y, key=jax.random.key(3), eps=1.0, norm="l2", steps=6, loop="host")

    def no_host_step(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a direct call must not loop on the host")

    monkeypatch.setattr(engine, "_host_step", no_host_step)
    direct = jaxadv.pgd(mlp.logits_fn, x, y, key=jax.random.key(3), eps=1.0, norm="l2", steps=6)
    np.testing.assert_allclose(np.asarray(direct), np.asarray(host), atol=1e-5)
    # One program for every step count: the trip count is an argument, not a constant.
    with count_compiles() as c:
        jaxadv.pgd(
            mlp.logits_fn, x, y, key=jax.random.key(3), eps=1.0, norm="l2", steps=9
        ).block_until_ready()
    assert c.count(COMPILE) == 0, c.events
    with pytest.raises(ValueError, match="loop='compiled'"):
        jax.jit(lambda x: jaxadv.pgd(mlp.logits_fn, x, y, key=jax.random.key(0), eps=0.1, loop="compiled"))(x)
