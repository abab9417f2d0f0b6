"""The parts of :mod:`jaxadv.compose` on their own, without a model.

In the manner of optax's transformation tests: each update rule is fed a fixed
sequence of synthetic gradients and its directions and state are compared with
a NumPy replay of the paper's formula; the bookkeeping (:func:`record`,
:func:`select`, :func:`charge`) runs on hand-made logits; :class:`EOT` wraps a
stub gradient source. The assembled attacks are checked on models in
``test_compose.py``, ``test_momentum.py`` and ``test_transfer.py``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxadv import compose

SHAPE = (3, 2, 2, 1)  # a batch of 3 tiny images


def _grads(steps: int, seed: int = 0) -> np.ndarray:
    """``[steps, *SHAPE]`` float32 gradients of mixed signs and magnitudes."""
    g = np.random.default_rng(seed).normal(size=(steps, *SHAPE)).astype(np.float32)
    g[:, 1] *= 1e-3  # one example with a tiny gradient: the L1 normalisation matters
    return g


def _ctx(norm: str, x_t: Any = None, grad_at: Any = None, eps: float = 0.1) -> compose.Context:
    x_t = jnp.zeros(SHAPE) if x_t is None else x_t
    return compose.Context(
        x_t, jax.random.key(0), jnp.asarray(eps), norm, 0.25, grad_at or (lambda point, key: point)
    )


def _np_direction(v: np.ndarray, norm: str) -> np.ndarray:
    flat = v.reshape(len(v), -1).astype(np.float64)
    if norm == "linf":
        return np.sign(v)
    return (flat / np.linalg.norm(flat, axis=1, keepdims=True)).reshape(v.shape)


def _unit_l1(g: np.ndarray) -> np.ndarray:
    flat = g.reshape(len(g), -1).astype(np.float64)
    return (flat / np.abs(flat).sum(1, keepdims=True)).reshape(g.shape)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_steepest_is_the_unit_direction_and_keeps_no_state(norm: str) -> None:
    rule = compose.steepest()
    state = rule.init(jnp.zeros(SHAPE))
    x_t = jnp.ones(SHAPE)
    assert rule.lookahead(state, x_t, jnp.asarray(0.5)) is x_t
    for g in _grads(3):
        d, state = rule.update(jnp.asarray(g), state, _ctx(norm))
        np.testing.assert_allclose(np.asarray(d), _np_direction(g, norm), rtol=1e-6)
    assert state == ()


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("decay", [0.0, 0.5, 1.0])
def test_momentum_replays_the_mi_fgsm_recursion(norm: str, decay: float) -> None:
    """v <- mu v + g / ||g||_1, d = d_p(v), over four steps of synthetic gradients."""
    rule = compose.momentum(decay)
    state = rule.init(jnp.zeros(SHAPE))
    v = np.zeros(SHAPE)
    for g in _grads(4):
        d, state = rule.update(jnp.asarray(g), state, _ctx(norm))
        v = decay * v + _unit_l1(g)
        np.testing.assert_allclose(np.asarray(state), v, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(np.asarray(d), _np_direction(v, norm), rtol=1e-5, atol=1e-7)


def test_nesterov_looks_ahead_along_the_velocity_and_updates_like_momentum() -> None:
    """Look-ahead x_t + alpha * mu * n * v (n coordinates per example), per-example alpha."""
    decay, n = 0.7, int(np.prod(SHAPE[1:]))
    nesterov, momentum = compose.nesterov(decay), compose.momentum(decay)
    s_nes, s_mom = nesterov.init(jnp.zeros(SHAPE)), momentum.init(jnp.zeros(SHAPE))
    x_t = jnp.asarray(np.random.default_rng(1).uniform(size=SHAPE), jnp.float32)
    alpha = jnp.asarray([0.1, 0.2, 0.0])
    np.testing.assert_array_equal(np.asarray(nesterov.lookahead(s_nes, x_t, alpha)), np.asarray(x_t))
    for g in _grads(3, seed=2):
        d_nes, s_nes = nesterov.update(jnp.asarray(g), s_nes, _ctx("linf"))
        d_mom, s_mom = momentum.update(jnp.asarray(g), s_mom, _ctx("linf"))
        np.testing.assert_array_equal(np.asarray(d_nes), np.asarray(d_mom))
        np.testing.assert_array_equal(np.asarray(s_nes), np.asarray(s_mom))
        want = np.asarray(x_t) + np.asarray(alpha)[:, None, None, None] * decay * n * np.asarray(s_nes)
        np.testing.assert_allclose(np.asarray(nesterov.lookahead(s_nes, x_t, alpha)), want, rtol=1e-5)


def test_variance_tuning_replays_the_vmi_fgsm_recursion() -> None:
    """With neighbour gradients equal to a constant c, nu = c - g exactly, and the next
    velocity is mu v + (g' + nu) / ||g' + nu||_1."""
    decay = 0.9
    c = _grads(1, seed=5)[0]
    rule = compose.variance_tuning(decay, neighborhood=1.5, num_neighbors=4)
    state = rule.init(jnp.zeros(SHAPE))
    ctx = _ctx("linf", grad_at=lambda point, key: jnp.asarray(c))
    v, nu = np.zeros(SHAPE), np.zeros(SHAPE)
    for g in _grads(3, seed=6):
        d, state = rule.update(jnp.asarray(g), state, ctx)
        v = decay * v + _unit_l1(g + nu)
        nu = c - g
        np.testing.assert_allclose(np.asarray(state.velocity), v, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(np.asarray(state.variance), nu, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(np.asarray(d), np.sign(v))


def test_variance_tuning_samples_neighbours_within_neighborhood_eps_per_example() -> None:
    """grad_at(point) = point: the mean neighbour is x_t plus offsets inside neighborhood * eps,
    with each example's own eps; no offset reaches beyond it."""
    seen: list[Any] = []

    def grad_at(point: Any, key: Any) -> Any:
        seen.append(point)
        return point

    rule = compose.variance_tuning(1.0, neighborhood=2.0, num_neighbors=3)
    x_t = jnp.full(SHAPE, 0.5)
    eps = jnp.asarray([0.01, 0.1, 0.0])
    _, state = rule.update(jnp.zeros(SHAPE), rule.init(x_t), _ctx("linf", x_t, grad_at, eps=eps))  # type: ignore[arg-type]
    offsets = np.asarray(state.variance) - 0.5  # mean neighbour - x_t (the gradient is 0)
    limit = 2.0 * np.asarray(eps)[:, None, None, None]
    assert np.all(np.abs(offsets) <= limit + 1e-7)
    assert np.all(offsets[2] == 0) and np.abs(offsets[1]).max() > np.abs(offsets[0]).max() > 0


# --- bookkeeping -------------------------------------------------------------------------


def _logits(pred: list[int], classes: int = 3) -> jax.Array:
    """Logits whose argmax is ``pred`` (NaN rows where ``pred`` is -1)."""
    z = np.zeros((len(pred), classes), np.float32)
    for i, p in enumerate(pred):
        if p < 0:
            z[i] = np.nan
        else:
            z[i, p] = 1.0
    return jnp.asarray(z)


def test_record_keeps_the_last_adversarial_iterate_per_example() -> None:
    labels = jnp.asarray([0, 1, 2, 0])
    x0 = jnp.zeros((4, 2))
    best = compose.init_best(x0)
    assert not bool(jnp.any(best.found))
    # Step 1: examples 0 and 3 fooled (3 by a NaN row: never a success).
    best, hit = compose.record(best, x0 + 1, _logits([1, 1, 2, -1]), labels, targeted=False)
    np.testing.assert_array_equal(np.asarray(hit), [True, False, False, False])
    # Step 2: example 0 no longer fooled, example 1 fooled.
    best, hit = compose.record(best, x0 + 2, _logits([0, 2, 2, 1]), labels, targeted=False)
    np.testing.assert_array_equal(np.asarray(hit), [False, True, False, True])
    np.testing.assert_array_equal(np.asarray(best.found), [True, True, False, True])
    np.testing.assert_array_equal(np.asarray(best.x_adv)[:, 0], [1, 2, 0, 2])
    # Targeted: a hit is reaching the label.
    _, hit = compose.record(compose.init_best(x0), x0, _logits([0, 0, 2, 1]), labels, targeted=True)
    np.testing.assert_array_equal(np.asarray(hit), [True, False, True, False])


def test_select_never_loses_a_success_and_never_returns_a_non_finite_point() -> None:
    labels = jnp.asarray([0, 0, 0, 0])
    x = jnp.zeros((4, 2))
    best = compose.Best(jnp.full((4, 2), 7.0), jnp.asarray([True, True, False, False]))
    x_t = jnp.full((4, 2), 3.0)
    # Now: example 0 fooled, 1 not (recorded earlier), 2 not (nothing recorded), 3 NaN.
    out = compose.select(best, x_t, _logits([1, 0, 0, -1]), x, labels, targeted=False)
    np.testing.assert_array_equal(np.asarray(out)[:, 0], [3.0, 7.0, 3.0, 0.0])


def test_charge_counts_queries_until_each_example_stops() -> None:
    labels = jnp.asarray([0, 1, 2])
    count = compose.QueryCount(jax.random.key(0), jnp.asarray([False, False, True]), jnp.asarray([1, 1, 1]))
    chain = jax.random.key(1)
    count, active = compose.charge(count, chain, _logits([1, 1, 0]), labels, targeted=False, cost=5)
    np.testing.assert_array_equal(np.asarray(active), [True, True, False])
    np.testing.assert_array_equal(np.asarray(count.done), [True, False, True])
    np.testing.assert_array_equal(np.asarray(count.queries), [6, 6, 1])
    count, active = compose.charge(count, chain, _logits([-1, 0, 0]), labels, targeted=False, cost=2)
    np.testing.assert_array_equal(np.asarray(active), [False, True, False])
    np.testing.assert_array_equal(np.asarray(count.done), [True, True, True])
    np.testing.assert_array_equal(np.asarray(count.queries), [6, 8, 1])


# --- sources ----------------------------------------------------------------------------


class _Stub:
    """A gradient source that returns the model's output as its gradient, the mean
    output as its loss, and ``ok`` false for example 1 when ``fail`` is set."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail

    def __call__(self, model: Any, x: Any, labels: Any, *, key: Any, targeted: bool) -> compose.Gradient:
        out = model(x, key)
        ok = jnp.asarray([True, not self.fail, True])
        return compose.Gradient(out.reshape(3, -1).mean(1), None, out, ok)


def test_eot_averages_its_draws_and_drops_examples_any_draw_fails() -> None:
    x = jnp.asarray(np.random.default_rng(3).normal(size=SHAPE), jnp.float32)

    def model(xi: Any, key: Any) -> Any:
        return xi

    # The identity transform: every draw gives the stub's gradient, so does the mean.
    plain = compose.EOT(_Stub(), num_samples=4)(model, x, None, key=jax.random.key(0), targeted=False)
    np.testing.assert_allclose(np.asarray(plain.grad), np.asarray(x), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(plain.loss), np.asarray(x).reshape(3, -1).mean(1), rtol=1e-5)
    assert plain.logits is None and bool(jnp.all(plain.ok))
    # A random shift of +-1 per draw and example (each example draws from its own key):
    # the mean of 64 draws is x plus that example's mean shift.
    shifted = compose.EOT(_Stub(), num_samples=64, transform=lambda k, xi: xi + jax.random.rademacher(k, ()))
    g = shifted(model, x, None, key=jax.random.key(1), targeted=False)
    shift = np.asarray(g.grad) - np.asarray(x)
    per_example = shift.reshape(len(shift), -1)
    np.testing.assert_allclose(
        per_example, np.broadcast_to(per_example[:, :1], per_example.shape), atol=1e-5
    )  # one shift per draw and example
    for s in per_example[:, 0] * 64:  # a mean of 64 draws of +-1: an even integer / 64
        assert abs(s) <= 64 and abs(s - round(s)) < 1e-3 and round(s) % 2 == 0
    # An example whose gradient fails in some draw is not stepped.
    failed = compose.EOT(_Stub(fail=True), num_samples=2)(
        model, x, None, key=jax.random.key(0), targeted=False
    )
    np.testing.assert_array_equal(np.asarray(failed.ok), [True, False, True])
    assert np.all(np.asarray(failed.grad)[1] == 0)
    np.testing.assert_allclose(np.asarray(failed.grad)[[0, 2]], np.asarray(x)[[0, 2]], rtol=1e-6)


def test_loss_gradient_zeroes_examples_with_non_finite_logits() -> None:
    x = jnp.asarray(np.random.default_rng(4).normal(size=(3, 4)), jnp.float32)
    w = jnp.asarray(np.random.default_rng(5).normal(size=(4, 3)), jnp.float32)

    def model(xi: Any, key: Any) -> Any:
        z = xi @ w
        return z.at[1].set(jnp.nan)

    labels = jax.nn.one_hot(jnp.asarray([0, 1, 2]), 3)
    g = compose.loss_gradient("ce")(model, x, labels, key=jax.random.key(0), targeted=False)
    np.testing.assert_array_equal(np.asarray(g.ok), [True, False, True])
    assert np.all(np.asarray(g.grad)[1] == 0) and np.all(np.isfinite(np.asarray(g.grad)))
    # The other rows: the cross-entropy gradient (softmax - onehot) W^T.
    z = np.asarray(x @ w, np.float64)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    want = (p - np.asarray(labels)) @ np.asarray(w, np.float64).T
    np.testing.assert_allclose(np.asarray(g.grad)[[0, 2]], want[[0, 2]], rtol=1e-5, atol=1e-6)


def test_parts_of_different_classes_never_share_a_tree_structure() -> None:
    # Momentum and Nesterov have the same fields. Were their structures equal, a jit
    # cache could run one's compiled loop for the other (NI-FGSM ran as MI-FGSM).
    parts = [compose.Momentum(1.0), compose.Nesterov(1.0), compose.Steepest(), compose.LossGradient()]
    trees = [jax.tree_util.tree_structure(p) for p in parts]
    for i, a in enumerate(trees):
        for j, b in enumerate(trees):
            assert (a == b) == (i == j), (parts[i], parts[j])
    # A round trip gives back the same class and fields, leaves as named.
    attack = compose.Attack(rule=compose.Nesterov(jnp.asarray(0.5)), norm="l2", keep_best=True)
    leaves, tree = jax.tree_util.tree_flatten(attack)
    back = jax.tree_util.tree_unflatten(tree, leaves)
    assert type(back.rule) is compose.Nesterov and back.norm == "l2" and back.keep_best
    paths = [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_flatten_with_path(attack)[0]]
    assert paths == [".rule.decay"]
