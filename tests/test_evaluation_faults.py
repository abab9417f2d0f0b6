"""jaxadv.evaluate on bad inputs and misbehaving attacks: every number right, or a clear error.

A tiny linear model on 8x8 inputs (``tests/small_models.py``) keeps each case to
about a second: non-finite candidates are failed attacks, half-precision inputs
are judged with their rounding allowance, checks that do not apply are skipped,
and inputs the evaluation cannot give a meaning to are refused with a message.
"""

from __future__ import annotations

import importlib
import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import small_models as sm

import jaxadv
from jaxadv.evaluation import MISCLASSIFIED, ROBUST, SuiteAttack
from jaxadv.evaluation.diagnostics import _square_unsupported
from jaxadv.evaluation.suites import resolve_suite

evaluate_module = importlib.import_module("jaxadv.evaluation.evaluate")

W = sm.random_weights(0, features=64, classes=4)
KW: dict[str, Any] = dict(key=jax.random.key(0), progress=False, checks=False)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    x = np.random.default_rng(0).uniform(0, 1, (40, 8, 8)).astype(np.float32)
    return x, np.asarray(jaxadv.predict(sm.model(W), x))


def _nan_attack(logits_fn: Any, x: Any, y: Any, *, key: Any, eps: Any, norm: Any, bounds: Any) -> Any:
    return jnp.full_like(x, jnp.nan)


def _half_nan_attack(logits_fn: Any, x: Any, y: Any, *, key: Any, eps: Any, norm: Any, bounds: Any) -> Any:
    # Far outside the ball on the NaN/inf rows: only finite rows are judged.
    bad = jnp.where(jnp.arange(x.shape[0]) % 2 == 0, jnp.nan, jnp.inf)[:, None, None]
    return jnp.where(jnp.arange(x.shape[0])[:, None, None] < x.shape[0] // 2, bad, x)


@pytest.mark.slow
def test_nan_candidates_are_failed_attacks_and_reported(data: Any, tmp_path: Any) -> None:
    x, y = data
    f = sm.model(W)
    res = jaxadv.evaluate(f, x, y, eps=0.1, suite=[SuiteAttack("nan", _nan_attack)], **KW)
    assert res.clean_accuracy == 1.0
    assert res.robust_accuracy == 1.0  # nothing was shown adversarial
    assert res.non_finite == {"nan": len(x)}
    assert any("non-finite" in w and "'nan'" in w for w in res.warnings)
    res.save(tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text())["non_finite"] == {"nan": len(x)}

    # Rows with NaN or inf never trip the feasibility check; the finite rows still count.
    mixed = jaxadv.evaluate(
        f, x, y, eps=0.1, suite=[SuiteAttack("half", _half_nan_attack), "fgsm"], batch_size=16, **KW
    )
    alone = jaxadv.evaluate(f, x, y, eps=0.1, suite=["fgsm"], batch_size=16, **KW)
    assert mixed.non_finite["half"] > 0 and mixed.non_finite["fgsm"] == 0
    np.testing.assert_array_equal(mixed.robust, alone.robust)


@pytest.mark.slow
def test_huge_logits_never_turn_nan_into_success(data: Any) -> None:
    x, y = data
    w = jnp.asarray(W)

    def f(xs: Any) -> Any:
        return (xs.reshape(xs.shape[0], -1) @ w) * 1e12

    dist = sm.distance_to_boundary(x, W, "linf")
    eps = float(np.median(dist))
    res = jaxadv.evaluate(f, x, y, eps=eps, suite=["pgd-20"], store_adversarial=True, **KW)
    # Sound: no example beyond eps from the boundary is reported fooled, whatever the attack produced.
    assert np.all(res.robust[dist > eps * (1 + 1e-3)])
    fooled = res.fooled_by >= 0
    assert res.x_adv is not None and np.all(np.isfinite(res.x_adv))
    assert np.all(np.asarray(jaxadv.predict(f, res.x_adv[fooled])) != y[fooled])
    assert res.non_finite["pgd-20"] == 0 or any("non-finite" in w for w in res.warnings)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16], ids=["bf16", "f16"])
# The standard suite (APGD-CE, APGD-T, FAB-T, Square): the slow tier.
@pytest.mark.parametrize("suite", ["fast", pytest.param("standard", marks=pytest.mark.slow)])
def test_half_precision_inputs_are_judged_with_their_rounding(data: Any, dtype: Any, suite: str) -> None:
    x, y = data
    xh = np.asarray(jnp.asarray(x[:24], dtype))
    eps = 0.05
    res = jaxadv.evaluate(sm.model(W), xh, y[:24], eps=eps, suite=suite, store_adversarial=True, **KW)
    assert res.x_adv is not None and res.x_adv.dtype == xh.dtype
    delta = np.abs(res.x_adv.astype(np.float32) - xh.astype(np.float32)).reshape(24, -1)
    # Inside the ball up to half an ulp of the dtype at the returned values (at most 2**-8 on [0, 1]).
    ulp_half = float(jnp.finfo(dtype).eps) / 2
    assert delta.max() <= eps + ulp_half
    assert 0 < np.sum(res.fooled_by >= 0) < 24
    # Exact: an example farther than eps from the linear boundary cannot be fooled.
    dist = sm.distance_to_boundary(xh.astype(np.float32), W, "linf")
    assert np.all(res.robust[dist > eps + ulp_half])


# Slow tier (14 s, Square's 5000 queries); tests/test_square.py checks L1 Square's ball and
# its exact bound on a linear model in the fast one.
@pytest.mark.slow
def test_l1_square_keeps_to_the_l1_ball_and_cannot_fool_a_distant_example(data: Any) -> None:
    # L1 Square is a member of the L1 standard suite: it runs in evaluate, stays in the
    # L1 ball, and an example farther than eps (exact L1 distance to the linear
    # boundary) is never fooled.
    x, y = data
    eps = 1.0
    res = jaxadv.evaluate(
        sm.model(W), x[:16], y[:16], eps=eps, norm="l1", suite=["square"], store_adversarial=True, **KW
    )
    assert res.x_adv is not None
    delta = np.abs(res.x_adv - x[:16]).reshape(16, -1).sum(axis=1)
    assert delta.max() <= eps * (1 + 1e-5)
    dist = sm.distance_to_boundary(x[:16], W, "l1")
    assert np.all(res.robust[dist > eps * (1 + 1e-5)])


def test_square_check_applies_to_image_shaped_inputs_in_every_norm() -> None:
    # Square covers L-inf, L2 and L1 (L1 Square is in the L1 suite), so the black-box
    # check is skipped only for inputs that are not image-shaped.
    for norm in ("linf", "l2", "l1"):
        assert _square_unsupported(norm, np.zeros((2, 8, 8, 1))) is None
        assert _square_unsupported(norm, np.zeros((2, 8, 8))) is None
        assert "image-shaped" in str(_square_unsupported(norm, np.zeros((2, 64))))


@pytest.mark.slow
def test_checks_that_do_not_apply_are_skipped(data: Any) -> None:
    x, y = data
    xs = x.reshape((len(x), 64))
    kw = {**KW, "checks": True, "check_size": 16}
    res = jaxadv.evaluate(sm.model(W), xs, y, eps=0.1, norm="linf", suite=["fgsm"], **kw)
    assert res.num_examples == len(x)
    assert "image-shaped" in res.checks["black_box_skipped"]
    assert any("black-box check skipped" in w for w in res.warnings)
    assert "accuracy_iterative" in res.checks  # the checks that apply still ran


def test_a_failing_check_never_loses_the_results(data: Any, tmp_path: Any, monkeypatch: Any) -> None:
    x, y = data

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise FloatingPointError("the check broke")

    monkeypatch.setattr(evaluate_module, "masking_checks", broken)
    ckpt = tmp_path / "c.json"
    kw = {**KW, "checks": True}
    res = jaxadv.evaluate(sm.model(W), x, y, eps=0.1, suite=["fgsm"], checkpoint=ckpt, **kw)
    assert res.num_examples == len(x)
    assert any("the check broke" in w for w in res.warnings)
    saved = json.loads(ckpt.read_text())
    assert saved["complete"] is True and saved["warnings"] == res.warnings


def test_bad_inputs_get_clear_errors(data: Any) -> None:
    x, y = data
    f = sm.model(W)
    kw = {k: v for k, v in KW.items() if k != "key"}
    run = {"eps": 0.1, "suite": ["fgsm"], **kw}
    key = jax.random.key(0)
    with pytest.raises(ValueError, match=r"key is required.*jax\.random\.key"):
        jaxadv.evaluate(f, x, y, key=None, **run)
    with pytest.raises(ValueError, match="integer class indices"):
        jaxadv.evaluate(f, x, y.astype(str), key=key, **run)
    with pytest.raises(ValueError, match=r"labels must be integers.*astype"):
        jaxadv.evaluate(f, x, y.astype(np.float32), key=key, **run)
    with pytest.raises(ValueError, match=r"labels must be < 4"):
        jaxadv.evaluate(f, x, np.where(np.arange(len(y)) == 5, 4, y), key=key, **run)
    with pytest.raises(ValueError, match=">= 0"):
        jaxadv.evaluate(f, x, np.where(np.arange(len(y)) == 5, -1, y), key=key, **run)
    x_nan = x.copy()
    x_nan[7, 3, 3] = np.nan
    with pytest.raises(ValueError, match=r"NaN or inf \(examples 0 to 39, example 7"):
        jaxadv.evaluate(f, x_nan, y, key=key, **run)
    with pytest.raises(ValueError, match=r"dtype uint8.*/ 255"):
        jaxadv.evaluate(f, (x * 255).astype(np.uint8), y, key=key, **run)
    soft = np.full((len(y), 4), 0.25, np.float32)
    with pytest.raises(ValueError, match="one-hot"):
        jaxadv.evaluate(f, x, soft, key=key, **run)
    gen = iter([(x_nan[:8], y[:8])])
    with pytest.raises(ValueError, match=r"batch 0"):
        jaxadv.evaluate(f, gen, None, key=key, **run)


def test_one_hot_labels_are_their_argmax(data: Any) -> None:
    x, y = data
    f = sm.model(W)
    onehot = np.eye(4, dtype=np.float32)[y]
    a = jaxadv.evaluate(f, x, onehot, eps=0.1, suite=["pgd-20"], **KW)
    b = jaxadv.evaluate(f, x, y, eps=0.1, suite=["pgd-20"], **KW)
    np.testing.assert_array_equal(a.fooled_by, b.fooled_by)


@pytest.mark.slow
def test_norm_aliases(data: Any) -> None:
    x, y = data
    f = sm.model(W)
    for alias, norm, eps in [("Linf", "linf", 0.1), ("L2", "l2", 0.5), ("L1", "l1", 2.0)]:
        a = jaxadv.evaluate(f, x, y, eps=eps, norm=alias, suite=["pgd-20"], **KW)  # type: ignore[arg-type]
        b = jaxadv.evaluate(f, x, y, eps=eps, norm=norm, suite=["pgd-20"], **KW)  # type: ignore[arg-type]
        assert a.norm == norm
        np.testing.assert_array_equal(a.fooled_by, b.fooled_by)


def test_short_repr_and_time_per_attack(data: Any, tmp_path: Any) -> None:
    x, y = data
    res = jaxadv.evaluate(sm.model(W), x, y, eps=0.1, suite="fast", store_adversarial=True, **KW)
    text = repr(res)
    assert "\n" not in text and len(text) < 300
    assert f"robust_accuracy={res.robust_accuracy:.4g}" in text and "n=40" in text
    assert "pgd-50-cw" in text
    assert set(res.seconds) == set(res.attacks) and res.seconds["pgd-20"] > 0
    assert "seconds per attack" in res.summary()
    res.save(tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text())["seconds"] == pytest.approx(res.seconds)


def test_robust_code_is_unchanged_for_untouched_examples(data: Any) -> None:
    # A suite member that returns its input unchanged fools nothing.
    x, y = data

    def identity(logits_fn: Any, xs: Any, ys: Any, *, key: Any, eps: Any, norm: Any, bounds: Any) -> Any:
        return xs

    res = jaxadv.evaluate(sm.model(W), x, y, eps=0.1, suite=[SuiteAttack("id", identity)], **KW)
    assert np.all(res.fooled_by == ROBUST) and res.non_finite == {"id": 0}


@pytest.mark.slow
def test_queries_of_a_member_returning_an_attack_result_are_counted(data: Any) -> None:
    """A suite member may return the array or an AttackResult; the result's query
    counts reach EvaluationResult.queries (the built-in Square returns one)."""
    x, y = data
    x, y = x[:6], y[:6]

    def counted(logits_fn: Any, x: Any, y: Any, *, key: Any, eps: Any, norm: Any, bounds: Any) -> Any:
        return jaxadv.square(
            logits_fn, x, y, key=key, eps=eps, queries=20, norm=norm, bounds=bounds, return_info=True
        )

    res = jaxadv.evaluate(sm.model(W), x, y, eps=0.05, suite=[SuiteAttack("sq-20", counted)], **KW)
    attacked = res.fooled_by != MISCLASSIFIED  # misclassified examples are not attacked
    assert np.all(res.queries[attacked] >= 1) and np.all(res.queries <= 20)
    assert np.all(res.queries[~attacked] == 0)
    out = resolve_suite(["square"])[0].run(
        sm.model(W), x, y, key=jax.random.key(0), eps=0.05, norm="linf", bounds=(0.0, 1.0)
    )
    assert isinstance(out, jaxadv.AttackResult) and out.queries is not None
