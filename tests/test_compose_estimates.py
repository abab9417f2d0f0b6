"""The finite-difference gradient source (``compose.finite_difference``): exact on a linear
loss, converging to the true gradient, and a part of composed score-based attacks."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import small_models as sm

import jaxadv
from jaxadv import compose
from jaxadv.compose import loop as compose_loop
from jaxadv.keys import draw_rows, row_keys

SHAPE = (4, 4, 1)
KEY = jax.random.key(0)

# Two classes: the margin z_1 - z_0 = flat(x) (w_1 - w_0) is linear everywhere, with
# gradient w_1 - w_0 for label 0.
_W2 = sm.random_weights(0, features=16, classes=2)
_TRUE = (_W2[:, 1] - _W2[:, 0]).reshape(SHAPE)
_W4 = sm.random_weights(1, features=16, classes=4)


def _linear(w: Any, xi: jax.Array, _key: Any = None) -> jax.Array:
    return xi.reshape(xi.shape[0], -1) @ w


@functools.partial(jax.jit, static_argnames="targeted")
def _estimate(source: Any, w: Any, x: jax.Array, key: jax.Array, targeted: bool = False) -> Any:
    """The source's estimate for the linear model ``w``, labels 0, in one compiled call."""
    labels = jnp.zeros(x.shape[0], jnp.int32)
    return source(functools.partial(_linear, w), x, labels, key=key, targeted=targeted)


def _x(n: int = 3, seed: int = 0) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).uniform(0.2, 0.8, size=(n, *SHAPE)), jnp.float32)


def _cosine(g: np.ndarray, t: np.ndarray) -> np.ndarray:
    g, t = g.reshape(len(g), -1), np.broadcast_to(t.reshape(1, -1), (len(g), t.size))
    return np.sum(g * t, 1) / (np.linalg.norm(g, axis=1) * np.linalg.norm(t, axis=1))


@pytest.mark.slow
@pytest.mark.parametrize("distribution", ["rademacher", "gaussian"])
def test_estimate_of_a_linear_loss_is_the_probes_projection(distribution: str) -> None:
    # For L(x) = g.x, each antithetic pair gives (g.u) u exactly: the estimate is
    # U^T U g / K with the probes U the source draws from its key.
    x, samples = _x(), 8
    source = compose.finite_difference(num_samples=samples, scale=0.01, distribution=distribution)
    out = _estimate(source, _W2, x, KEY)
    shape = (samples, *SHAPE)  # per example, from its own key (jaxadv.keys)
    keys = row_keys(KEY, 3)
    if distribution == "rademacher":
        u = np.asarray(draw_rows(lambda k: jax.random.rademacher(k, shape, dtype=jnp.float32), keys))
    else:
        u = np.asarray(draw_rows(lambda k: jax.random.normal(k, shape, jnp.float32), keys))
    u = u.reshape(3, samples, -1)
    want = np.einsum("bkd,bk->bd", u, u @ _TRUE.reshape(-1)) / samples
    np.testing.assert_allclose(np.asarray(out.grad).reshape(3, -1), want, rtol=1e-3, atol=1e-3)
    assert out.logits is None and bool(jnp.all(out.ok))
    # The loss is the mean over the probes: the loss at x, for a linear loss.
    margin = np.asarray(x).reshape(3, -1) @ _TRUE.reshape(-1)
    np.testing.assert_allclose(np.asarray(out.loss), margin, rtol=1e-4, atol=1e-5)
    if distribution == "rademacher":  # targeted: the descent direction
        down = _estimate(source, _W2, x, KEY, targeted=True)
        np.testing.assert_allclose(np.asarray(down.grad), -np.asarray(out.grad), rtol=1e-6, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("distribution", ["rademacher", "gaussian"])
def test_estimate_converges_to_the_true_gradient_direction(distribution: str) -> None:
    x = _x()
    cos = []
    for samples in (2, 1024):
        source = compose.finite_difference(num_samples=samples, scale=0.01, distribution=distribution)
        cos.append(_cosine(np.asarray(_estimate(source, _W2, x, jax.random.key(samples)).grad), _TRUE))
    # The error of U^T U / K shrinks like sqrt(d / K): d = 16 here.
    assert np.all(cos[0] < cos[1]), cos
    assert np.all(cos[1] > 0.95), cos


def test_probes_are_clipped_into_the_bounds_and_non_finite_scores_are_refused() -> None:
    source = compose.finite_difference(num_samples=4, scale=0.5, bounds=(0.0, 1.0))

    @jax.jit
    def run(x: jax.Array) -> tuple[jax.Array, Any]:
        seen: list[jax.Array] = []

        def spy(xi: jax.Array, _key: Any) -> jax.Array:  # NaN scores for example 0's probes
            seen.append(xi)
            return jnp.where(jnp.arange(xi.shape[0])[:, None] < 8, jnp.nan, _linear(_W4, xi))

        out = source(spy, x, jnp.zeros(x.shape[0], jnp.int32), key=KEY, targeted=False)
        return seen[0], out

    x = _x().at[:, 0, 0, 0].set(0.0)  # on the lower bound; the scale reaches past both bounds
    probes, out = run(x)
    assert probes.shape == (3 * 2 * 4, *SHAPE)
    assert bool(jnp.all((probes >= 0.0) & (probes <= 1.0)))
    assert float(jnp.max(probes)) == 1.0 and float(jnp.min(probes)) == 0.0
    np.testing.assert_array_equal(np.asarray(out.ok), [False, True, True])
    assert bool(jnp.all(out.grad[0] == 0.0)) and bool(jnp.all(jnp.isfinite(out.grad)))


def test_finite_difference_argument_errors() -> None:
    with pytest.raises(ValueError, match="num_samples"):
        compose.finite_difference(num_samples=0)
    with pytest.raises(ValueError, match="distribution"):
        compose.finite_difference(distribution="uniform")
    with pytest.raises(ValueError, match="bounds"):
        compose.finite_difference(bounds=0.0)  # type: ignore[arg-type]


@pytest.mark.slow
def test_composed_score_based_momentum_attack_stays_in_ball_and_bounds() -> None:
    # A scores-only model: its gradient raises, so the attack must only evaluate it.
    def scores(a: np.ndarray) -> np.ndarray:
        return a.reshape(a.shape[0], -1) @ _W4

    black_box = jaxadv.from_callable(scores, num_classes=4)
    attack = compose.Attack(
        compose.finite_difference(num_samples=16, scale=0.01, bounds=(0.0, 1.0)), compose.momentum(1.0)
    )
    eps = 0.3
    x = _x(8, seed=1)
    y = jaxadv.predict(sm.model(_W4), x)
    out = attack(black_box, x, y, key=KEY, eps=eps, steps=10, return_info=True)
    x_adv = np.asarray(out.x_adv)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert np.all(np.asarray(jaxadv.norm_of(out.x_adv - x, "linf")) <= eps * (1 + 1e-5))
    assert np.all((x_adv >= 0.0) & (x_adv <= 1.0))
    np.testing.assert_array_equal(np.asarray(out.success), np.asarray(jaxadv.predict(black_box, x_adv)) != y)
    assert np.mean(np.asarray(out.success)) >= 0.5  # the estimate points the right way
    with pytest.raises(ValueError, match="key is required"):
        attack(black_box, x, y, eps=eps, steps=2)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "distribution", "scale", "norm"),
    [
        ("spsa", "rademacher", 0.01, "linf"),
        ("nes", "gaussian", 0.001, "l1"),
        ("spsa", "rademacher", 0.01, "l2"),
    ],
)
def test_spsa_and_nes_are_the_counted_composed_loop(
    name: str, distribution: str, scale: float, norm: str
) -> None:
    # The named attacks are this configuration: same iterates, successes and query counts.
    model = sm.model(_W4)
    x = _x(8, seed=2)
    eps, samples, queries = {"linf": 0.2, "l2": 0.8, "l1": 2.0}[norm], 4, 100
    steps = (queries - 1) // (2 * samples + 1)
    source = compose.finite_difference(
        num_samples=samples, scale=scale, distribution=distribution, bounds=(0.0, 1.0)
    )
    attack = compose.Attack(source, compose.steepest(), norm=norm, count_queries=True)
    got = attack(model, x, key=KEY, eps=eps, steps=steps, step_size=eps / 4, return_info=True)
    want = getattr(jaxadv, name)(
        model, x, key=KEY, eps=eps, queries=queries, num_samples=samples, norm=norm, return_info=True
    )
    np.testing.assert_array_equal(np.asarray(got.x_adv), np.asarray(want.x_adv))
    np.testing.assert_array_equal(np.asarray(got.success), np.asarray(want.success))
    np.testing.assert_array_equal(np.asarray(got.queries), np.asarray(want.queries))


@pytest.mark.slow
def test_counted_loop_stops_each_example_at_its_first_success() -> None:
    # Momentum on the estimate, counted: an example that succeeds stops moving and
    # spending; one that never does pays 1 + steps * (2 * samples + 1).
    model = sm.model(_W4)
    x = _x(16, seed=3)
    y = jaxadv.predict(model, x)
    samples, steps = 4, 12
    attack = compose.Attack(
        compose.finite_difference(num_samples=samples, bounds=(0.0, 1.0)),
        compose.momentum(1.0),
        count_queries=True,
    )
    out = attack(model, x, y, key=KEY, eps=0.06, step_size=0.02, steps=steps, return_info=True)
    queries, success = np.asarray(out.queries), np.asarray(out.success)
    assert 0 < success.sum() < len(success)  # both kinds of example are present
    np.testing.assert_array_equal(queries[~success], 1 + steps * (2 * samples + 1))
    assert np.all(queries[success] < 1 + steps * (2 * samples + 1))
    assert np.all((queries - 1) % (2 * samples + 1) == 0)
    # The stopped example is the adversarial iterate at which it stopped: running for
    # exactly its own number of steps gives the same point.
    b = int(np.argmin(np.where(success, queries, 10**9)))
    own = (int(queries[b]) - 1) // (2 * samples + 1)
    short = attack(model, x, y, key=KEY, eps=0.06, step_size=0.02, steps=own)
    np.testing.assert_array_equal(np.asarray(short[b]), np.asarray(out.x_adv[b]))
    # An example already misclassified costs the clean query only and is returned as it is.
    wrong = (y + 1) % 4
    out = attack(model, x[:3], wrong[:3], key=KEY, eps=0.3, steps=steps, return_info=True)
    np.testing.assert_array_equal(np.asarray(out.queries), [1, 1, 1])
    np.testing.assert_array_equal(np.asarray(out.x_adv), np.asarray(x[:3]))


def test_counted_loop_refuses_what_it_cannot_count() -> None:
    fd = compose.finite_difference()
    with pytest.raises(ValueError, match="states its model evaluations"):
        compose.Attack(compose.loss_gradient(), count_queries=True)
    with pytest.raises(ValueError, match="excludes keep_best and random_start"):
        compose.Attack(fd, keep_best=True, count_queries=True)
    with pytest.raises(ValueError, match="excludes keep_best and random_start"):
        compose.Attack(fd, random_start=True, count_queries=True)
    counted = compose.Attack(fd, count_queries=True)
    x = _x(2)
    problem = jaxadv.attacks.base.prepare(sm.model(_W4), x, None, bounds=(0.0, 1.0), targeted=False, eps=0.1)
    with pytest.raises(ValueError, match="run_with_queries"):
        compose_loop.run_from(
            counted, problem, x, key=KEY, step_size=0.01, steps=1, targeted=False, loop="auto"
        )
    empty = counted(sm.model(_W4), x[:0], key=KEY, eps=0.1, steps=2, return_info=True)
    assert empty.x_adv.shape == (0, *SHAPE) and empty.queries.shape == (0,)
