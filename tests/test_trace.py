"""Traces of attack runs (:class:`jaxadv.compose.Trace`) and the indicators of attack
failure read off them by ``evaluate(..., diagnose=True)``.

The parts are checked without a model, on synthetic margins and gradients; the
loop's record is checked against a replay: with a fixed step and no random start,
``pgd(steps=t)`` returns the iterate ``x_t`` of a longer run, so the trace of a
``T``-step run must equal what the iterates ``x_0 .. x_{T-1}`` show when each is
computed and judged on its own.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import small_models as sm

import jaxadv
from jaxadv import compose
from jaxadv.evaluation import SuiteAttack

W = sm.random_weights(3)
EPS = 0.05


def _data(n: int = 32, flat: bool = False) -> tuple[jax.Array, jax.Array]:
    """Inputs in (0, 1) labelled by the linear model (images, or flat for the MLP)."""
    x = jnp.asarray(np.random.default_rng(1).uniform(0.05, 0.95, size=(n, 8, 8, 1)), jnp.float32)
    y = jaxadv.predict(sm.model(W), x)
    return (x.reshape(n, 64) if flat else x), y


# --- parts, without a model ------------------------------------------------------------


def test_margin_objective_is_the_distance_past_the_boundary() -> None:
    z = jnp.array([[3.0, 1.0, 2.0], [0.0, 5.0, 1.0], [jnp.nan, 0.0, 0.0]])
    y = jnp.array([0, 0, 1])
    want = np.array([2.0 - 3.0, 5.0 - 0.0, -np.inf])
    np.testing.assert_array_equal(np.asarray(compose.margin_objective(z, y, False)), want)
    onehot = jax.nn.one_hot(y, 3)
    np.testing.assert_array_equal(np.asarray(compose.margin_objective(z, onehot, False)), want)
    # Targeted at class 2: z_2 minus the best other class.
    t = jnp.array([2, 2, 2])
    np.testing.assert_array_equal(
        np.asarray(compose.margin_objective(z, t, True)), np.array([2.0 - 3.0, 1.0 - 5.0, -np.inf])
    )


def test_vanishing_is_relative_to_the_loss_and_takes_nan_as_vanished() -> None:
    reach = jnp.array([0.0, 5e-7, 2e-6, 1e-3, jnp.nan, 1e-3])
    loss = jnp.array([0.5, 0.5, 0.5, 0.5, 0.5, 1e4])
    np.testing.assert_array_equal(
        np.asarray(compose.vanishing(reach, loss)), [True, True, False, False, True, True]
    )


def _replay(margins: np.ndarray, adv: np.ndarray, vanish: np.ndarray, ok: np.ndarray) -> compose.Trace:
    """Feed ``[T, b]`` per-iterate records through the loop's bookkeeping."""
    steps = margins.shape[0]
    trace = compose.init_trace(jnp.zeros((margins.shape[1], 2)), steps)
    for i in range(steps):
        trace = compose.record_trace(
            trace, jnp.int32(i), jnp.asarray(margins[i]), jnp.asarray(ok[i]), jnp.asarray(vanish[i]),
            jnp.asarray(adv[i]),
        )  # fmt: skip
    return trace


def test_record_trace_against_its_definition() -> None:
    rng = np.random.default_rng(0)
    steps, b = 9, 64
    margins = rng.normal(size=(steps, b)).astype(np.float32) - 1.0
    margins[rng.random((steps, b)) < 0.05] = np.nan
    adv = rng.random((steps, b)) < 0.1
    vanish = rng.random((steps, b)) < 0.1
    ok = rng.random((steps, b)) > 0.05
    trace = _replay(margins, adv, vanish, ok)
    late_from = steps - max(1, (steps + 1) // 4)
    safe = np.where(np.isfinite(margins), margins, -np.inf)
    assert int(trace.late_from) == late_from
    np.testing.assert_array_equal(np.asarray(trace.ever), adv.any(axis=0))
    np.testing.assert_array_equal(np.asarray(trace.first), safe[0])
    np.testing.assert_array_equal(np.asarray(trace.early), safe[:late_from].max(axis=0))
    np.testing.assert_array_equal(np.asarray(trace.late), safe[late_from:].max(axis=0))
    np.testing.assert_array_equal(np.asarray(trace.broken), (~ok).any(axis=0))
    before = np.cumsum(adv, axis=0) - adv == 0  # no earlier iterate was adversarial
    before[0] = True
    np.testing.assert_array_equal(np.asarray(trace.vanished), (vanish & ok & before).any(axis=0))


def test_still_rising_needs_a_pace_that_reaches_the_boundary() -> None:
    #       first  early  late
    cases = [
        (-4.0, -3.0, -1.0, True),  # the last quarter gained 2: four more reach 0
        (-40.0, -30.0, -29.0, False),  # creeping up far from the boundary
        (-4.0, -1.0, -1.0, False),  # flat at the end
        (-4.0, -1.0, -2.0, False),  # fell back
        (-1.0, -2.0, -1.5, False),  # never rose above the start
        (-np.inf, -3.0, -1.0, False),  # no finite start: no rise to measure
        (-4.0, -1.0, -0.99, False),  # a gain below 5% of the rise
    ]
    first, early, late, want = (np.array(c) for c in zip(*cases, strict=True))
    got = compose.still_rising(jnp.asarray(first), jnp.asarray(early), jnp.asarray(late), 0.05)
    np.testing.assert_array_equal(np.asarray(got), want.astype(bool))


def test_trace_flags_and_their_merge() -> None:
    t = np.array([True, False, False, False])
    f = np.zeros(4, bool)
    trace = compose.Trace(
        ever=jnp.asarray(t), first=jnp.full(4, -4.0), early=jnp.full(4, -3.0), late=jnp.full(4, -1.0),
        broken=jnp.asarray([False, True, False, False]), vanished=jnp.asarray([False, False, True, False]),
        late_from=jnp.int32(3),
    )  # fmt: skip
    flags = compose.trace_flags(trace)
    np.testing.assert_array_equal(np.asarray(flags.ever), t)
    np.testing.assert_array_equal(np.asarray(flags.incomplete), ~t)  # rising, except where adversarial
    np.testing.assert_array_equal(np.asarray(flags.unavailable), [False, True, True, False])
    other = compose.TraceFlags(jnp.asarray(f), jnp.asarray(f), jnp.asarray([True, False, True, True]))
    merged = compose.merge_flags(flags, other)
    assert merged is not None
    np.testing.assert_array_equal(np.asarray(merged.ever), t)
    np.testing.assert_array_equal(np.asarray(merged.incomplete), ~t)
    # A gradient is unavailable only where neither run had one.
    np.testing.assert_array_equal(np.asarray(merged.unavailable), [False, False, True, False])
    assert compose.merge_flags(None, flags) is flags and compose.merge_flags(flags, None) is flags
    assert compose.merge_flags(None, None) is None


# --- the loop's record, against a replay ---------------------------------------------------


@pytest.mark.parametrize("norm, eps, loss", [("linf", 0.02, "ce"), ("l2", 0.15, "cw")])
def test_pgd_trace_equals_a_replay_of_its_iterates(norm: str, eps: float, loss: str) -> None:
    f = sm.relu_mlp(0, (64, 16, 4))
    x, _ = _data(flat=True)
    y = jaxadv.predict(f, x)
    steps, alpha = 8, eps / 6
    kw = dict(eps=eps, norm=norm, loss=loss, random_start=False, step_size=alpha)
    res = jaxadv.pgd(f, x, y, steps=steps, return_info=True, trace=True, **kw)
    iterates = [x] + [jaxadv.pgd(f, x, y, steps=t, **kw) for t in range(1, steps)]
    margins = np.stack([np.asarray(compose.margin_objective(f(v), y, False)) for v in iterates])
    adv = margins > 0
    late_from = steps - max(1, (steps + 1) // 4)
    early, late = margins[:late_from].max(axis=0), margins[late_from:].max(axis=0)
    ever = adv.any(axis=0)
    rising = np.asarray(
        compose.still_rising(jnp.asarray(margins[0]), jnp.asarray(early), jnp.asarray(late), 0.05)
    )
    np.testing.assert_array_equal(np.asarray(res.trace.ever), ever)
    np.testing.assert_array_equal(np.asarray(res.trace.incomplete), ~ever & rising)
    assert not np.any(np.asarray(res.trace.unavailable))  # a ReLU network's gradients are there
    assert ever.any() and not ever.all()  # the case decides something


def test_a_run_cut_short_is_incomplete_and_more_steps_fool_it() -> None:
    f = sm.model(W)
    x, y = _data()
    kw = dict(eps=0.2, random_start=False, step_size=0.004, loss="cw")
    short = jaxadv.pgd(f, x, y, steps=8, return_info=True, trace=True, **kw)
    flagged = np.asarray(short.trace.incomplete)
    assert flagged.any()
    longer = jaxadv.pgd(f, x, y, steps=64, return_info=True, **kw)
    assert np.all(np.asarray(longer.success)[flagged])  # the indicator pointed at what more steps fool


def test_silent_success_is_an_iterate_adversarial_but_not_returned() -> None:
    # A margin that is a wave along the mean pixel: steps of 0.2 jump across its
    # positive crest (width 0.16) and back, so PGD's last iterate is adversarial
    # after an odd number of steps only. After 6 the trace shows what was lost.
    def wave(v: jax.Array) -> jax.Array:
        s = jnp.mean(v.reshape(v.shape[0], -1), axis=1)
        return jnp.stack([jnp.zeros_like(s), 2.0 * jnp.sin(20.0 * s)], axis=-1)

    x, _ = _data(64)
    y = jnp.zeros(64, jnp.int32)
    kw = dict(eps=0.3, random_start=False, step_size=0.2, loss="cw")
    res = jaxadv.pgd(wave, x, y, steps=6, return_info=True, trace=True, **kw)
    correct = np.asarray(jaxadv.predict(wave, x)) == 0
    silent = np.asarray(res.trace.ever) & ~np.asarray(res.success) & correct
    assert silent.any()
    odd = jaxadv.pgd(wave, x, y, steps=5, return_info=True, **kw)
    assert np.all(np.asarray(odd.success)[silent])  # an earlier iterate was adversarial
    fooled = np.asarray(res.success)
    ind = jaxadv.evaluation.indicators(
        wave, x, y, eps=0.3, key=jax.random.key(0), fooled=fooled, trace=res.trace
    )
    np.testing.assert_array_equal(np.asarray(ind.silent_success), silent)


def test_no_gradient_shows_in_the_trace() -> None:
    f = sm.model(W)
    x, y = _data()
    blind = lambda v: f(jax.lax.stop_gradient(v))  # noqa: E731
    for run in (
        lambda: jaxadv.pgd(
            blind, x, y, key=jax.random.key(0), eps=EPS, steps=5, return_info=True, trace=True
        ),
        lambda: jaxadv.apgd(
            blind, x, y, key=jax.random.key(0), eps=EPS, steps=5, return_info=True, trace=True
        ),
        lambda: jaxadv.apgd_targeted(
            blind,
            x,
            y,
            key=jax.random.key(0),
            eps=EPS,
            steps=5,
            num_target_classes=2,
            return_info=True,
            trace=True,
        ),  # fmt: skip
    ):
        res = run()  # (a random start may land past the boundary: ever is not asked about)
        assert np.all(np.asarray(res.trace.unavailable))


def test_apgd_trace_of_a_smooth_model_is_silent_and_merges_over_restarts() -> None:
    f = sm.model(W)
    x, y = _data()
    res = jaxadv.apgd(
        f, x, y, key=jax.random.key(0), eps=EPS, steps=20, num_restarts=2, return_info=True, trace=True
    )
    # APGD keeps its best iterate: an adversarial iterate is what it returns.
    np.testing.assert_array_equal(np.asarray(res.trace.ever), np.asarray(res.success))
    assert not np.any(np.asarray(res.trace.unavailable))
    assert 0 < np.sum(np.asarray(res.success)) < len(y)


def test_trace_needs_return_info_and_excludes_count_queries() -> None:
    f = sm.model(W)
    x, y = _data(4)
    with pytest.raises(ValueError, match="trace=True needs return_info=True"):
        jaxadv.pgd(f, x, y, key=jax.random.key(0), eps=EPS, trace=True)
    with pytest.raises(ValueError, match="trace=True needs return_info=True"):
        jaxadv.apgd(f, x, y, key=jax.random.key(0), eps=EPS, trace=True)
    with pytest.raises(ValueError, match="trace must be True or False"):
        jaxadv.pgd(f, x, y, key=jax.random.key(0), eps=EPS, trace=1, return_info=True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="excludes count_queries"):
        compose.Attack(compose.finite_difference(num_samples=2), count_queries=True, trace=True)
    # Without trace, no trace comes back.
    assert jaxadv.pgd(f, x, y, key=jax.random.key(0), eps=EPS, return_info=True).trace is None


def test_trace_under_jit_equals_the_direct_call() -> None:
    f = sm.relu_mlp(0, (64, 16, 4))
    x, _ = _data(flat=True)
    y = jaxadv.predict(f, x)
    kw = dict(key=jax.random.key(0), eps=0.1, steps=10, return_info=True, trace=True)
    direct = jaxadv.pgd(f, x, y, **kw)
    jitted = jax.jit(lambda v: jaxadv.pgd(f, v, y, **kw))(x)
    for a, b in zip(direct.trace, jitted.trace, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# --- evaluate(diagnose=True) reads the suite's traces -----------------------------------------


def _evaluate(f: Any, x: Any, y: Any, suite: Any, eps: float = EPS) -> jaxadv.EvaluationResult:
    return jaxadv.evaluate(
        f, x, y, eps=eps, suite=suite, key=jax.random.key(0), progress=False, checks=False, diagnose=True
    )


def test_evaluate_reads_the_traces_of_its_gradient_members(monkeypatch: Any) -> None:
    x, y = _data()
    f = sm.model(W)
    # The diagnostic attack runs only without a traced member: with one, the ball
    # probe never runs (its absence is what keeps the cost down).
    calls: list[int] = []
    from jaxadv.evaluation import diagnostics

    real = diagnostics._probe_run

    def counted(*args: Any, **kw: Any) -> Any:
        rows = args[8]  # the rows attacked: all of x when None
        calls.append(int(args[2].shape[0]) if rows is None else int(rows.shape[0]))
        return real(*args, **kw)

    monkeypatch.setattr(diagnostics, "_probe_run", counted)
    res = _evaluate(f, x, y, ["pgd-20"])
    robust = int(np.sum(np.asarray(res.fooled_by) == -1))
    assert res.indicators is not None and not any(res.indicator_counts().values())  # a smooth model
    # Only the box-only run, on the examples left robust (padded to a bucket).
    assert len(calls) == (1 if robust else 0) and all(c >= robust for c in calls)
    calls.clear()
    _evaluate(f, x, y, ["fgsm"])  # no trace: the diagnostic attack on the whole batch, then the box
    assert calls and calls[0] == len(y)


def test_evaluate_flags_what_each_trace_shows() -> None:
    x, y = _data()
    f = sm.model(W)
    blind = lambda v: f(jax.lax.stop_gradient(v))  # noqa: E731
    res = _evaluate(blind, x, y, ["pgd-20"])
    correct = np.asarray(res.fooled_by) != -2
    np.testing.assert_array_equal(res.indicators["unavailable_gradients"], correct)
    # The box-only run attacks the examples left robust (a random start fools a few).
    np.testing.assert_array_equal(res.indicators["unconstrained_failure"], res.robust)
    assert res.robust.any()
    # A quantised input: its gradient is zero almost everywhere, and through BPDA it is not.
    levels = lambda v: jnp.round(v * 7.0) / 7.0  # noqa: E731
    quantised = lambda v: f(levels(v))  # noqa: E731
    yq = jaxadv.predict(quantised, x)
    res = _evaluate(quantised, x, yq, ["pgd-20"])
    assert np.all(res.indicators["unavailable_gradients"]) and np.all(
        res.indicators["unconstrained_failure"][res.robust]
    )
    through = _evaluate(lambda v: f(jaxadv.bpda(levels)(v)), x, yq, ["pgd-20"])
    assert not through.indicators["unavailable_gradients"].any()
    assert through.robust_accuracy < res.robust_accuracy

    def cut_short(
        logits_fn: Any, xb: Any, yb: Any, *, key: Any, eps: Any, norm: Any, bounds: Any, trace: bool = False
    ) -> Any:
        return jaxadv.pgd(
            logits_fn, xb, yb, eps=eps, norm=norm, bounds=bounds, random_start=False, step_size=eps / 50,
            steps=8, loss="cw", return_info=trace, trace=trace,
        )  # fmt: skip

    member = SuiteAttack("pgd-cut-short", cut_short, traced=True)
    res = _evaluate(f, x, y, [member], eps=0.2)
    flagged = res.indicators["incomplete_optimization"]
    assert flagged.any() and np.all(res.robust[flagged])
    # Two members: a gradient is unavailable only if neither had one.
    # (The examples the blind member's random start fooled were attacked by it alone.)
    mixed = _evaluate(f, x, y, [SuiteAttack("blind", _blind_pgd, traced=True), "pgd-20"])
    np.testing.assert_array_equal(mixed.indicators["unavailable_gradients"], np.asarray(mixed.fooled_by) == 0)
    assert np.any(np.asarray(mixed.fooled_by) == 1)


def _blind_pgd(
    logits_fn: Any, xb: Any, yb: Any, *, key: Any, eps: Any, norm: Any, bounds: Any, trace: bool = False
) -> Any:
    blind = lambda v: logits_fn(jax.lax.stop_gradient(v))  # noqa: E731
    return jaxadv.pgd(
        blind, xb, yb, key=key, eps=eps, norm=norm, bounds=bounds, steps=3, return_info=trace, trace=trace
    )
