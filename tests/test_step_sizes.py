"""Step-size parts of :mod:`jaxadv.compose.step_sizes`: checked without a model on
objective sequences against a direct transcription of APGD's rule, then in the
composed loop."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxadv import compose
from jaxadv.compose.step_sizes import checkpoint_schedule


def _reference(objectives: np.ndarray, eta0: float, rho: float) -> tuple[list[float], list[bool]]:
    """APGD's halving rule written out for one example: the step size after each
    iterate and whether it restarted there. ``objectives[0]`` is the start point."""
    steps = len(objectives) - 1
    is_check, window = checkpoint_schedule(steps)
    eta, rises, prev = eta0, 0, objectives[0]
    best = best_at_check = objectives[0]
    halved_last = True
    etas, restarts = [], []
    for t in range(steps):
        obj = objectives[t + 1]
        best = max(best, obj)
        rises += obj > prev
        prev = obj
        halve = False
        if is_check[t]:
            halve = rises <= window[t] * rho or (not halved_last and best_at_check >= best)
            eta = eta / 2 if halve else eta
            rises, best_at_check, halved_last = 0, best, halve
        etas.append(eta)
        restarts.append(halve)
    return etas, restarts


def _progress(t: int, objective: Any, best: Any) -> compose.Progress:
    """A Progress whose best record holds only the objective (what halving reads)."""
    best = jnp.asarray(best)
    record = compose.BestLoss(jnp.zeros((best.shape[0], 1)), jnp.zeros((best.shape[0], 1)), best)
    return compose.Progress(
        jnp.asarray(t), jnp.asarray(objective), record, jnp.zeros((best.shape[0], 1)), 0.1
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_checkpoint_halving_follows_apgd_rule(seed: int) -> None:
    rng = np.random.default_rng(seed)
    steps, batch, rho = 40, 6, 0.75
    # Rows: flat, rising, falling, and random walks (some stall, some climb).
    walk = np.cumsum(rng.normal(0.0, 1.0, (batch - 3, steps + 1)), axis=1)
    flat = np.zeros((1, steps + 1))
    rising = np.arange(steps + 1, dtype=float)[None]
    falling = -rising
    objectives = np.concatenate([flat, rising, falling, walk]).astype(np.float32)
    part = compose.checkpoint_halving(rho)
    state = part.init(jnp.full((batch,), 0.5), steps)
    best = jnp.asarray(objectives[:, 0])
    state, restart = part.update(state, _progress(-1, best, best))
    assert not bool(jnp.any(restart))
    update = jax.jit(part.update)
    got_eta, got_restart = [], []
    for t in range(steps):
        obj = jnp.asarray(objectives[:, t + 1])
        best = jnp.maximum(best, obj)
        state, restart = update(state, _progress(t, obj, best))
        got_eta.append(np.asarray(state.eta))
        got_restart.append(np.asarray(restart))
    for row in range(batch):
        etas, restarts = _reference(objectives[row].astype(np.float64), 0.5, rho)
        np.testing.assert_allclose([e[row] for e in got_eta], etas, err_msg=f"row {row}")
        assert [bool(r[row]) for r in got_restart] == restarts
    # A flat objective halves at every checkpoint; a steadily rising one never does.
    checks = int(checkpoint_schedule(steps)[0].sum())
    assert float(state.eta[0]) == 0.5 * 2.0**-checks
    assert float(state.eta[1]) == 0.5


def test_fixed_never_restarts_and_keeps_the_step() -> None:
    part = compose.fixed()
    state = part.init(jnp.asarray([0.1, 0.2]), 10)
    state, restart = part.update(state, _progress(3, jnp.zeros(2), jnp.zeros(2)))
    np.testing.assert_array_equal(np.asarray(state.eta), np.float32([0.1, 0.2]))
    assert not bool(jnp.any(restart))


def test_record_loss_keeps_the_highest_objective() -> None:
    x = jnp.zeros((3, 2))
    best = compose.init_best_loss(x)
    best = compose.record_loss(best, x + 1, x + 10, jnp.asarray([1.0, -jnp.inf, 2.0]))
    best = compose.record_loss(best, x + 2, x + 20, jnp.asarray([0.5, 3.0, 2.0]))  # a tie keeps the older
    np.testing.assert_array_equal(np.asarray(best.x[:, 0]), [1.0, 2.0, 1.0])
    np.testing.assert_array_equal(np.asarray(best.grad[:, 0]), [10.0, 20.0, 10.0])
    np.testing.assert_array_equal(np.asarray(best.objective), [1.0, 3.0, 2.0])


def _accuracy(model: Any, x_adv: Any, y: np.ndarray) -> float:
    return float(np.mean(np.argmax(np.asarray(model(x_adv)), -1) == y))


def test_halving_in_the_composed_loop(mlp: Any, digits: Any) -> None:
    x, y = digits[1].x[:200], digits[1].y[:200]
    eps = 1.0

    def run(schedule: Any) -> Any:
        attack = compose.Attack(compose.loss_gradient(), compose.steepest(), norm="l2", schedule=schedule)
        return attack(mlp.logits_fn, x, y, eps=eps, steps=20, step_size=2 * eps)

    fixed, halving = run(compose.fixed()), run(compose.checkpoint_halving())
    # The default schedule is the fixed one: the same program's numbers.
    default = compose.Attack(compose.loss_gradient(), compose.steepest(), norm="l2")
    np.testing.assert_array_equal(
        np.asarray(default(mlp.logits_fn, x, y, eps=eps, steps=20, step_size=2 * eps)), np.asarray(fixed)
    )
    # A step twice the radius overshoots; halving it at the checkpoints finds more.
    assert _accuracy(mlp.logits_fn, halving, y) < _accuracy(mlp.logits_fn, fixed, y)
    norms = np.sqrt(((np.asarray(halving) - x) ** 2).reshape(len(x), -1).sum(1))
    assert np.all(norms <= eps * (1 + 1e-5))
    assert float(np.min(halving)) >= 0.0 and float(np.max(halving)) <= 1.0


def test_bad_schedules_are_refused() -> None:
    with pytest.raises(ValueError, match="look-ahead"):
        compose.Attack(rule=compose.nesterov(1.0), schedule=compose.checkpoint_halving())
    with pytest.raises(ValueError, match="count_queries"):
        compose.Attack(compose.finite_difference(), schedule=compose.checkpoint_halving(), count_queries=True)
    attack = compose.Attack(schedule=compose.checkpoint_halving(1.5))
    with pytest.raises(ValueError, match="rho must be in"):
        attack(lambda v: v.reshape(len(v), -1)[:, :3], jnp.zeros((2, 4)), jnp.zeros(2, jnp.int32), eps=0.1)
    attack = compose.Attack(schedule=compose.checkpoint_halving(float("nan")))
    with pytest.raises(ValueError, match="rho"):
        attack(lambda v: v.reshape(len(v), -1)[:, :3], jnp.zeros((2, 4)), jnp.zeros(2, jnp.int32), eps=0.1)


def test_objective_is_the_loss_for_the_attacker_and_minus_inf_where_not_finite() -> None:
    loss = jnp.asarray([1.0, -2.0, jnp.nan, 3.0, jnp.inf])
    ok = jnp.asarray([True, True, True, False, True])
    np.testing.assert_array_equal(
        np.asarray(compose.objective(loss, ok, False)), [1.0, -2.0, -np.inf, -np.inf, -np.inf]
    )
    np.testing.assert_array_equal(
        np.asarray(compose.objective(loss, ok, True)), [-1.0, 2.0, -np.inf, -np.inf, -np.inf]
    )
