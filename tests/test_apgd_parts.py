"""APGD's parts of :mod:`jaxadv.compose`: the heavy-ball rule, the sparse L1 step, the
sparsity schedule, outcomes and their merge, and the restarts wrapper.

The parts are checked without a model against NumPy replays of the papers' rules
(Croce & Hein 2020, 2021); the assembled configuration is checked against
:func:`jaxadv.apgd` on the digits MLP, where it must return the same arrays.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxadv
from jaxadv import compose

SHAPE = (4, 3, 3, 1)


def _clip(v: Any) -> Any:
    """A stand-in projection: the box [0, 1]."""
    return jnp.clip(v, 0.0, 1.0)


def test_heavy_ball_replays_apgd_momentum() -> None:
    rng = np.random.default_rng(0)
    rule = compose.heavy_ball(0.75)
    x = rng.uniform(0.2, 0.8, SHAPE).astype(np.float32)
    state = rule.init(jnp.asarray(x))
    x_t, previous = x.copy(), x.copy()
    for step in range(4):
        z = np.clip(x_t + rng.normal(0, 0.3, SHAPE), 0, 1).astype(np.float32)
        got, state = rule.settle(state, jnp.asarray(x_t), jnp.asarray(z), _clip)
        a = 1.0 if step == 0 else 0.75  # the first step has no previous move
        want = np.clip(x_t + a * (z - x_t) + (1 - a) * (x_t - previous), 0, 1)
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(np.asarray(state.previous), x_t)
        assert bool(jnp.all(state.moved))
        previous, x_t = x_t, np.asarray(got)


def test_heavy_ball_steps_along_the_steepest_direction_and_refuses_bad_alpha() -> None:
    g = jnp.asarray(np.random.default_rng(1).normal(size=SHAPE), jnp.float32)
    ctx = compose.Context(jnp.zeros(SHAPE), jax.random.key(0), jnp.asarray(0.1), "linf", 0.05, lambda p, k: p)
    d, _ = compose.heavy_ball().update(g, compose.heavy_ball().init(jnp.zeros(SHAPE)), ctx)
    np.testing.assert_array_equal(np.asarray(d), np.sign(np.asarray(g)))
    for bad in (float("nan"), 1.5, -0.1):
        with pytest.raises(ValueError, match="alpha"):
            compose.heavy_ball(bad)


def _np_sparse_sign(g: np.ndarray, fraction: np.ndarray) -> np.ndarray:
    flat = g.reshape(len(g), -1)
    n = flat.shape[1]
    out = np.zeros_like(flat, dtype=np.float64)
    for row, (v, k) in enumerate(zip(flat, fraction, strict=True)):
        idx = int(np.clip(np.floor((1 - k) * n), 0, n - 1))
        threshold = np.sort(np.abs(v))[idx]
        s = np.where(np.abs(v) >= threshold, np.sign(v), 0.0)
        out[row] = s / (np.abs(s).sum() + 1e-10)
    return out.reshape(g.shape)


@pytest.mark.parametrize("fraction", [[0.2, 0.2, 0.2, 0.2], [0.05, 0.5, 1.0, 0.0]])
def test_sparse_sign_moves_the_top_fraction_with_unit_l1_norm(fraction: list[float]) -> None:
    g = np.random.default_rng(2).normal(size=SHAPE).astype(np.float32)
    g[3] = 0.0  # a zero gradient: a zero direction, not NaN
    k = np.asarray(fraction, np.float32)
    got = np.asarray(compose.sparse_sign(jnp.asarray(g), jnp.asarray(k)))
    np.testing.assert_allclose(got, _np_sparse_sign(g, k), rtol=1e-6)
    norms = np.abs(got).reshape(len(g), -1).sum(1)
    np.testing.assert_allclose(norms[:3], 1.0, rtol=1e-5)
    assert norms[3] == 0.0
    # The rule reads its fraction from the context (per example from the schedule).
    ctx = compose.Context(jnp.zeros(SHAPE), jax.random.key(0), jnp.asarray(1.0), "l1", jnp.asarray(k), None)
    d, _ = compose.sparse_steepest().update(jnp.asarray(g), (), ctx)  # type: ignore[arg-type]
    np.testing.assert_array_equal(np.asarray(d), got)


def _np_sparsity_rule(
    sparsities: np.ndarray, eps: float, n: int, steps: int
) -> tuple[list[float], list[float], list[bool]]:
    """L1-APGD's schedule written out for one example: the step size, the fraction and
    the restarts after each step, given the sparsity of the best point after it."""
    k = max(int(0.04 * steps), 1)
    eta, fraction, reference = eps, 0.2, float(n)
    etas, fractions, restarts = [], [], []
    for i in range(steps):
        restart = False
        if (i + 1) % k == 0:
            s = sparsities[i]
            restart = s / reference < 0.95
            eta = min(max(eps if restart else eta / 1.5, eps / 10), eps)
            fraction, reference = s / n / 1.5, s
        etas.append(eta)
        fractions.append(fraction)
        restarts.append(bool(restart))
    return etas, fractions, restarts


def test_sparsity_checkpoints_follow_l1_apgd_rule() -> None:
    steps, eps = 60, 2.0
    rng = np.random.default_rng(3)
    x = jnp.zeros((3, 10, 10, 1))
    n = 100
    # Best points of shrinking, stalling and noisy sparsity, one per example.
    counts = np.stack(
        [
            np.linspace(100, 5, steps).round(),
            np.full(steps, 40.0),
            rng.integers(10, 100, steps).astype(float),
        ]
    )
    part = compose.sparsity_checkpoints()
    state = part.init(jnp.full((3,), eps), steps, start=x, x=x)
    np.testing.assert_allclose(np.asarray(state.l1_sparsity), 0.2)

    def best_with(count: np.ndarray) -> compose.BestLoss:
        flat = np.zeros((3, n), np.float32)
        for row, c in enumerate(count.astype(int)):
            flat[row, :c] = 0.01
        return compose.BestLoss(jnp.asarray(flat.reshape(x.shape)), jnp.zeros(x.shape), jnp.zeros(3))

    update = jax.jit(part.update)
    got: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for t in range(steps):
        state, restart = update(
            state, compose.Progress(jnp.asarray(t), jnp.zeros(3), best_with(counts[:, t]), x, eps)
        )
        got.append((np.asarray(state.eta), np.asarray(state.l1_sparsity), np.asarray(restart)))
    for row in range(3):
        etas, fractions, restarts = _np_sparsity_rule(counts[row], eps, n, steps)
        np.testing.assert_allclose([g[0][row] for g in got], etas, rtol=1e-5, err_msg=f"row {row}")
        np.testing.assert_allclose([g[1][row] for g in got], fractions, rtol=1e-5, err_msg=f"row {row}")
        assert [bool(g[2][row]) for g in got] == restarts
    # The shrinking example restarts again and again; the stalled one only at the first
    # checkpoint (40 of 100 coordinates is sparser than the reference n), never after.
    assert sum(bool(g[2][0]) for g in got) > 1 and sum(bool(g[2][1]) for g in got) == 1


def test_sparsity_checkpoints_warm_start_reads_the_start_and_needs_it() -> None:
    x = jnp.zeros((2, 50))
    start = x.at[0, :10].set(0.1).at[1, :30].set(0.1)
    state = compose.sparsity_checkpoints(warm_start=True).init(jnp.ones(2), 20, start=start, x=x)
    np.testing.assert_allclose(np.asarray(state.sparsity_at_check), [10, 30])
    np.testing.assert_allclose(np.asarray(state.l1_sparsity), [10 / 50 / 1.5, 30 / 50 / 1.5], rtol=1e-6)
    with pytest.raises(ValueError, match="start point"):
        compose.sparsity_checkpoints().init(jnp.ones(2), 20)


def test_merge_keeps_successes_and_otherwise_the_higher_objective() -> None:
    x = jnp.zeros((5, 2))
    prior = compose.Outcome(
        x + 1, jnp.asarray([True, False, False, False, True]), jnp.asarray([0.0, 1.0, 1.0, -jnp.inf, 5.0])
    )
    new = compose.Outcome(
        x + 2, jnp.asarray([True, True, False, False, False]), jnp.asarray([9.0, 0.0, 2.0, -jnp.inf, 9.0])
    )
    out = compose.merge(prior, new)
    # An earlier success wins; a new success replaces a failure; between failures the
    # higher objective wins and a tie keeps the earlier point.
    np.testing.assert_array_equal(np.asarray(out.x[:, 0]), [1, 2, 2, 1, 1])
    np.testing.assert_array_equal(np.asarray(out.found), [True, True, False, False, True])
    np.testing.assert_array_equal(np.asarray(out.objective), [0.0, 1.0, 2.0, -np.inf, 5.0])
    empty = compose.no_outcome(x)
    assert not bool(jnp.any(empty.found)) and bool(jnp.all(empty.objective == -jnp.inf))


def _apgd_linf(early_stop: bool = True, norm: str = "linf", loss: str = "ce") -> compose.Attack:
    return compose.Attack(
        compose.loss_gradient(loss),
        compose.heavy_ball(0.75),
        norm=norm,  # type: ignore[arg-type]
        schedule=compose.checkpoint_halving(0.75),
        random_start=True,
        keep_best=True,
        early_stop=early_stop,
    )


@pytest.fixture(scope="module")
def batch(digits: Any) -> tuple[Any, Any]:
    return digits[1].x[:48], digits[1].y[:48]


@pytest.mark.parametrize("early_stop", [True, False])
def test_restarts_of_the_configuration_are_apgd(mlp: Any, batch: Any, early_stop: bool) -> None:
    x, y = batch
    key, eps = jax.random.key(4), 0.08
    attack = compose.restarts(_apgd_linf(early_stop), num_restarts=2)
    ours = attack(mlp.logits_fn, x, y, key=key, eps=eps, steps=12, step_size=2 * eps)
    named = jaxadv.apgd(
        mlp.logits_fn, x, y, key=key, eps=eps, steps=12, num_restarts=2, early_stop=early_stop
    )
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(named))
    fooled = np.argmax(np.asarray(mlp.logits_fn(named)), -1) != np.asarray(y)
    assert 0 < fooled.sum() < len(y)  # some robust examples: their highest-loss points are compared too


def test_restarts_keep_the_same_trace_as_apgd(mlp: Any, batch: Any) -> None:
    x, y = batch
    key, eps = jax.random.key(4), 0.08
    attack = dataclasses.replace(_apgd_linf(False), trace=True)
    ours = compose.restarts(attack, num_restarts=2)(
        mlp.logits_fn, x, y, key=key, eps=eps, steps=12, step_size=2 * eps, return_info=True
    )
    named = jaxadv.apgd(
        mlp.logits_fn, x, y, key=key, eps=eps, steps=12, num_restarts=2, early_stop=False, return_info=True,
        trace=True,
    )  # fmt: skip
    for a, b in zip(ours.trace, named.trace, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.asarray(ours.trace.ever), np.asarray(named.success))


@pytest.mark.parametrize(
    ("norm", "eps", "loss", "targeted"),
    [("l2", 0.8, "ce", False), ("linf", 0.1, "dlr", False), ("linf", 0.1, "ce", True)],
)
def test_l2_dlr_and_targeted_configurations_are_apgd(
    mlp: Any, batch: Any, norm: str, eps: float, loss: str, targeted: bool
) -> None:
    x, y = batch
    y = (np.asarray(y) + 1) % 10 if targeted else y  # a target class for each example
    run: dict[str, Any] = dict(key=jax.random.key(9), eps=eps, steps=10, targeted=targeted)
    ours = compose.restarts(_apgd_linf(False, norm, loss), num_restarts=2)(
        mlp.logits_fn, x, y, step_size=2 * eps, **run
    )
    named = jaxadv.apgd(mlp.logits_fn, x, y, norm=norm, loss=loss, num_restarts=2, **run)  # type: ignore[arg-type]
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(named))
    assert np.abs(np.asarray(named) - np.asarray(x)).max() > 0


def test_l1_configuration_is_l1_apgd(mlp: Any, batch: Any) -> None:
    x, y = batch
    key, eps = jax.random.key(5), 2.0
    attack = compose.Attack(
        compose.loss_gradient(),
        compose.sparse_steepest(),
        norm="l1",
        schedule=compose.sparsity_checkpoints(),
        random_start=True,
        keep_best=True,
        early_stop=True,
    )
    ours = compose.restarts(attack, num_restarts=1)(
        mlp.logits_fn, x, y, key=key, eps=eps, steps=25, step_size=eps
    )
    named = jaxadv.apgd(mlp.logits_fn, x, y, key=key, eps=eps, steps=25, norm="l1", early_stop=True)
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(named))
    l1 = np.abs(np.asarray(named) - np.asarray(x)).reshape(len(x), -1).sum(1)
    assert np.all(l1 <= eps * (1 + 1e-5)) and l1.max() > 0.5 * eps


def test_restarts_under_jit_equal_eager_and_a_restart_never_loses_a_success(mlp: Any, batch: Any) -> None:
    x, y = batch
    key, eps = jax.random.key(6), 0.05
    one = compose.restarts(_apgd_linf(), num_restarts=1)
    three = compose.restarts(_apgd_linf(), num_restarts=3)
    run = dict(key=key, eps=eps, steps=8, step_size=2 * eps)
    eager = three(mlp.logits_fn, x, y, return_info=True, **run)
    jitted = jax.jit(lambda v: three(mlp.logits_fn, v, y, **run))(x)
    # One program instead of several: equal up to the rounding of fused arithmetic.
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager.x_adv), rtol=0, atol=1e-6)
    first = one(mlp.logits_fn, x, y, return_info=True, **run)
    assert bool(jnp.all(eager.success | ~first.success))
    assert int(eager.success.sum()) >= int(first.success.sum())


def test_restarts_refuse_what_they_cannot_merge(mlp: Any, batch: Any) -> None:
    with pytest.raises(TypeError, match="compose.Attack"):
        compose.restarts(jaxadv.pgd, num_restarts=2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="step-size part that restarts"):
        compose.restarts(compose.Attack(random_start=True, keep_best=True), num_restarts=2)
    with pytest.raises(ValueError, match="random_start"):
        compose.restarts(
            compose.Attack(schedule=compose.checkpoint_halving(), keep_best=True), num_restarts=2
        )
    with pytest.raises(ValueError, match="num_restarts"):
        compose.restarts(_apgd_linf(), num_restarts=0)
    x, y = batch
    with pytest.raises(ValueError, match="key is required"):
        compose.restarts(_apgd_linf(), num_restarts=1)(mlp.logits_fn, x, y, key=None, eps=0.1)  # type: ignore[arg-type]


def test_restarts_on_bad_inputs_refuse_or_return_x() -> None:
    attack = compose.restarts(_apgd_linf(), num_restarts=2)
    f = lambda v: v.reshape(len(v), -1)[:, :3]  # noqa: E731
    y, key = jnp.zeros(2, jnp.int32), jax.random.key(0)
    assert attack(f, jnp.zeros((0, 4)), jnp.zeros(0, jnp.int32), key=key, eps=0.1).shape == (0, 4)
    with pytest.raises(ValueError, match="NaN"):
        attack(f, jnp.full((2, 4), jnp.nan), y, key=key, eps=0.1)
    with pytest.raises(ValueError, match="eps"):
        attack(f, jnp.zeros((2, 4)), y, key=key, eps=float("nan"))
    # A model whose logits are never finite: nothing to attack, x comes back unchanged.
    x = jnp.full((2, 4), 0.5)
    out = attack(lambda v: jnp.full((len(v), 3), jnp.inf), x, y, key=key, eps=0.1)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(x))


def test_configuration_keeps_the_highest_loss_point_of_an_unfooled_example(mlp: Any, batch: Any) -> None:
    x, y = batch
    attack = _apgd_linf()
    p = jaxadv.attacks.base.prepare(mlp.logits_fn, x, y, bounds=(0.0, 1.0), eps=0.01)
    from jaxadv.compose.loop import run_books

    out, best = run_books(
        attack, p, attack.start(p, jax.random.key(7)), key=jax.random.key(8),
        step_size=jnp.float32(0.02), steps=6, targeted=False, loop="auto",
    )  # fmt: skip
    missed = ~np.asarray(out.found)
    assert missed.any()
    np.testing.assert_array_equal(np.asarray(out.x)[missed], np.asarray(best.x)[missed])
    # Its objective is the loss there: re-evaluating the returned point gives it.
    loss = np.asarray(jaxadv.cross_entropy(mlp.logits_fn(out.x), jax.nn.one_hot(y, 10)))
    np.testing.assert_allclose(loss[missed], np.asarray(out.objective)[missed], rtol=1e-4)
    assert math.isfinite(float(np.min(np.asarray(out.objective))))
