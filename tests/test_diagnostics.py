"""The indicators of attack failure (:mod:`jaxadv.evaluation.diagnostics`).

Each indicator fires on a model built to trigger it and stays silent on a smooth
one. On the linear model the diagnostic attack of one L-inf step is known in
closed form (a step of ``eps`` along ``sign(w_j - w_y)``, ``j`` the runner-up
class), which gives exact checks of ``silent_success`` and
``incomplete_optimization``.
"""

from __future__ import annotations

import importlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import small_models as sm

import jaxadv
from jaxadv.evaluation import diagnostics

N, EPS = 40, 0.05
evaluate_module = importlib.import_module("jaxadv.evaluation.evaluate")
W = sm.random_weights(3)


def _data(n: int = N, wrong: int = 4) -> tuple[jax.Array, jax.Array]:
    """Inputs in (0, 1) and the linear model's own labels, the first ``wrong`` of them
    replaced by another class (misclassified: never attacked, never flagged)."""
    x = jnp.asarray(np.random.default_rng(0).uniform(0.05, 0.95, size=(n, 8, 8, 1)), jnp.float32)
    y = np.array(jaxadv.predict(sm.model(W), x))
    y[:wrong] = (y[:wrong] + 1) % W.shape[1]
    return x, jnp.asarray(y)


def _correct(f: Any, x: Any, y: Any) -> np.ndarray:
    return np.asarray(jaxadv.predict(f, x)) == np.asarray(y)


def _indicators(f: Any, x: Any, y: Any, **kw: Any) -> diagnostics.Indicators:
    return jaxadv.evaluation.indicators(f, x, y, eps=kw.pop("eps", EPS), key=jax.random.key(0), **kw)


@pytest.mark.parametrize("norm,eps", [("linf", 0.05), ("l2", 0.5), ("l1", 2.0)])
def test_silent_on_a_smooth_model(norm: str, eps: float) -> None:
    x, y = _data()
    ind = _indicators(sm.model(W), x, y, eps=eps, norm=norm)
    assert ind.counts() == {name: 0 for name in diagnostics.NAMES[:5]}
    assert ind.transfer_failure is None
    assert not np.any(np.asarray(ind.any()))


def _one_margin_step(x: Any, y: Any) -> np.ndarray:
    """Whether one L-inf step of ``eps`` up the margin's gradient fools the linear
    model: towards the runner-up class ``j``, along ``sign(w_j - w_y)``."""
    xf = np.asarray(x).reshape(len(x), -1).astype(np.float64)
    z = xf @ W
    yy = np.asarray(y)
    others = np.where(np.eye(W.shape[1], dtype=bool)[yy], -np.inf, z)
    runner_up = others.argmax(1)
    step = np.clip(xf + EPS * np.sign(W[:, runner_up] - W[:, yy]).T, 0.0, 1.0)
    return (step @ W).argmax(1) != yy


def test_one_step_on_the_linear_model_is_exact() -> None:
    x, y = _data()
    f = sm.model(W)
    correct = _correct(f, x, y)
    fooled = _one_margin_step(x, y)
    assert 0 < np.sum(fooled & correct) < np.sum(correct)  # both outcomes occur
    # The probe of one step ends at that point (2.5 eps projected onto the ball):
    # nothing is silent, and every example it did not fool is still climbing.
    ind = _indicators(f, x, y, steps=1)
    np.testing.assert_array_equal(np.asarray(ind.silent_success), np.zeros(N, bool))
    np.testing.assert_array_equal(np.asarray(ind.incomplete_optimization), correct & ~fooled)
    # Measured against the clean points (an evaluation that returned x), the
    # examples the step fools are silent successes.
    ind = _indicators(f, x, y, steps=1, x_adv=x)
    np.testing.assert_array_equal(np.asarray(ind.silent_success), correct & fooled)
    ind = _indicators(f, x, y, steps=1, fooled=np.zeros(N, bool))
    np.testing.assert_array_equal(np.asarray(ind.silent_success), correct & fooled)
    ind = _indicators(f, x, y, steps=1, fooled=np.ones(N, bool))
    assert not np.any(np.asarray(ind.silent_success))


def test_no_gradient_fires_unavailable_gradients_and_unconstrained_failure() -> None:
    x, y = _data()
    f = sm.model(W)
    correct = _correct(f, x, y)
    blind = lambda v: f(jax.lax.stop_gradient(v))  # noqa: E731
    ind = _indicators(blind, x, y)
    np.testing.assert_array_equal(np.asarray(ind.unavailable_gradients), correct)
    np.testing.assert_array_equal(np.asarray(ind.unconstrained_failure), correct)
    assert not np.any(np.asarray(ind.silent_success) | np.asarray(ind.incomplete_optimization))


def test_bpda_clears_the_indicators_of_a_quantised_model() -> None:
    x, y = _data()
    f = sm.model(W)
    levels = lambda v: jnp.round(v * 7.0) / 7.0  # noqa: E731
    quantised = lambda v: f(levels(v))  # noqa: E731
    y = jnp.asarray(np.asarray(jaxadv.predict(quantised, x)))
    ind = _indicators(quantised, x, y)
    assert np.all(np.asarray(ind.unavailable_gradients)) and np.all(np.asarray(ind.unconstrained_failure))
    through = lambda v: f(jaxadv.bpda(levels)(v))  # noqa: E731
    ind = _indicators(through, x, y)
    assert not np.any(np.asarray(ind.unavailable_gradients)) and not np.any(
        np.asarray(ind.unconstrained_failure)
    )


def test_a_randomised_model_fires_unstable_predictions() -> None:
    x, y = _data(wrong=0)
    params = (jnp.asarray(W), jnp.zeros(W.shape[1]))
    noisy = jax.tree_util.Partial(sm.input_dropout_apply, params)
    ind = _indicators(noisy, x, y, randomized=True)
    assert np.mean(np.asarray(ind.unstable_predictions)) > 0.5
    assert not np.any(np.asarray(_indicators(sm.model(W), x, y).unstable_predictions))
    # Shattered gradients: a fast wiggle added to the input, invisible to the eye.
    f = sm.model(W)
    wiggle = lambda v: f(v + 0.05 * jnp.sin(3000.0 * v))  # noqa: E731
    y2 = jnp.asarray(np.asarray(jaxadv.predict(wiggle, x)))
    assert np.mean(np.asarray(_indicators(wiggle, x, y2).unstable_predictions)) > 0.9


def test_transfer_failure_compares_the_two_models_on_x_adv() -> None:
    x, y = _data()
    f, surrogate = sm.model(W), sm.model(sm.random_weights(4))
    x_adv = jaxadv.pgd(surrogate, x, y, key=jax.random.key(1), eps=0.2, steps=10)
    ind = _indicators(f, x, y, x_adv=x_adv, surrogate_fn=surrogate)
    fools = lambda g: np.asarray(jaxadv.is_adversarial(g, x_adv, y))  # noqa: E731
    want = _correct(f, x, y) & fools(surrogate) & ~fools(f)
    assert 0 < np.sum(want)
    np.testing.assert_array_equal(np.asarray(ind.transfer_failure), want)
    assert "transfer_failure" in ind.counts()
    same = _indicators(f, x, y, x_adv=x_adv, surrogate_fn=f)
    assert not np.any(np.asarray(same.transfer_failure))


def test_misclassified_examples_are_never_flagged() -> None:
    x, y = _data(wrong=N)  # every label wrong
    blind = lambda v: sm.model(W)(jax.lax.stop_gradient(v))  # noqa: E731
    ind = _indicators(blind, x, y, x_adv=x)
    assert not np.any(np.asarray(ind.any()))


def test_an_example_gets_the_same_indicators_in_any_batch() -> None:
    x, y = _data(wrong=0)
    noisy = jax.tree_util.Partial(sm.input_dropout_apply, (jnp.asarray(W), jnp.zeros(W.shape[1])))
    keys = jax.random.split(jax.random.key(5), N)
    run = lambda s: jaxadv.evaluation.indicators(  # noqa: E731
        noisy, x[s], y[s], eps=EPS, key=keys[s], randomized=True
    )
    full, parts = run(slice(None)), [run(slice(0, 7)), run(slice(7, N))]
    for name, got in zip(diagnostics.NAMES[:5], full, strict=False):
        joined = np.concatenate([np.asarray(getattr(p, name)) for p in parts])
        np.testing.assert_array_equal(np.asarray(got), joined, err_msg=name)


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"eps": 0.0}, "eps must be"),
        ({"steps": 0}, "steps must be"),
        ({"draws": 1.5}, "draws must be"),
        ({"noise": 0.0}, "noise must be"),
        ({"tolerance": 1.0}, "tolerance must be"),
        ({"norm": "l3"}, "norm"),
        ({"x_adv": "x", "fooled": np.zeros(N, bool)}, "not both"),
        ({"surrogate_fn": "f"}, "needs x_adv"),
        ({"fooled": np.zeros(N - 1, bool)}, "fooled must be"),
        ({"x_adv": "x[:, :4]"}, "x_adv must have the shape"),
    ],
)
def test_bad_arguments_are_refused(kw: dict[str, Any], match: str) -> None:
    x, y = _data()
    f = sm.model(W)
    names = {"x": x, "x[:, :4]": x[:, :4], "f": f}
    kw = {k: names.get(v, v) if isinstance(v, str) and k != "norm" else v for k, v in kw.items()}
    with pytest.raises(ValueError, match=match):
        _indicators(f, x, y, **kw)
    with pytest.raises(ValueError, match="y \\[n\\] ints"):
        _indicators(f, x, y[:-1])


def test_bad_data_is_refused_and_odd_data_handled() -> None:
    x, y = _data()
    f = sm.model(W)
    for bad, match in [
        (x.at[0, 0, 0, 0].set(jnp.nan), "NaN/inf"),
        (x.at[0, 0, 0, 0].set(jnp.inf), "NaN/inf"),
        (x + 2.0, "inside bounds"),
    ]:
        with pytest.raises(ValueError, match=match):
            _indicators(f, bad, y)
    with pytest.raises(ValueError, match="labels in"):
        _indicators(f, x, y + W.shape[1])
    one_class = jaxadv.from_apply(sm.affine_apply, (jnp.asarray(W[:, :1]), jnp.zeros(1)))
    with pytest.raises(ValueError, match="at least two"):
        _indicators(one_class, x, jnp.zeros(N, jnp.int32))
    # An empty batch: empty indicators (nothing compiled for zero examples).
    empty = _indicators(f, x[:0], y[:0], x_adv=x[:0], surrogate_fn=f)
    assert all(np.asarray(v).shape == (0,) and np.asarray(v).dtype == bool for v in empty)
    # Half precision and logits near 1e12 change nothing on the smooth model.
    assert not np.any(np.asarray(_indicators(f, x.astype(jnp.bfloat16), y).any()))
    assert not np.any(np.asarray(_indicators(sm.scaled(W, 1e12), x, y).any()))


# --- wired into evaluate ---------------------------------------------------------------


def test_evaluate_diagnose_reports_each_example_in_any_batch_size(tmp_path: Any) -> None:
    x, y = _data()
    f = sm.model(W)
    kw = {"eps": EPS, "suite": ["fgsm"], "key": jax.random.key(0), "progress": False, "checks": False}
    res = jaxadv.evaluate(f, x, y, diagnose=True, batch_size=16, **kw)
    assert res.indicators is not None and set(res.indicators) == set(diagnostics.NAMES[:5])
    # The deterministic parts are those of a direct call told what the suite fooled.
    direct = _indicators(f, x, y, fooled=res.fooled_by >= 0)
    for name in (
        "silent_success",
        "incomplete_optimization",
        "unavailable_gradients",
        "unconstrained_failure",
    ):
        np.testing.assert_array_equal(res.indicators[name], np.asarray(getattr(direct, name)), err_msg=name)
    # FGSM leaves examples that PGD-20 fools: silent successes, counted robust.
    assert 0 < np.sum(res.indicators["silent_success"]) <= np.sum(res.robust)
    assert np.array_equal(res.untrusted(), np.any(np.stack(list(res.indicators.values())), axis=0))
    again = jaxadv.evaluate(f, x, y, diagnose=True, batch_size=7, **kw)
    assert again.indicators is not None
    for name, flags in res.indicators.items():
        np.testing.assert_array_equal(flags, again.indicators[name], err_msg=name)
    text = res.summary()
    assert "indicators of attack failure" in text and diagnostics.FIXES["silent_success"] in text
    back = jaxadv.EvaluationResult.from_dict(res.to_dict())
    assert back.indicators is not None and back.indicator_counts() == res.indicator_counts()
    assert res.to_dict()["indicator_counts"]["silent_success"] == np.sum(res.indicators["silent_success"])
    plain = jaxadv.evaluate(f, x, y, batch_size=16, **kw)
    assert plain.indicators is None and "indicators" not in plain.summary()
    np.testing.assert_array_equal(plain.fooled_by, res.fooled_by)  # diagnosing changes no result


def test_evaluate_diagnose_flags_a_masked_model_and_checks_resume(tmp_path: Any) -> None:
    x, y = _data()
    blind = lambda v: sm.model(W)(jax.lax.stop_gradient(v))  # noqa: E731
    kw = {"eps": EPS, "suite": ["fgsm"], "key": jax.random.key(0), "progress": False, "checks": False}
    res = jaxadv.evaluate(blind, x, y, diagnose=True, **kw)
    assert res.robust_accuracy == res.clean_accuracy  # FGSM moved nothing
    np.testing.assert_array_equal(res.untrusted(), res.robust)  # and every robust example is flagged
    assert res.indicator_counts()["unavailable_gradients"] == int(np.sum(res.robust))
    ckpt = tmp_path / "c.json"
    f = sm.model(W)
    jaxadv.evaluate(f, x, y, batch_size=16, checkpoint=ckpt, diagnose=True, **kw)
    with pytest.raises(ValueError, match="diagnose=True"):
        jaxadv.evaluate(f, x, y, batch_size=16, checkpoint=ckpt, resume=True, **kw)
    with pytest.raises(ValueError, match="diagnose must be"):
        jaxadv.evaluate(f, x, y, diagnose=1, **kw)  # type: ignore[arg-type]


# --- the adaptive re-attack --------------------------------------------------------------


def _exact_robust(x: Any, y: Any, eps: float) -> np.ndarray:
    """Correctly classified and farther than ``eps`` (L-inf) from every other class of the
    linear model: the robust examples of the optimal attack (the box does not bind: ``x``
    lies in [0.05, 0.95] and ``eps`` = 0.05)."""
    xf = np.asarray(x).reshape(len(x), -1).astype(np.float64)
    z, yy = xf @ W, np.asarray(y)
    far = np.ones(len(yy), bool)
    for j in range(W.shape[1]):
        other = yy != j
        gap = z[other, yy[other]] - z[other, j]
        far[other] &= gap / np.abs(W[:, yy[other]] - W[:, [j]]).sum(0) > eps
    return far & (z.argmax(1) == yy)


@pytest.mark.slow  # large budgets: Square with 10,000 queries, EOT over 100 draws
def test_adaptive_reattacks_a_masked_model_and_keeps_both_figures() -> None:
    x, y = _data()
    f = sm.model(W)
    blind = lambda v: f(jax.lax.stop_gradient(v))  # noqa: E731
    kw = {"eps": EPS, "suite": ["fgsm"], "key": jax.random.key(0), "progress": False, "checks": False}
    exact = np.mean(_exact_robust(x, y, EPS))
    res = jaxadv.evaluate(blind, x, y, adaptive=True, **kw)
    assert res.indicators is not None and res.adaptive is not None  # adaptive diagnoses
    assert res.robust_accuracy == res.clean_accuracy > exact  # the suite's figure, kept
    # Without a surrogate the gradient-free fix runs; it cannot beat the optimal attack.
    assert set(res.adaptive.ran) == {"black-box"}
    assert exact <= res.adaptive_robust_accuracy < res.robust_accuracy
    assert not np.any(res.adaptive.fooled & ~res.robust)  # only examples counted robust
    assert res.adaptive.fooled_by_fix["black-box"] == int(np.sum(res.adaptive.fooled))
    # Through the surrogate (the model itself, differentiable), BPDA's APGD finds the
    # optimal attack of the linear model: the exact robust accuracy.
    res = jaxadv.evaluate(blind, x, y, adaptive=True, surrogate_fn=f, **kw)
    assert res.adaptive is not None and list(res.adaptive.ran)[0] == "bpda"
    assert res.adaptive_robust_accuracy == pytest.approx(exact)
    assert "adaptive re-attack" in res.summary()
    back = jaxadv.EvaluationResult.from_dict(res.to_dict())
    assert back.adaptive_robust_accuracy == res.adaptive_robust_accuracy
    assert back.adaptive is not None and back.adaptive.ran == res.adaptive.ran


def test_adaptive_follows_up_what_the_suite_missed(tmp_path: Any) -> None:
    x, y = _data()
    f = sm.model(W)
    kw = {"key": jax.random.key(0), "progress": False, "checks": False}
    # FGSM keeps no trace: the margin's diagnostic attack fools examples it missed
    # (silent successes), which the longer APGD-DLR of "more-steps" then fools.
    res = jaxadv.evaluate(f, x, y, eps=EPS, suite=["fgsm"], adaptive=True, **kw)
    assert res.adaptive is not None and res.indicators is not None
    assert set(res.adaptive.ran) <= {"more-steps"}
    missed = res.indicators["silent_success"] & res.robust
    assert res.adaptive.ran.get("more-steps", 0) == int(np.sum(res.untrusted() & res.robust))
    assert np.all(res.adaptive.fooled[missed])
    assert np.mean(_exact_robust(x, y, EPS)) <= res.adaptive_robust_accuracy <= res.robust_accuracy
    # Nothing flagged (a radius too small to fool anything): nothing re-attacked.
    res = jaxadv.evaluate(f, x, y, eps=1e-4, suite=["fgsm"], adaptive=True, **kw)
    assert res.adaptive is not None and res.adaptive.ran == {}
    assert res.adaptive_robust_accuracy == res.robust_accuracy
    with pytest.raises(ValueError, match="adaptive=True"):
        jaxadv.evaluate(f, x, y, eps=EPS, suite=["fgsm"], surrogate_fn=f, **kw)
    with pytest.raises(ValueError, match="surrogate_fn must be a model"):
        jaxadv.evaluate(f, x, y, eps=EPS, suite=["fgsm"], adaptive=True, surrogate_fn="f", **kw)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="adaptive must be True or False"):
        jaxadv.evaluate(f, x, y, eps=EPS, suite=["fgsm"], adaptive=1, **kw)  # type: ignore[arg-type]


def test_adaptive_with_a_checkpoint_resumes_to_the_same_report(tmp_path: Any, monkeypatch: Any) -> None:
    x, y = _data()
    f = sm.model(W)
    kw: dict[str, Any] = {
        "eps": EPS, "suite": ["fgsm"], "key": jax.random.key(0), "progress": False, "checks": False,
        "batch_size": 8,
    }  # fmt: skip
    whole = jaxadv.evaluate(f, x, y, adaptive=True, **kw)
    assert whole.adaptive is not None and sum(whole.adaptive.ran.values()) > 0
    # Killed in its third batch, then resumed: the flagged examples of the first two
    # batches are read again from the data and re-attacked with those of the rest.
    path = tmp_path / "run.json"
    real = evaluate_module._evaluate_batch
    calls = {"n": 0}

    def killed_in_the_third_batch(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluate_module, "_evaluate_batch", killed_in_the_third_batch)
    with pytest.raises(KeyboardInterrupt):
        jaxadv.evaluate(f, x, y, adaptive=True, checkpoint=path, **kw)
    monkeypatch.setattr(evaluate_module, "_evaluate_batch", real)
    resumed = jaxadv.evaluate(f, x, y, adaptive=True, checkpoint=path, resume=True, **kw)
    assert resumed.sessions == 2 and resumed.adaptive is not None
    np.testing.assert_array_equal(resumed.adaptive.fooled, whole.adaptive.fooled)
    assert resumed.adaptive.ran == whole.adaptive.ran
    assert resumed.adaptive_robust_accuracy == whole.adaptive_robust_accuracy
    # A complete checkpoint keeps the report; resuming it returns it as it is.
    again = jaxadv.evaluate(f, x, y, adaptive=True, checkpoint=path, resume=True, **kw)
    assert again.adaptive is not None and again.adaptive.ran == whole.adaptive.ran
    # A run that only diagnosed gets its re-attack when resumed with adaptive=True.
    diagnosed = tmp_path / "diagnosed.json"
    assert jaxadv.evaluate(f, x, y, diagnose=True, checkpoint=diagnosed, **kw).adaptive is None
    late = jaxadv.evaluate(f, x, y, adaptive=True, checkpoint=diagnosed, resume=True, **kw)
    assert late.adaptive is not None
    np.testing.assert_array_equal(late.adaptive.fooled, whole.adaptive.fooled)
    assert jaxadv.EvaluationResult.load(diagnosed).adaptive is not None


@pytest.mark.slow  # large budgets: Square with 10,000 queries, EOT over 100 draws
def test_adaptive_attacks_a_randomised_model_with_eot_only() -> None:
    x, y = _data(n=16, wrong=0)
    noisy = jax.tree_util.Partial(sm.input_dropout_apply, (jnp.asarray(W), jnp.zeros(W.shape[1])))
    kw = {"eps": EPS, "key": jax.random.key(0), "progress": False, "checks": False, "randomized": True}
    res = jaxadv.evaluate(noisy, x, y, suite=["apgd-ce-eot20"], adaptive=True, **kw)
    assert res.adaptive is not None and res.indicators is not None
    flagged = int(np.sum(res.untrusted() & res.robust))
    assert flagged > 0  # dropout on the inputs: unstable predictions
    assert res.adaptive.ran == {"eot": flagged}
    assert res.adaptive_robust_accuracy <= res.robust_accuracy
