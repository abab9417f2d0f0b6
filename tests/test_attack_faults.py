"""Faults: inputs and models on which an attack must give a correct result or a clear error.

* Huge but finite logits (a linear model times 1e12 or 1e30): every gradient
  attack returns finite examples inside the ball and the box, and on a linear
  model it moves exactly where the sign of the true gradient points (the loss
  of a saturated example is not allowed to stall it at a zero gradient).
* A model that returns NaN logits for some rows: those rows come back equal to
  ``x`` and are never counted as successes; the other rows are attacked
  exactly as with a model that is finite everywhere.
* ``eps = inf``, infinite ``bounds``, an empty batch, a missing key, too few
  classes, bad labels, bad inputs, a Flax model given its ``params`` only, the
  norm spelled ``"Linf"``, and bfloat16 bounds the dtype cannot represent.

Every test runs on tiny linear models on ``[batch, 4, 4, 1]`` images.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import attack_registry as reg
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import small_models as sm
from attack_registry import BY_NAME, Spec, returns_info

import jaxadv
from jaxadv.attacks import apgd as apgd_module
from jaxadv.keys import row_keys
from jaxadv.success import as_returned

SHAPE = (4, 4, 1)
FEATURES = 16
KEY = jax.random.key(0)


def _weights(classes: int, seed: int = 0) -> np.ndarray:
    w = np.random.default_rng(seed).normal(size=(FEATURES, classes)).astype(np.float32)
    return w / np.float32(4.0)


def linear(classes: int = 4, scale: float = 1.0, seed: int = 0) -> Any:
    return sm.scaled(_weights(classes, seed), scale)


def _x(batch: int = 6, seed: int = 1) -> jax.Array:
    return jax.random.uniform(jax.random.key(seed), (batch, *SHAPE), minval=0.2, maxval=0.8)


def _adv(out: Any) -> jax.Array:
    return out.x_adv if hasattr(out, "x_adv") else out


#: Every case of the attack registry (tests/attack_registry.py): the attacks and their
#: variants, by name, with the registry's minimal calls. A new attack enters the fault
#: tests by its registry line.
CASES: dict[str, Spec] = {c.name: c for s in reg.ATTACKS for c in reg.expand(s)}
NAMES = [s.name for s in reg.ATTACKS]


def run(name: str, f: Any, x: Any, y: Any, **overrides: Any) -> Any:
    """Case ``name``'s registry call; black-box attacks return their success and query
    counts (``return_info=True``)."""
    spec = CASES[name]
    return reg.call(spec, f, x, y, info=spec.black_box, **overrides)


def eps_of(name: str) -> float:
    return float(CASES[name].kwargs["eps"])


GRADIENT = [c.name for c in CASES.values() if c.gradient]
BALL = {c.name for c in CASES.values() if c.has_ball}
BLACK_BOX = [s.name for s in reg.ATTACKS if s.black_box]


# --- 1. huge logits ------------------------------------------------------------------


@pytest.mark.parametrize("name", GRADIENT)
def test_huge_logits_give_finite_examples_in_the_ball(name: str) -> None:
    x = _x()
    y = jnp.asarray([0, 1, 2, 3, 0, 1])
    for scale in (1e12, 1e30):  # the scale is a traced parameter: one program for both
        x_adv = _adv(run(name, linear(4, scale), x, y))
        assert bool(jnp.all(jnp.isfinite(x_adv))), scale
        assert bool(jnp.all((x_adv >= 0.0) & (x_adv <= 1.0))), scale
        if name in BALL:
            norm = CASES[name].norm
            assert bool(jnp.all(jaxadv.norm_of(x_adv - x, norm) <= eps_of(name) * (1 + 1e-5))), scale


def _runner_up_sign(w: np.ndarray, x: jax.Array, y: jax.Array) -> np.ndarray:
    """sign(W_j - W_y) with j the highest logit other than y: where a saturated
    cross-entropy's gradient points."""
    z = np.asarray(sm.flat(x)) @ w
    z[np.arange(len(y)), np.asarray(y)] = -np.inf
    j = z.argmax(1)
    return np.sign(w[:, j].T - w[:, np.asarray(y)].T).reshape(x.shape)


@pytest.mark.parametrize("scale", [1e12, 1e30])
def test_fgsm_on_huge_logits_moves_along_the_true_gradient_sign(scale: float) -> None:
    w = _weights(4)
    x = _x()
    y = jnp.asarray([0, 1, 2, 3, 0, 1])
    wide = (-10.0, 10.0)
    x_adv = jaxadv.fgsm(linear(4, scale), x, y, eps=0.1, bounds=wide)
    np.testing.assert_array_equal(np.asarray(x_adv), np.asarray(x + 0.1 * _runner_up_sign(w, x, y)))


def test_two_class_fgsm_is_the_same_for_huge_and_unit_logits() -> None:
    x = _x()
    y = jnp.asarray([0, 1, 0, 1, 1, 0])
    np.testing.assert_array_equal(
        np.asarray(jaxadv.fgsm(linear(2, 1e12), x, y, eps=0.1)),
        np.asarray(jaxadv.fgsm(linear(2, 1.0), x, y, eps=0.1)),
    )


@pytest.mark.parametrize("name", ["fgsm", "bim", "mifgsm"])
def test_huge_logits_attack_succeeds_where_the_linear_model_says_it_must(name: str) -> None:
    w = _weights(4)
    x = _x()
    y = jaxadv.predict(linear(4), x)
    # Per example, 1.5x the L-inf distance to the runner-up class's boundary.
    z = np.asarray(sm.flat(x)) @ w
    yy = np.asarray(y)
    others = z.copy()
    others[np.arange(len(yy)), yy] = -np.inf
    j = others.argmax(1)
    dist = (z[np.arange(len(yy)), yy] - z[np.arange(len(yy)), j]) / np.abs(w[:, j] - w[:, yy]).sum(0)
    eps = jnp.asarray(1.5 * dist, jnp.float32)
    x_adv = np.asarray(run(name, linear(4, 1e12), x, y, eps=eps, bounds=(-10.0, 10.0)))
    assert np.all(np.isfinite(x_adv))
    assert np.all((x_adv.reshape(len(yy), -1) @ w).argmax(1) != yy)


@pytest.mark.parametrize("scale", [1e12, 1e30, 3e37])
def test_losses_and_gradients_of_huge_logits_are_finite_under_jit(scale: float) -> None:
    f = linear(4, scale)
    x = _x()
    y = jnp.asarray([0, 1, 2, 3, 0, 1])
    losses = [jaxadv.cross_entropy, jaxadv.cw_margin, jaxadv.dlr]
    for loss in losses:
        for targeted in (False, True):
            value, z, g = jax.jit(
                lambda x_, loss=loss, targeted=targeted: jaxadv.gradients.loss_and_grad(
                    f, x_, y, loss=loss, targeted=targeted
                )
            )(x)
            assert bool(jnp.all(jnp.isfinite(value))), loss
            assert bool(jnp.all(jnp.isfinite(g))), loss
            if loss is not jaxadv.dlr:  # DLR is constant (1) where y ranks third
                assert bool(jnp.all(jnp.any(g != 0, axis=(1, 2, 3)))), loss
    signed = jax.nn.one_hot(y, 4) - jax.nn.one_hot((y + 1) % 4, 4)
    z = jaxadv.logits(f, x)
    g = jax.jit(jax.grad(lambda z_: jnp.sum(jaxadv.dlr_targeted(z_, signed))))(z)
    assert bool(jnp.all(jnp.isfinite(jaxadv.dlr_targeted(z, signed)))) and bool(jnp.all(jnp.isfinite(g)))


@pytest.mark.parametrize("magnitude", [1e12, 1e20, 1e30, 3e38, np.inf])
def test_directions_and_norms_of_huge_gradients(magnitude: float) -> None:
    g = jnp.asarray(np.random.default_rng(0).normal(size=(3, *SHAPE)), jnp.float32)
    g = g.at[:, 0, 0, 0].set(magnitude).at[1].multiply(1e-3)
    unit = {"l2": 1.0, "l1": 1.0}
    for norm, expected in unit.items():
        d = jaxadv.threat_models.steepest_direction(g, norm)  # type: ignore[arg-type]
        assert bool(jnp.all(jnp.isfinite(d)))
        np.testing.assert_allclose(np.asarray(jaxadv.norm_of(d, norm)), expected, rtol=1e-5)  # type: ignore[arg-type]
    if np.isfinite(magnitude):
        n = jaxadv.norm_of(g, "l2")
        assert bool(jnp.all(jnp.isfinite(n))) and bool(jnp.all(n >= magnitude * 1e-3))
    p = jaxadv.threat_models.project(g, 0.5, "l2")
    assert bool(jnp.all(jnp.isfinite(p)))
    np.testing.assert_allclose(np.asarray(jaxadv.norm_of(p, "l2")), 0.5, rtol=1e-5)
    p1 = jaxadv.threat_models.project(g, 0.5, "l1")
    assert bool(jnp.all(jnp.isfinite(p1)))
    np.testing.assert_allclose(np.asarray(jaxadv.norm_of(p1, "l1")), 0.5, rtol=1e-5)


def test_scaled_norms_and_directions_equal_the_plain_formulas_for_ordinary_values() -> None:
    g = jnp.asarray(np.random.default_rng(3).normal(size=(5, *SHAPE)), jnp.float32)
    flat = sm.flat(g)
    np.testing.assert_array_equal(
        np.asarray(jaxadv.norm_of(g, "l2")), np.asarray(jnp.sqrt(jaxadv.threat_models.row_sum(flat * flat)))
    )
    n = jnp.sqrt(jaxadv.threat_models.row_sum(flat * flat))[:, None]
    np.testing.assert_array_equal(
        np.asarray(jaxadv.threat_models.steepest_direction(g, "l2")), np.asarray((flat / n).reshape(g.shape))
    )


# --- 2. NaN rows ------------------------------------------------------------------------


def _nan_problem() -> tuple[Any, Any, jax.Array, jax.Array, np.ndarray]:
    w = jnp.asarray(_weights(4))
    x = _x(8)
    bad = np.array([False, True, False, False, True, False, True, False])
    # First feature 0.9 (NaN logits in the whole eps-ball) or at most 0.3.
    x = x.at[:, 0, 0, 0].set(jnp.where(jnp.asarray(bad), 0.9, 0.25))
    y = jaxadv.predict(linear(4), x)
    return jaxadv.from_apply(sm.nan_rows_apply, w), linear(4), x, y, bad


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_rows_with_nan_logits_come_back_unchanged_and_the_others_are_unaffected(name: str) -> None:
    f_nan, _, x, y, bad = _nan_problem()
    out_nan = run(name, f_nan, x, y)
    # The same batch with the NaN rows made finite: the other rows must not notice.
    out = run(name, f_nan, x.at[:, 0, 0, 0].set(0.25), y)
    x_nan, x_ref = np.asarray(_adv(out_nan)), np.asarray(_adv(out))
    assert np.all(np.isfinite(x_nan))
    np.testing.assert_array_equal(x_nan[bad], np.asarray(x)[bad])
    np.testing.assert_allclose(x_nan[~bad], x_ref[~bad], rtol=0, atol=1e-6)
    assert not bool(jnp.any(jaxadv.is_adversarial(f_nan, x_nan, y)[bad]))
    if name in BLACK_BOX:
        assert not np.any(np.asarray(out_nan.success)[bad])
        np.testing.assert_array_equal(np.asarray(out_nan.queries)[bad], 1)
        np.testing.assert_array_equal(np.asarray(out_nan.success)[~bad], np.asarray(out.success)[~bad])
        np.testing.assert_array_equal(np.asarray(out_nan.queries)[~bad], np.asarray(out.queries)[~bad])


@pytest.mark.parametrize("name", [s.name for s in reg.ATTACKS if s.keeps_best])
def test_points_with_nan_logits_are_never_kept(name: str) -> None:
    f_nan, _, x, y, _ = _nan_problem()
    # Every example sits just below the NaN region: the ball reaches into it.
    x = x.at[:, 0, 0, 0].set(0.45)
    y = jaxadv.predict(linear(4), x)
    kwargs = {"eps": 0.3} if name in BALL else {}
    out = run(name, f_nan, x, y, **kwargs)
    x_adv = _adv(out)
    assert bool(jnp.all(jnp.isfinite(x_adv)))
    finite = jnp.all(jnp.isfinite(jaxadv.logits(f_nan, x_adv)), axis=1)
    assert bool(jnp.all(finite | jnp.all(x_adv == x, axis=(1, 2, 3))))
    if name in BLACK_BOX:
        np.testing.assert_array_equal(
            np.asarray(out.success), np.asarray(jaxadv.is_adversarial(f_nan, x_adv, y))
        )


@pytest.mark.parametrize(
    ("name", "targeted"), [(name, False) for name in sorted(BLACK_BOX)] + [("square", True), ("spsa", True)]
)
def test_black_box_success_on_an_exact_tie_agrees_with_is_adversarial(name: str, targeted: bool) -> None:
    # True class 1 tied with class 0, which argmax picks: the clean input is already
    # misclassified (and classified as target 0). A margin test (z_y - max_j z_j < 0)
    # would call it robust; the attacks must agree with re-prediction instead.
    f, x = jaxadv.from_apply(sm.tie_apply, jnp.float32(1.0)), _x(3)
    y = jnp.full((3,), 0 if targeted else 1, jnp.int32)
    out = run(name, f, x, y, targeted=targeted)
    np.testing.assert_array_equal(
        np.asarray(out.success), np.asarray(jaxadv.is_adversarial(f, out.x_adv, y, targeted=targeted))
    )
    assert bool(jnp.all(out.success))
    np.testing.assert_array_equal(np.asarray(out.queries), 1)  # stopped at the clean query
    np.testing.assert_array_equal(np.asarray(out.x_adv), np.asarray(x))


def test_is_adversarial_is_false_for_non_finite_logits() -> None:
    def odd(x: jax.Array) -> jax.Array:
        z = jnp.stack([jnp.zeros(x.shape[0]), jnp.ones(x.shape[0])], axis=1)
        return z.at[0, 0].set(jnp.nan).at[1, 0].set(jnp.inf).at[2, 1].set(-jnp.inf)

    x = jnp.zeros((4, 2))
    y = jnp.asarray([1, 1, 1, 0])
    np.testing.assert_array_equal(np.asarray(jaxadv.is_adversarial(odd, x, y)), [False, False, False, True])


# --- 3, 4. too few classes -----------------------------------------------------------------


def test_apgd_dlr_needs_three_classes() -> None:
    x = _x()
    with pytest.raises(ValueError, match="loss='dlr' needs at least 3 classes"):
        jaxadv.apgd(linear(2), x, key=KEY, eps=0.1, loss="dlr", steps=3)
    with pytest.raises(ValueError, match="loss='dlr' needs at least 3 classes"):
        jaxadv.apgd(linear(2), x, key=KEY, eps=0.1, loss=jaxadv.dlr, steps=3)
    assert jaxadv.apgd(linear(3), x, key=KEY, eps=0.1, loss="dlr", steps=3).shape == x.shape


@pytest.mark.parametrize("name", NAMES)
def test_a_one_class_model_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="at least 2 classes"):
        run(name, linear(1), _x(), None)


# --- 5, 6. unbounded balls and boxes -------------------------------------------------------


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_pgd_with_an_infinite_eps_is_box_constrained_only(norm: str) -> None:
    f, x = linear(4), _x()
    y = jaxadv.predict(f, x)
    out = jaxadv.pgd(f, x, y, key=KEY, eps=jnp.inf, steps=3, norm=norm)  # type: ignore[arg-type]
    assert bool(jnp.all(jnp.isfinite(out))) and bool(jnp.all((out >= 0) & (out <= 1)))
    assert bool(jnp.all(jnp.any(out != x, axis=(1, 2, 3))))
    # With a finite step the unbounded ball is a ball too large to matter.
    kw = dict(steps=3, step_size=0.05, random_start=False, norm=norm)
    np.testing.assert_array_equal(
        np.asarray(jaxadv.pgd(f, x, y, eps=jnp.inf, **kw)),  # type: ignore[arg-type]
        np.asarray(jaxadv.pgd(f, x, y, eps=1e6, **kw)),  # type: ignore[arg-type]
    )


def test_infinite_eps_steps_to_the_box_corners() -> None:
    f, x = linear(4), _x()
    y = jaxadv.predict(f, x)
    for out in (jaxadv.fgsm(f, x, y, eps=jnp.inf), jaxadv.bim(f, x, y, eps=jnp.inf, steps=2)):
        assert bool(jnp.all((out == 0) | (out == 1)))
    for name in ("apgd", "apgd_targeted", "square", "spsa", "nes", "mifgsm"):
        out = _adv(run(name, f, x, y, eps=jnp.inf))
        assert bool(jnp.all(jnp.isfinite(out))) and bool(jnp.all((out >= 0) & (out <= 1)))


def test_infinite_eps_with_an_unbounded_box_is_refused() -> None:
    f, x = linear(4), _x()
    unbounded = (-jnp.inf, jnp.inf)
    for name in ("fgsm", "bim", "pgd", "mifgsm", "apgd", "square", "spsa"):
        with pytest.raises(ValueError, match="infinite"):
            run(name, f, x, None, eps=jnp.inf, bounds=unbounded)
    with pytest.raises(ValueError, match="eps must be finite"):
        jaxadv.square(f, x, key=KEY, eps=jnp.inf, norm="l2", queries=5)
    # A finite step with unbounded balls and boxes is fine.
    out = jaxadv.pgd(f, x, key=KEY, eps=jnp.inf, step_size=0.1, steps=2, bounds=unbounded)
    assert bool(jnp.all(jnp.isfinite(out)))


@pytest.mark.slow
def test_hop_skip_jump_with_infinite_bounds_returns_x_without_spending_queries() -> None:
    f, x = linear(4), _x()
    y = jaxadv.predict(f, x)
    res = jaxadv.hop_skip_jump(f, x, y, key=KEY, queries=50, bounds=(-jnp.inf, jnp.inf), return_info=True)
    np.testing.assert_array_equal(np.asarray(res.x_adv), np.asarray(x))
    assert not bool(jnp.any(res.success))
    np.testing.assert_array_equal(np.asarray(res.queries), 1)
    # With starting points it attacks: the results are adversarial and finite.
    x_init = x + 3.0 * jnp.asarray(_runner_up_sign(_weights(4), x, y))
    assert bool(jnp.all(jaxadv.is_adversarial(f, x_init, y)))
    res = jaxadv.hop_skip_jump(
        f, x, y, key=KEY, queries=200, x_init=x_init, bounds=(-jnp.inf, jnp.inf), return_info=True
    )
    assert bool(jnp.all(jnp.isfinite(res.x_adv))) and bool(jnp.all(res.success))
    assert bool(jnp.all(jaxadv.norm_of(res.x_adv - x, "l2") < jaxadv.norm_of(x_init - x, "l2")))


@pytest.mark.parametrize("bounds", [(-jnp.inf, jnp.inf), (0.0, jnp.inf), (-1e30, 1e30)])
def test_cw_l2_attacks_with_unbounded_boxes(bounds: tuple[float, float]) -> None:
    f, x = linear(4), _x()
    y = jaxadv.predict(f, x)
    out = jaxadv.cw_l2(f, x, y, steps=30, binary_search_steps=3, initial_const=10.0, bounds=bounds)
    assert bool(jnp.all(jnp.isfinite(out)))
    assert bool(jnp.all(out >= bounds[0]))
    assert bool(jnp.all(jaxadv.is_adversarial(f, out, y)))


# --- 7, 8. empty batches, missing keys ------------------------------------------------------


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("name", NAMES)
def test_an_empty_batch_comes_back_empty(name: str, dtype: Any) -> None:
    x = jnp.zeros((0, *SHAPE), dtype)
    for y in (None, jnp.zeros((0,), jnp.int32)):
        out = run(name, linear(4), x, y)
        assert _adv(out).shape == x.shape and _adv(out).dtype == x.dtype
        if name in BLACK_BOX:
            assert out.success.shape == (0,) and out.queries.shape == (0,)
        elif returns_info(BY_NAME[name]):  # a model that cannot trace 0 rows is not re-run
            res = run(name, linear(4), x, y, return_info=True)
            assert res.x_adv.shape == x.shape and res.success.shape == (0,)


@pytest.mark.parametrize("spec", [s for s in reg.ATTACKS if s.keyed], ids=repr)
def test_a_missing_key_is_a_clear_error(spec: Spec) -> None:
    with pytest.raises(ValueError, match=r"key is required.*key=jax.random.key\(0\)"):
        spec.fn(linear(4), _x(), None, **{**spec.kwargs, "key": None})


# --- 9, 10. labels and inputs -------------------------------------------------------------


@pytest.mark.parametrize("name", ["fgsm", "apgd", "square", "deepfool"])
def test_bad_labels_are_clear_errors(name: str) -> None:
    f, x = linear(4), _x(2)
    with pytest.raises(ValueError, match="integer labels"):
        run(name, f, x, np.asarray(["cat", "dog"]))
    with pytest.raises(ValueError, match=r"integer class indices.*astype\(np.int32\)"):
        run(name, f, x, np.asarray([1.0, 2.0]))
    # int64 labels that a cast to int32 would wrap into range (2**32 + 1 -> 1).
    with pytest.raises(ValueError, match=r"labels in \[0, 4\)"):
        run(name, f, x, np.asarray([0, 2**32 + 1], np.int64))
    with pytest.raises(ValueError, match=r"labels in \[0, 4\)"):
        run(name, f, x, [0, 2**32 + 1])


@pytest.mark.parametrize("name", NAMES)
def test_non_finite_and_integer_inputs_are_clear_errors(name: str) -> None:
    f, x = linear(4), _x(2)
    for bad in (jnp.nan, jnp.inf):
        with pytest.raises(ValueError, match="x contains NaN/inf values"):
            run(name, f, x.at[1, 0, 0, 0].set(bad), None)
    images = (np.asarray(x) * 255).astype(np.uint8)
    with pytest.raises(ValueError, match=r"x.astype\(np.float32\) / 255 and pass bounds=\(0, 1\)"):
        run(name, f, images, None)


# --- 11. Flax variables --------------------------------------------------------------------


class _Mlp(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.Dense(4)(nn.relu(nn.Dense(8)(x.reshape(x.shape[0], -1))))


@pytest.mark.parametrize("module", [_Mlp(), nn.Dense(4)])
def test_from_flax_given_params_only_says_to_pass_the_variables(module: nn.Module) -> None:
    x = _x(2).reshape(2, -1)
    variables = module.init(jax.random.key(0), x)
    with pytest.raises(ValueError, match=r"pass the full variables dict \{'params': \.\.\."):
        jaxadv.fgsm(jaxadv.from_flax(module, variables["params"]), x, eps=0.1)
    with pytest.raises(ValueError, match="pass the full variables dict"):
        jaxadv.from_flax(module, variables["params"])(x)
    assert jaxadv.fgsm(jaxadv.from_flax(module, variables), x, eps=0.1).shape == x.shape


# --- 12. norm aliases ----------------------------------------------------------------------


@contextlib.contextmanager
def _count_compiles() -> Iterator[list[str]]:
    events: list[str] = []

    def listen(name: str, duration: float, **kwargs: Any) -> None:
        del duration, kwargs
        if name == "/jax/core/compile/backend_compile_duration":
            events.append(name)

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        yield events
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)


#: Every attack with a ``norm`` argument.
NORMED = [s.name for s in reg.ATTACKS if reg.accepts(s, "norm")]
ALIASES = {"linf": ("Linf", "LINF", "inf"), "l2": ("L2",), "l1": ("L1",)}
#: AutoAttack's spellings, tried on every attack (every alias is tried on the threat models).
AUTOATTACK = {"linf": "Linf", "l2": "L2", "l1": "L1"}


@pytest.mark.slow
@pytest.mark.parametrize("name", NORMED)
def test_norm_aliases_behave_exactly_like_the_canonical_name(name: str) -> None:
    # Every attack under its L-inf spellings (one compiled program serves all of
    # them); pgd below covers the L2 and L1 spellings, which go through the same
    # canonicalisation.
    f, x = linear(4), _x(3)
    y = jaxadv.predict(f, x)
    ref = run(name, f, x, y, norm="linf")
    for alias in ("Linf", "inf"):
        with _count_compiles() as compiles:
            out = run(name, f, x, y, norm=alias)
        np.testing.assert_array_equal(np.asarray(_adv(out)), np.asarray(_adv(ref)))
        assert not compiles, (name, alias)


@pytest.mark.slow
def test_l2_and_l1_spellings_behave_like_the_canonical_names() -> None:
    f, x = linear(4), _x(3)
    y = jaxadv.predict(f, x)
    for norm in ("l2", "l1"):
        ref = run("pgd", f, x, y, norm=norm)
        with _count_compiles() as compiles:
            out = run("pgd", f, x, y, norm=AUTOATTACK[norm])
        np.testing.assert_array_equal(np.asarray(_adv(out)), np.asarray(_adv(ref)))
        assert not compiles, norm


def test_threat_model_functions_accept_aliases() -> None:
    d = jnp.asarray(np.random.default_rng(0).normal(size=(3, *SHAPE)), jnp.float32)
    for norm, aliases in ALIASES.items():
        for alias in aliases:
            for fn in (
                lambda n: jaxadv.norm_of(d, n),
                lambda n: jaxadv.threat_models.project(d, 0.5, n),
                lambda n: jaxadv.threat_models.steepest_direction(d, n),
                lambda n: jaxadv.threat_models.random_start(KEY, d.shape, 0.5, n),
                lambda n: jaxadv.threat_models.project_to_feasible(d, d * 0, 0.5, n, -1.0, 1.0),
            ):
                np.testing.assert_array_equal(np.asarray(fn(alias)), np.asarray(fn(norm)))
    for spelling, canonical in (("LINF", "linf"), ("Inf", "linf"), ("l2", "l2"), ("L1", "l1")):
        assert jaxadv.validation.check_norm(spelling) == canonical
    for bad in ("l3", "linfinity", 2, None):
        with pytest.raises(ValueError, match="norm must be one of"):
            jaxadv.validation.check_norm(bad)


# --- 13. one rounding rule for the caller's dtype -------------------------------------------


def test_as_returned_agrees_with_finalize_for_unrepresentable_bounds() -> None:
    lo, hi = jnp.float32(0.013), jnp.float32(2.64)
    x = jnp.linspace(-0.1, 2.8, 301, dtype=jnp.float32).reshape(1, 301)
    for dtype in (jnp.float32, jnp.float16, jnp.bfloat16):
        p = jaxadv.attacks.base.Problem(
            None, [], x, jnp.zeros(1, jnp.int32), lo, hi, jnp.float32(0), dtype, 2
        )  # type: ignore[arg-type]
        kept = as_returned(x, dtype, lo, hi)
        np.testing.assert_array_equal(np.asarray(kept), np.asarray(p.finalize(x).astype(jnp.float32)))
        assert bool(jnp.all((kept >= lo) & (kept <= hi)))


@pytest.mark.slow
def test_bfloat16_success_kept_by_apgd_agrees_with_re_prediction() -> None:
    # bfloat16(2.64) = 2.640625 lies outside the box: a returned example is at most
    # 2.625, on the clean side of the boundary at 2.63.
    f = jaxadv.from_apply(sm.boundary_apply, jnp.float32(2.63))
    x = jnp.full((4, *SHAPE), 2.5, jnp.bfloat16)
    p = jaxadv.attacks.base.prepare(f, x, jnp.zeros(4, jnp.int32), bounds=(0.0, 2.64), eps=0.5)
    labels = jax.nn.one_hot(p.labels, 2)
    out = apgd_module._run(
        p, row_keys(KEY, 4), labels, jaxadv.cross_entropy, jaxadv.compose.no_outcome(p.x),
        steps=5, norm="linf", rho=0.75, early_stop=True, loop="auto",
    )  # fmt: skip
    returned = p.finalize(out.x)
    np.testing.assert_array_equal(
        np.asarray(out.found), np.asarray(jaxadv.is_adversarial(f, returned, p.labels))
    )
    assert not bool(jnp.any(out.found))
