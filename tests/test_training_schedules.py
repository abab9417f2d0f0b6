"""eps and step_size as schedules of the training step count, and the monitor's
warning for training stuck at chance accuracy.

A schedule evaluated at ``count`` must give exactly what the constant
``schedule(count)`` gives: the losses and steps see one traced scalar either way.
At eps = 0 PGD returns ``x`` itself, so a PGD-AT step at a count where the
ramp is still at 0 is exactly the clean step: that pins down which count a
step reads.
"""

from __future__ import annotations

import warnings
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from attack_registry import apply, make_batch, make_params

import jaxadv
from jaxadv import training

KEY = jax.random.key(0)


class Tiny(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.Dense(4)(jnp.tanh(nn.Dense(8)(x.reshape(x.shape[0], -1))))


@pytest.fixture(scope="module")
def batch() -> tuple[jax.Array, np.ndarray]:
    x = make_batch()
    f = jaxadv.from_apply(apply, make_params())
    return x, np.asarray(jaxadv.predict(f, x), np.int32)


RAMP = optax.linear_schedule(0.0, 0.2, transition_steps=10)


@pytest.mark.parametrize("loss", ["pgd", "fast", "trades"])
def test_a_loss_with_a_schedule_is_the_loss_at_the_scheduled_value(batch: Any, loss: str) -> None:
    x, y = batch
    f = jaxadv.from_apply(apply, make_params())
    fn = {"pgd": training.pgd_at_loss, "fast": training.fast_at_loss, "trades": training.trades_loss}[loss]
    extra: dict[str, Any] = {} if loss == "fast" else dict(steps=2)
    count = jnp.asarray(4, jnp.int32)
    scheduled = fn(f, x, y, key=KEY, eps=RAMP, step_size=lambda t: RAMP(t) / 2, count=count, **extra)
    constant = fn(f, x, y, key=KEY, eps=RAMP(count), step_size=RAMP(count) / 2, **extra)
    assert float(scheduled) == float(constant)


def test_a_schedule_needs_the_count(batch: Any) -> None:
    x, y = batch
    f = jaxadv.from_apply(apply, make_params())
    with pytest.raises(ValueError, match="eps is a schedule.*pass count="):
        training.pgd_at_loss(f, x, y, key=KEY, eps=RAMP, step_size=0.05, steps=1)


def _linen_state(x: jax.Array, tx: Any, step: int) -> training.TrainState:
    state = training.init_train_state(Tiny().init(jax.random.key(1), x[:1]), tx)
    return state._replace(step=jnp.asarray(step, jnp.int32))


@pytest.mark.parametrize("step", [0, 6])
def test_make_train_step_reads_the_schedule_at_state_step(batch: Any, step: int) -> None:
    x, y = batch
    tx = optax.sgd(0.1)
    pgd = dict(method="pgd", step_size=lambda t: RAMP(t) / 2, steps=2)
    scheduled = training.make_train_step(Tiny(), tx, eps=RAMP, **pgd)
    constant = training.make_train_step(
        Tiny(), tx, method="pgd", eps=float(RAMP(step)), step_size=float(RAMP(step)) / 2, steps=2
    )
    state = _linen_state(x, tx, step)
    s1, m1 = scheduled(state, x, y, KEY)
    s2, m2 = constant(state, x, y, KEY)
    np.testing.assert_allclose(float(m1["loss"]), float(m2["loss"]), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s2.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    if step == 0:  # eps(0) = 0: PGD returns x, so the step is the clean step
        clean = training.make_train_step(Tiny(), tx, method="clean")
        _, m0 = clean(state, x, y, KEY)
        assert float(m1["loss"]) == float(m0["loss"])


def test_make_nnx_train_step_reads_the_schedule_at_the_optimizer_step(batch: Any) -> None:
    from flax import nnx

    x, y = batch

    class TinyNNX(nnx.Module):
        def __init__(self, rngs: nnx.Rngs) -> None:
            self.a = nnx.Linear(64, 8, rngs=rngs)
            self.b = nnx.Linear(8, 4, rngs=rngs)

        def __call__(self, x: jax.Array) -> jax.Array:
            return self.b(jnp.tanh(self.a(x.reshape(x.shape[0], -1))))

    def losses(**hyper: Any) -> list[float]:
        module = TinyNNX(nnx.Rngs(0))
        optimizer = nnx.Optimizer(module, optax.sgd(0.1), wrt=nnx.Param)
        step = training.make_nnx_train_step(**hyper)
        return [float(step(module, optimizer, x, y, KEY)["loss"]) for _ in range(2)]

    # Zero at the first update, 0.2 from the second on.
    jump = lambda t: jnp.where(t < 1, 0.0, 0.2)  # noqa: E731
    scheduled = losses(method="pgd", eps=jump, step_size=0.1, steps=2)
    clean = losses(method="clean")
    assert scheduled[0] == clean[0]  # eps(0) = 0: the clean step, the same update
    assert scheduled[1] > clean[1]  # eps(1) = 0.2: the adversarial loss is higher


def test_free_train_step_with_a_constant_schedule_is_the_float_step(batch: Any) -> None:
    x, y = batch
    tx = optax.sgd(0.1)
    state = _linen_state(x, tx, 3)
    delta = jnp.zeros_like(x)
    a = training.make_free_train_step(Tiny(), tx, eps=optax.constant_schedule(0.1), replays=2)
    b = training.make_free_train_step(Tiny(), tx, eps=0.1, replays=2)
    sa, da, ma = a(state, delta, x, y, KEY)
    sb, db, mb = b(state, delta, x, y, KEY)
    np.testing.assert_allclose(np.asarray(da), np.asarray(db), atol=1e-7)
    np.testing.assert_allclose(float(ma["loss"]), float(mb["loss"]), rtol=1e-6)


@pytest.mark.parametrize(
    "eps, message",
    [
        (lambda t: -0.1 + 0.0 * t, r"eps\(0\) must be >= 0"),
        (lambda t: jnp.zeros(2) + t, "schedule of scalars"),
        (lambda: 0.1, "not a schedule of the step count"),
    ],
)
def test_a_bad_schedule_is_refused_when_the_step_is_built(eps: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        training.make_train_step(Tiny(), optax.sgd(0.1), method="pgd", eps=eps, step_size=0.05, steps=1)


# --- training stuck at chance --------------------------------------------------------


def test_the_monitor_warns_once_when_clean_accuracy_sits_at_chance() -> None:
    state = training.MonitorState()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        state = training.update_monitor(state, 0.1, step=0, clean_accuracy=0.12, chance=0.11)
    assert state.checks_at_chance == 1 and not state.stalled  # one check: maybe before training
    with pytest.warns(training.ChanceAccuracyWarning, match="sat at chance"):
        state = training.update_monitor(state, 0.1, step=1, clean_accuracy=0.13, chance=0.11)
    assert state.stalled and state.checks_at_chance == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once only
        state = training.update_monitor(state, 0.1, step=2, clean_accuracy=0.12, chance=0.11)
    state = training.update_monitor(state, 0.5, step=3, clean_accuracy=0.9, chance=0.11)
    assert state.checks_at_chance == 0 and state.stalled  # stays flagged, count restarts


def test_the_monitor_does_not_warn_for_a_model_that_learns() -> None:
    state = training.MonitorState()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for step, clean in enumerate([0.1, 0.6, 0.8, 0.9]):
            state = training.update_monitor(state, 0.3, step=step, clean_accuracy=clean, chance=0.1)
    assert not state.stalled


def test_robust_accuracy_monitor_measures_chance_on_its_batch(batch: Any) -> None:
    """A model that always predicts class 0, on a batch whose most frequent label is 0,
    has exactly chance accuracy; two checks stall the run."""
    x, _ = batch
    y = np.asarray([0, 0, 0, 1, 2], np.int32)
    constant = jaxadv.from_apply(
        lambda p, v: jnp.zeros((v.shape[0], 4)) + p, jnp.asarray([1.0, 0.0, 0.0, 0.0])
    )
    state = None
    with pytest.warns(training.ChanceAccuracyWarning):
        for step in range(2):
            state = training.robust_accuracy_monitor(
                constant, x, y, state, step=step, key=KEY, eps=0.1, steps=1
            )
    assert state is not None
    assert state.chance == pytest.approx(0.6) and state.last_clean_accuracy == pytest.approx(0.6)
    assert state.stalled
