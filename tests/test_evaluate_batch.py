"""``evaluate_batch`` (one batch, pure, ``jit``-able) and ``tally`` (init / update /
finalize): a user's own loop gives per example what ``evaluate`` gives."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxadv
from jaxadv.evaluation import (
    ROBUST,
    BatchResult,
    SuiteAttack,
    evaluate_batch,
    resolve_suite,
    tally,
)
from jaxadv.evaluation.kernel import half_ulp, rounding_allowance

EPS = 0.1
KEY = jax.random.key(7)


def _square_100(logits_fn: Any, x: Any, y: Any, *, key: Any, eps: Any, norm: Any, bounds: Any) -> Any:
    return jaxadv.square(
        logits_fn, x, y, key=key, eps=eps, norm=norm, bounds=bounds, queries=100, return_info=True
    )


# A score-based member whose queries are counted, then PGD-20 (cross-entropy).
SUITE = [SuiteAttack("square-100", _square_100, black_box=True), *resolve_suite(["pgd-20"], norm="linf")]


@pytest.fixture(scope="module")
def data(digits: Any) -> tuple[np.ndarray, np.ndarray]:
    return digits[1].x[:40], digits[1].y[:40]


def _own_loop(logits_fn: Any, x: np.ndarray, y: np.ndarray, batch: int, **kw: Any) -> jaxadv.EvaluationResult:
    """A user's loop: a jitted step over batches, gathered by a tally."""
    step = jax.jit(
        lambda xb, yb, index: evaluate_batch(
            logits_fn, xb, yb, suite=SUITE, eps=EPS, key=KEY, index=index, **kw
        )
    )
    t = tally(SUITE, eps=EPS, norm="linf", keep_adversarial=True)
    state = t.init()
    for start in range(0, len(x), batch):
        xb, yb = x[start : start + batch], y[start : start + batch]
        state = t.update(state, step(xb, yb, start + jnp.arange(len(xb))))
    return t.finalize(state)


def _jitted(logits_fn: Any, suite: Any) -> Any:
    return jax.jit(lambda a, b: evaluate_batch(logits_fn, a, b, suite=suite, eps=EPS, key=KEY))


def test_a_jitted_loop_equals_evaluate_per_example(mlp: Any, data: Any) -> None:
    x, y = data
    ref = jaxadv.evaluate(
        mlp.logits_fn, x, y, eps=EPS, suite=SUITE, key=KEY, batch_size=16, progress=False, checks=False,
        store_adversarial=True,
    )  # fmt: skip
    # Both members fool something and some examples stay robust: every branch is compared.
    assert {ROBUST, 0, 1} <= set(ref.fooled_by.tolist())
    for batch in (8,):  # evaluate cut the data into batches of 16: another cut, the same outcomes
        own = _own_loop(mlp.logits_fn, x, y, batch)
        np.testing.assert_array_equal(own.fooled_by, ref.fooled_by)
        np.testing.assert_allclose(own.perturbation_norm, ref.perturbation_norm, rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(own.queries, ref.queries)
        np.testing.assert_allclose(own.x_adv, ref.x_adv, atol=1e-7)
        assert own.robust_accuracy == ref.robust_accuracy
        assert own.batch_size == batch and own.attacks == ref.attacks


def test_the_documented_loop_runs_as_written(mlp: Any, data: Any) -> None:
    """The example of :mod:`jaxadv.evaluation.kernel`'s docstring, run as written."""
    doc = jaxadv.evaluation.kernel.__doc__ or ""
    block = doc.split("::\n\n", 1)[1].split("\n\n", 1)[0]
    code = "\n".join(line[4:] for line in block.splitlines())
    x, y = data
    space = dict(jax=jax, jnp=jnp, evaluate_batch=evaluate_batch, resolve_suite=resolve_suite, tally=tally)
    space.update(logits_fn=mlp.logits_fn, x=x, y=y, n=len(x), key=KEY)
    exec(compile(code, "kernel.__doc__", "exec"), space)  # noqa: S102 - the docs' own example
    ref = jaxadv.evaluate(
        mlp.logits_fn, x, y, eps=8 / 255, suite="fast", key=KEY, progress=False, checks=False
    )  # fmt: skip
    np.testing.assert_array_equal(space["result"].fooled_by, ref.fooled_by)


def test_eager_call_equals_jit_and_checks_the_threat_model(mlp: Any, data: Any) -> None:
    x, y = data
    eager = evaluate_batch(mlp.logits_fn, x[:8], y[:8], suite=SUITE, eps=EPS, key=KEY)
    jitted = jax.jit(lambda a, b: evaluate_batch(mlp.logits_fn, a, b, suite=SUITE, eps=EPS, key=KEY))(
        x[:8], y[:8]
    )
    for a, b in zip(eager, jitted, strict=True):
        if a is not None:
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-7)
    assert isinstance(eager, BatchResult) and eager.seconds is None
    delta = np.abs(np.asarray(eager.x_adv) - x[:8]).reshape(8, -1).max(axis=1)
    assert np.all(delta <= EPS + 1e-6)
    np.testing.assert_allclose(np.asarray(eager.perturbation_norm), delta, atol=1e-6)


def _too_far(logits_fn: Any, x: Any, y: Any, *, key: Any, eps: Any, norm: Any, bounds: Any) -> Any:
    return jnp.clip(x + 3 * eps, *bounds)  # outside the ball: a broken attack


def test_an_attack_outside_the_ball_raises_eagerly_and_fails_under_jit(mlp: Any, data: Any) -> None:
    x, y = data
    suite = [SuiteAttack("too-far", _too_far)]
    with pytest.raises(RuntimeError, match="'too-far' returned examples outside the threat model"):
        evaluate_batch(mlp.logits_fn, x[:8], y[:8], suite=suite, eps=EPS, key=KEY)
    out = jax.jit(lambda a, b: evaluate_batch(mlp.logits_fn, a, b, suite=suite, eps=EPS, key=KEY))(
        x[:8], y[:8]
    )
    clean = np.argmax(np.asarray(mlp.logits_fn(jnp.asarray(x[:8]))), -1) == y[:8]
    # None of its candidates counts; each one it could change is counted as outside.
    assert np.all(np.asarray(out.fooled_by) < 0)
    assert int(out.outside[0]) == int(clean.sum()) > 0
    t = tally(suite, eps=EPS, norm="linf")
    result = t.finalize(t.update(t.init(), out))
    assert any("outside the threat model" in w for w in result.warnings)


@pytest.mark.parametrize(
    ("x", "y", "match"),
    [
        (np.zeros((2, 64), np.int32), np.zeros(2, np.int32), "floating point"),
        (np.full((2, 64), np.nan, np.float32), np.zeros(2, np.int32), "NaN or inf"),
        (np.zeros((2, 64), np.float32), np.array([0, 10], np.int32), "labels must be < 10"),
        (np.zeros((2, 64), np.float32), np.array([0, -1], np.int32), "labels must be >= 0"),
        (np.zeros((2, 64), np.float32), np.zeros(2, np.float32), "integer labels"),
        (np.zeros((2, 64), np.float32), np.zeros(3, np.int32), "integer labels"),
    ],
)
def test_bad_inputs_are_refused(mlp: Any, x: Any, y: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        evaluate_batch(mlp.logits_fn, x, y, suite=SUITE, eps=EPS, key=KEY)


def test_an_empty_batch_gives_an_empty_result(mlp: Any) -> None:
    x, y = np.zeros((0, 64), np.float32), np.zeros(0, np.int32)
    out = evaluate_batch(mlp.logits_fn, x, y, suite=SUITE, eps=EPS, key=KEY)
    assert np.asarray(out.fooled_by).shape == (0,) and np.asarray(out.x_adv).shape == (0, 64)
    np.testing.assert_array_equal(np.asarray(out.non_finite), [0, 0])
    t = tally(SUITE, eps=EPS, norm="linf")
    assert t.finalize(t.update(t.init(), out)).num_examples == 0


def test_bad_arguments_are_refused(mlp: Any, data: Any) -> None:
    x, y = data
    with pytest.raises(ValueError, match="eps must be"):
        evaluate_batch(mlp.logits_fn, x[:2], y[:2], suite=SUITE, eps=-1.0, key=KEY)
    with pytest.raises(ValueError, match="norm"):
        evaluate_batch(mlp.logits_fn, x[:2], y[:2], suite=SUITE, eps=EPS, key=KEY, norm="l3")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cannot attack a randomised model"):
        evaluate_batch(mlp.logits_fn, x[:2], y[:2], suite=SUITE, eps=EPS, key=KEY, randomized=True)


def test_tally_update_returns_a_new_state_and_resumes_from_a_result(mlp: Any, data: Any) -> None:
    x, y = data
    step = jax.jit(
        lambda a, b, i: evaluate_batch(mlp.logits_fn, a, b, suite=SUITE, eps=EPS, key=KEY, index=i)
    )
    first, second = step(x[:20], y[:20], jnp.arange(20)), step(x[20:], y[20:], 20 + jnp.arange(20))
    t = tally(SUITE, eps=EPS, norm="linf")
    empty = t.init()
    one = t.update(empty, first)
    assert empty.fooled_by == () and len(one.fooled_by) == 1  # the old state is unchanged
    whole = t.finalize(t.update(one, second), wall_seconds=2.0)
    # A resumed tally (start = the first half's result) ends where the whole one does.
    resumed = t.finalize(t.update(t.init(t.finalize(one)), second))
    np.testing.assert_array_equal(resumed.fooled_by, whole.fooled_by)
    np.testing.assert_array_equal(resumed.queries, whole.queries)
    assert resumed.sessions == 2 and whole.sessions == 1
    assert whole.num_examples == 40 and whole.examples_per_second == 20.0
    with pytest.raises(ValueError, match="results of 2 attacks, the tally 1"):
        tally(SUITE[:1], eps=EPS, norm="linf").update(empty, first)
    with pytest.raises(ValueError, match="pass the batch's indicators"):
        d = tally(SUITE, eps=EPS, norm="linf", diagnose=True)
        d.update(d.init(), first)
    with pytest.raises(ValueError, match="start holds the attacks"):
        tally(["other", "names"], eps=EPS, norm="linf").init(whole)


def test_tally_keeps_indicators(mlp: Any, data: Any) -> None:
    x, y = data
    out = evaluate_batch(mlp.logits_fn, x[:8], y[:8], suite=SUITE, eps=EPS, key=KEY)
    ind = jaxadv.evaluation.indicators(
        mlp.logits_fn, jnp.asarray(x[:8]), jnp.asarray(y[:8]), eps=EPS, key=jax.random.key(1),
        fooled=np.asarray(out.fooled_by) >= 0,
    )  # fmt: skip
    t = tally(SUITE, eps=EPS, norm="linf", diagnose=True)
    result = t.finalize(t.update(t.init(), out, ind))
    assert result.indicators is not None
    for name, flags in result.indicators.items():
        np.testing.assert_array_equal(flags, np.asarray(getattr(ind, name)))


def test_rounding_allowance_is_half_an_ulp_where_the_candidate_moved() -> None:
    a = jnp.asarray([[1.0, 0.5, 0.25]], jnp.bfloat16)
    x = jnp.asarray([[1.0, 0.0, 0.0]], jnp.bfloat16)
    # bfloat16 has 8 significand bits: the spacing at 0.5 is 2^-8, at 0.25 it is 2^-9.
    np.testing.assert_array_equal(np.asarray(half_ulp(a)), [[2.0**-8, 2.0**-9, 2.0**-10]])
    np.testing.assert_allclose(np.asarray(rounding_allowance(a, x, "linf")), [2.0**-9])
    np.testing.assert_allclose(np.asarray(rounding_allowance(a, x, "l1")), [2.0**-9 + 2.0**-10])
    np.testing.assert_allclose(np.asarray(rounding_allowance(a, x, "l2")), [np.hypot(2.0**-9, 2.0**-10)])
    assert float(half_ulp(jnp.asarray(jnp.inf))) == 0.0
