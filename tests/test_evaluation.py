"""jaxadv.evaluate and the evaluation tools: per-example worst case, flags that agree
with re-prediction, streaming and resuming, sweeps, minimal eps and masking checks."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import small_models as sm

import jaxadv
from jaxadv.evaluation import (
    MISCLASSIFIED,
    EvaluationResult,
    SuiteAttack,
    accuracy_curve,
    accuracy_vs_eps,
    masking_checks,
    minimal_eps,
)

N = 96  # examples used from the digits test split


@pytest.fixture(scope="module")
def data(digits: Any) -> tuple[np.ndarray, np.ndarray]:
    test = digits[1]
    return test.x[:N], test.y[:N]


def _bim(steps: int) -> SuiteAttack:
    def run(logits_fn: Any, x: Any, y: Any, *, key: Any, eps: Any, norm: Any, bounds: Any) -> Any:
        del key
        return jaxadv.bim(logits_fn, x, y, eps=eps, steps=steps, norm=norm, bounds=bounds)

    return SuiteAttack(f"bim-{steps}", run)


@pytest.mark.slow
def test_worst_case_over_deterministic_suite(cnn: Any, data: Any) -> None:
    x, y = data
    key = jax.random.key(0)
    suite = ["fgsm", _bim(5), _bim(10)]
    res = jaxadv.evaluate(cnn.logits_fn, x, y, eps=0.1, suite=suite, key=key, progress=False, checks=False)
    alone = {}
    for member in suite:
        r = jaxadv.evaluate(
            cnn.logits_fn, x, y, eps=0.1, suite=[member], key=key, progress=False, checks=False
        )
        alone[r.attacks[0]] = r
        # An example robust to the suite is robust to each member (deterministic attacks).
        assert np.all(r.robust[res.robust])
        assert res.robust_accuracy <= r.robust_accuracy
    # Cumulative accuracy never rises along the suite and ends at the worst case.
    after = list(res.robust_accuracy_after().values())
    assert all(a >= b for a, b in zip(after, after[1:], strict=False))
    assert after[-1] == pytest.approx(res.robust_accuracy)
    assert res.clean_accuracy == pytest.approx(
        float(np.mean(np.asarray(jaxadv.predict(cnn.logits_fn, x)) == y))
    )


@pytest.mark.slow
def test_flags_agree_with_repredicting_stored_examples(cnn: Any, data: Any) -> None:
    x, y = data
    res = jaxadv.evaluate(
        cnn.logits_fn,
        x,
        y,
        eps=0.1,
        suite="fast",
        key=jax.random.key(1),
        batch_size=40,  # uneven last batch
        progress=False,
        checks=False,
        store_adversarial=True,
    )
    assert res.x_adv is not None and res.x_adv.shape == x.shape
    pred = np.asarray(jaxadv.predict(cnn.logits_fn, res.x_adv))
    np.testing.assert_array_equal(pred == y, res.robust)
    assert np.all(np.abs(res.x_adv - x).reshape(N, -1).max(axis=1) <= 0.1 + 1e-6)
    # Perturbation norms are those of the stored examples.
    norms = np.abs(res.x_adv - x).reshape(N, -1).max(axis=1)
    np.testing.assert_allclose(res.perturbation_norm, np.where(res.fooled_by >= 0, norms, 0.0), atol=1e-6)


def test_misclassified_examples_are_counted_and_not_attacked(cnn: Any, data: Any) -> None:
    x, y = data
    y = y.copy()
    y[:7] = (y[:7] + 1) % 10  # the model now "misclassifies" these seven
    seen: list[int] = []

    def spy(logits_fn: Any, xs: Any, ys: Any, *, key: Any, eps: Any, norm: Any, bounds: Any) -> Any:
        seen.append(int(np.sum(np.asarray(jaxadv.predict(logits_fn, xs)) != np.asarray(ys))))
        return xs

    res = jaxadv.evaluate(
        cnn.logits_fn,
        x,
        y,
        eps=0.1,
        suite=[SuiteAttack("spy", spy)],
        key=jax.random.key(0),
        progress=False,
        checks=False,
    )
    assert res.num_misclassified >= 7
    assert np.all(res.fooled_by[:7] == MISCLASSIFIED)
    assert seen == [0]  # only correctly classified examples reach the attack
    assert "misclassified" in res.summary()


def test_attack_leaving_the_ball_is_refused(cnn: Any, data: Any) -> None:
    x, y = data

    def cheat(logits_fn: Any, xs: Any, ys: Any, *, key: Any, eps: Any, norm: Any, bounds: Any) -> Any:
        return np.clip(xs + 2 * eps, 0, 1)

    with pytest.raises(RuntimeError, match="outside the threat model"):
        jaxadv.evaluate(
            cnn.logits_fn,
            x,
            y,
            eps=0.1,
            suite=[SuiteAttack("cheat", cheat)],
            key=jax.random.key(0),
            progress=False,
            checks=False,
        )


def test_iterator_of_batches_equals_arrays(cnn: Any, data: Any) -> None:
    x, y = data
    kw: dict[str, Any] = dict(
        eps=0.1, suite=["fgsm", _bim(5)], key=jax.random.key(0), progress=False, checks=False
    )
    a = jaxadv.evaluate(cnn.logits_fn, x, y, batch_size=32, **kw)
    gen = ((x[i : i + 32], y[i : i + 32]) for i in range(0, N, 32))
    b = jaxadv.evaluate(cnn.logits_fn, gen, None, batch_size=32, **kw)
    np.testing.assert_array_equal(a.fooled_by, b.fooled_by)


def test_checkpoint_streams_and_resumes(cnn: Any, data: Any, tmp_path: Any) -> None:
    x, y = data
    ckpt = tmp_path / "partial.json"
    calls = {"n": 0}

    def flaky(logits_fn: Any, xs: Any, ys: Any, *, key: Any, eps: Any, norm: Any, bounds: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # the run is interrupted during the third batch
        return jaxadv.bim(logits_fn, xs, ys, eps=eps, steps=5, norm=norm, bounds=bounds)

    kw: dict[str, Any] = dict(eps=0.1, key=jax.random.key(0), batch_size=32, progress=False, checks=False)
    with pytest.raises(KeyboardInterrupt):
        jaxadv.evaluate(cnn.logits_fn, x, y, suite=[SuiteAttack("bim-5", flaky)], checkpoint=ckpt, **kw)
    partial = EvaluationResult.load(ckpt)
    assert partial.num_examples == 64  # two batches saved
    resumed = jaxadv.evaluate(
        cnn.logits_fn, x, y, suite=[SuiteAttack("bim-5", flaky)], checkpoint=ckpt, resume=True, **kw
    )
    full = jaxadv.evaluate(cnn.logits_fn, x, y, suite=[_bim(5)], **kw)
    np.testing.assert_array_equal(resumed.fooled_by, full.fooled_by)
    with pytest.raises(ValueError, match="another eps"):
        jaxadv.evaluate(
            cnn.logits_fn, x, y, suite=[_bim(5)], checkpoint=ckpt, resume=True, **{**kw, "eps": 0.2}
        )


def test_result_json_roundtrip_and_summary(cnn: Any, data: Any, tmp_path: Any) -> None:
    x, y = data
    res = jaxadv.evaluate(
        cnn.logits_fn, x, y, eps=0.05, suite=["fgsm"], key=jax.random.key(0), progress=False, checks=False
    )
    res.save(tmp_path / "r.json")
    back = EvaluationResult.load(tmp_path / "r.json")
    np.testing.assert_array_equal(back.fooled_by, res.fooled_by)
    assert back.robust_accuracy == res.robust_accuracy
    text = res.summary()
    assert f"{res.robust_accuracy:.2%}" in text and "after fgsm" in text


def test_bad_arguments(cnn: Any, data: Any) -> None:
    x, y = data
    kw: dict[str, Any] = dict(key=jax.random.key(0), progress=False, checks=False)
    with pytest.raises(ValueError, match="suite"):
        jaxadv.evaluate(cnn.logits_fn, x, y, eps=0.1, suite="nope", **kw)
    with pytest.raises(ValueError, match="unknown attack"):
        jaxadv.evaluate(cnn.logits_fn, x, y, eps=0.1, suite=["nope"], **kw)
    with pytest.raises(ValueError, match="eps"):
        jaxadv.evaluate(cnn.logits_fn, x, y, eps=-0.1, suite="fast", **kw)
    with pytest.raises(ValueError, match="norm"):
        jaxadv.evaluate(cnn.logits_fn, x, y, eps=0.1, norm="l3", suite="fast", **kw)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="same number"):
        jaxadv.evaluate(cnn.logits_fn, x, y[:5], eps=0.1, suite="fast", **kw)


@pytest.mark.slow
@pytest.mark.full_optimization
def test_eps_sweep_in_one_program_matches_separate_calls(cnn: Any, data: Any) -> None:
    x, y = data
    key = jax.random.key(3)
    eps_values = [0.0, 0.05, 0.1, 0.2]
    sweep = accuracy_vs_eps(cnn.logits_fn, x, y, eps_values=eps_values, key=key, steps=10)
    separate = [
        float(
            np.mean(
                np.asarray(
                    jaxadv.predict(cnn.logits_fn, jaxadv.pgd(cnn.logits_fn, x, y, key=key, eps=e, steps=10))
                )
                == y
            )
        )
        for e in eps_values
    ]
    np.testing.assert_allclose(sweep, separate, atol=1.5 / N)
    assert sweep[0] == pytest.approx(float(np.mean(np.asarray(jaxadv.predict(cnn.logits_fn, x)) == y)))
    assert np.all(np.diff(sweep) <= 1.0 / N)


def _two_class_linear() -> tuple[Any, np.ndarray, np.ndarray]:
    """Logits ``[0, x.w]`` for 12 random weights ``w``, and 20 inputs in ``[-1, 1]``."""
    rng = np.random.default_rng(0)
    d = 12
    w = rng.normal(size=(d,)).astype(np.float32)
    x = rng.uniform(-1, 1, size=(20, d)).astype(np.float32)
    return sm.binary(w), x, w


def test_minimal_eps_on_a_linear_model_is_the_analytic_margin() -> None:
    f, x, w = _two_class_linear()
    y = (x @ w > 0).astype(np.int32)
    # Logit difference is x.w; the smallest L-inf change flipping its sign is |x.w| / ||w||_1.
    expected = np.abs(x @ w) / np.abs(w).sum()
    got = minimal_eps(
        f, x, y, eps_max=2.0, key=jax.random.key(0), steps=30, iterations=12, bounds=(-10.0, 10.0)
    )
    np.testing.assert_allclose(got, expected, atol=2.0 / 2**12 + 2e-3)
    curve = accuracy_curve(got, [0.0, np.median(expected), 10.0])
    assert curve[0] == 1.0 and curve[2] == 0.0 and 0.3 < curve[1] < 0.7


@pytest.mark.parametrize("attack", ["fmn", "fab", "deepfool"])
def test_minimal_eps_from_one_minimal_norm_run_is_the_analytic_margin(attack: str, tmp_path: Any) -> None:
    # The same two-class linear model: the L2 margin |x.w| / ||w||_2 in closed form.
    f, x, w = _two_class_linear()
    y = (x @ w > 0).astype(np.int32)
    y[:2] = 1 - y[:2]  # two examples misclassified from the start: radius 0
    expected = np.abs(x @ w) / np.linalg.norm(w)
    expected[:2] = 0.0
    kw: dict[str, Any] = dict(norm="l2", attack=attack, bounds=(-10.0, 10.0), key=jax.random.key(0))
    got = minimal_eps(f, x, y, **kw)
    np.testing.assert_allclose(got, expected, rtol=0.01 if attack != "deepfool" else 0.03, atol=1e-4)
    # A cap turns larger radii into "not found"; the curve and its plot follow.
    cap = float(np.median(expected))
    capped = minimal_eps(f, x, y, eps_max=cap, **kw)
    assert np.all(np.isinf(capped[got > cap * 1.001])) and np.all(
        capped[got <= cap * 0.999] == got[got <= cap * 0.999]
    )
    eps_grid = [0.0, cap, 10.0]
    curve = accuracy_curve(got, eps_grid)
    assert curve[0] == 0.9 and curve[2] == 0.0
    fig = jaxadv.evaluation.plot_accuracy_vs_eps(
        eps_grid, {attack: curve}, norm="l2", path=tmp_path / "c.png"
    )
    assert (tmp_path / "c.png").stat().st_size > 0 and len(fig.axes[0].lines) == 1


def test_minimal_eps_takes_a_callable_and_refuses_bad_attacks() -> None:
    f = sm.binary([1.0, 0.0])
    x = np.asarray([[0.3, 0.0], [-0.2, 0.0]], np.float32)
    y = np.asarray([1, 0], np.int32)

    def flip(logits_fn: Any, x: Any, y: Any) -> Any:  # crosses x_0 = 0 by 0.1 past it
        return x.at[:, 0].set(-jnp.sign(x[:, 0]) * 0.1)

    np.testing.assert_allclose(minimal_eps(f, x, y, attack=flip, norm="linf"), [0.4, 0.3], rtol=1e-6)
    # One coordinate moves: L0 radius 1, whatever the spelling of the norm.
    for spelling in ("l0", "L0"):
        np.testing.assert_array_equal(minimal_eps(f, x, y, attack=flip, norm=spelling), [1.0, 1.0])
    with pytest.raises(ValueError, match="attack must be"):
        minimal_eps(f, x, y, attack="nope")
    with pytest.raises(ValueError, match="needs eps_max and key"):
        minimal_eps(f, x, y)
    with pytest.raises(ValueError, match="pass key"):
        minimal_eps(f, x, y, attack="fab", norm="l2")


def _masked_apply(inner: Any) -> Any:
    def apply(x: Any) -> Any:
        # Rounding the input hides the gradient (zero almost everywhere).
        return inner(jnp.round(x * 4.0) / 4.0)

    return apply


@pytest.mark.slow
def test_masking_checks_fire_on_a_masked_model(cnn: Any, data: Any) -> None:
    x, y = data
    masked = _masked_apply(cnn.logits_fn)
    correct = np.asarray(jaxadv.predict(masked, x)) == y
    report = masking_checks(
        masked, x[correct][:48], y[correct][:48], eps=0.15, norm="linf", key=jax.random.key(0)
    )
    text = " ".join(report.warnings)
    assert "large eps" in text, report
    assert "black-box" in text, report


@pytest.mark.slow
def test_masking_checks_quiet_on_a_normal_model(cnn: Any, data: Any) -> None:
    x, y = data
    report = masking_checks(cnn.logits_fn, x[:48], y[:48], eps=0.1, norm="linf", key=jax.random.key(0))
    assert report.warnings == [], report
    assert report.figures["accuracy_at_large_eps"] <= 0.05


@pytest.mark.slow
def test_randomised_model_is_flagged(cnn: Any, data: Any) -> None:
    x, y = data
    state = {"rng": np.random.default_rng(0)}

    def noisy_np(xs: np.ndarray) -> np.ndarray:
        return np.asarray(jaxadv.logits(cnn.logits_fn, xs)) + state["rng"].normal(
            size=(xs.shape[0], 10)
        ).astype(np.float32)

    noisy = jaxadv.from_callable(noisy_np, num_classes=10)
    report = masking_checks(noisy, x[:16], y[:16], eps=0.1, norm="linf", key=jax.random.key(0))
    assert any("randomised" in w for w in report.warnings)
