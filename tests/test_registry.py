"""Cross-cutting contracts, checked for every attack of :mod:`attack_registry` at once.

For each registered attack (its minimal call on a tiny 4-class MLP, 5 examples
of ``8 x 8 x 1``):

* the registry lists every public attack of ``jaxadv.__all__``, and each line
  agrees with the attack's signature (``targeted``, ``key``, ``y=None``);
* the result lies inside the ``eps``-ball (attacks with one) and inside
  ``bounds``, for ``(0, 1)`` and for ``(-1, 2)``, with pixels of ``x`` on both
  bounds;
* shape and dtype of ``x`` are kept for float32 and bfloat16 inputs (bfloat16:
  inside the box exactly, inside the ball up to one bfloat16 rounding);
* the same key gives a bit-identical result; ``y=None`` means the model's
  predictions on ``x``;
* new ``eps`` (and other traced hyperparameters) and new model parameters of
  the same shapes compile nothing (counted as in ``test_compilation.py``);
* ``return_info=True`` gives the same ``x_adv`` and ``success ==
  jaxadv.is_adversarial(logits_fn, x_adv, y)``;
* a negative ``eps``, an unknown norm, labels outside ``[0, C)`` and a
  targeted call without targets raise ``ValueError`` with the messages of :data:`BAD`;
* under ``jax.jit`` (model parameters, ``x`` and ``eps`` traced) the result
  equals the direct call (the jitted program is compiled at XLA's lowest backend
  optimisation level, which halves its compile time).

Sharding (``test_sharding.py``, 8 simulated devices in a subprocess) and faults
(``test_attack_faults.py``) draw their attacks and variants from the same registry;
here a test checks that every variant's keywords are the attack's own.

Programs are shared: the default result of each attack is computed once per
module (:class:`Runs`) and every check that can reuse it does.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import attack_registry as reg
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from attack_registry import ATTACKS, Spec
from test_compilation import COMPILE, TRACE, count_compiles

import jaxadv

#: Public names that take ``(logits_fn, x, y=None, ...)`` but are not attacks.
NOT_ATTACKS = {"evaluate": "runs a suite of attacks and returns an EvaluationResult"}

# A user's jit fuses the attack into one program, compiled differently from the
# library's own: equal up to a few float32 roundings.
JIT_ATOL = 1e-5


class Setup(NamedTuple):
    params: Any
    logits_fn: Any
    x: jax.Array
    labels: jax.Array  # the model's predictions on x


def _problem(bounds: tuple[float, float] = (0.0, 1.0)) -> Setup:
    params = reg.make_params()
    logits_fn = jaxadv.from_apply(reg.apply, params)
    x = reg.make_batch(bounds)
    return Setup(params, logits_fn, x, jaxadv.predict(logits_fn, x))


class Runs:
    """Each attack's default call (float32, bounds ``(0, 1)``, ``key(0)``,
    ``y`` = the predictions), run once and shared by the tests of this module."""

    def __init__(self) -> None:
        self.problem = _problem()
        self._out: dict[str, Any] = {}

    def default(self, spec: Spec) -> Any:
        if spec.name not in self._out:
            p = self.problem
            self._out[spec.name] = jax.block_until_ready(reg.call(spec, p.logits_fn, p.x, p.labels))
        return self._out[spec.name]


@pytest.fixture(scope="module")
def runs() -> Runs:
    return Runs()


def _leaves(out: Any) -> list[np.ndarray]:
    return [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(out)]


def _f32(a: Any) -> np.ndarray:
    return np.asarray(jnp.asarray(a).astype(jnp.float32))


def _check_feasible(spec: Spec, x: Any, out: Any, bounds: tuple[float, float], tol: float) -> None:
    a = reg.x_adv(out)
    assert a.shape == x.shape and a.dtype == x.dtype
    xa, x0 = _f32(a), _f32(x)
    assert np.all(np.isfinite(xa))
    lo, hi = bounds
    assert xa.min() >= lo and xa.max() <= hi, (xa.min(), xa.max())  # the box: exactly
    if spec.has_ball:
        dist = np.asarray(jaxadv.norm_of(jnp.asarray(xa - x0), spec.norm))
        assert np.all(dist <= spec.kwargs["eps"] + tol), (dist, spec.kwargs["eps"])


# --- the registry itself -------------------------------------------------------------


def test_registry_lists_every_public_attack() -> None:
    public = reg.public_attack_names() - set(NOT_ATTACKS)
    named = {s.name for s in ATTACKS if s.name in jaxadv.__all__}
    assert public - named == set(), "public attacks without a line in tests/attack_registry.py"
    assert named - public == set(), "registry names that are not public attacks"
    for s in ATTACKS:
        if s.name in jaxadv.__all__:
            assert s.fn is getattr(jaxadv, s.name)
    assert len({s.name for s in ATTACKS}) == len(ATTACKS)
    assert any(isinstance(s.fn, jaxadv.compose.Attack) for s in ATTACKS), "a user-built attack is registered"


@pytest.mark.parametrize("spec", ATTACKS, ids=repr)
def test_registry_line_agrees_with_signature(spec: Spec) -> None:
    params = reg.parameters(spec.fn)
    assert list(params)[:3] == ["logits_fn", "x", "y"]
    assert (params["y"].default is None) == spec.y_optional
    assert ("targeted" in params) == spec.targeted
    if spec.keyed:
        assert "key" in params
    elif "key" in params:  # optional: only some configurations draw random numbers
        assert params["key"].default is None
    assert ("eps" in spec.kwargs) == spec.has_ball
    assert set(spec.kwargs) | set(spec.retune) <= set(params)


@pytest.mark.parametrize("spec", ATTACKS, ids=repr)
def test_registry_variants_agree_with_signature(spec: Spec) -> None:
    params = reg.parameters(spec.fn)
    cases = reg.expand(spec)
    assert [c.name for c in cases] == [spec.name] + [f"{spec.name}:{v}" for v in spec.variants]
    for case in cases[1:]:
        assert set(case.kwargs) <= set(params), case.name
        assert ("eps" in case.kwargs) == case.has_ball, case.name
        assert case.keyed >= spec.keyed and case.gradient == spec.gradient
        if case.keyed:
            assert "key" in params, case.name


# --- the contracts, per attack -------------------------------------------------------


@pytest.mark.parametrize("bounds", [(0.0, 1.0), (-1.0, 2.0)], ids=["0,1", "-1,2"])
@pytest.mark.parametrize("spec", ATTACKS, ids=repr)
def test_inside_ball_and_bounds(runs: Runs, spec: Spec, bounds: tuple[float, float]) -> None:
    if bounds == (0.0, 1.0):
        p, out = runs.problem, runs.default(spec)
    else:  # bounds are traced: the same compiled program
        p = _problem(bounds)
        out = reg.call(spec, p.logits_fn, p.x, p.labels, bounds=bounds)
    _check_feasible(spec, p.x, out, bounds, tol=1e-6)


@pytest.mark.parametrize("spec", ATTACKS, ids=repr)
def test_bfloat16_keeps_dtype_ball_and_bounds(spec: Spec) -> None:
    bounds = (-1.0, 2.0)
    p = _problem(bounds)
    x = p.x.astype(jnp.bfloat16)
    out = reg.call(spec, p.logits_fn, x, p.labels, bounds=bounds)
    # One bfloat16 rounding of values up to 2 (half a unit in the last place: 2**-7).
    _check_feasible(spec, x, out, bounds, tol=2.0**-7)


@pytest.mark.parametrize("spec", ATTACKS, ids=repr)
def test_same_key_same_output(runs: Runs, spec: Spec) -> None:
    p = runs.problem
    first = runs.default(spec)
    second = reg.call(spec, p.logits_fn, p.x, p.labels, key=jax.random.key(0))
    for a, b in zip(_leaves(first), _leaves(second), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("spec", [s for s in ATTACKS if s.y_optional], ids=repr)
def test_y_none_means_predictions(runs: Runs, spec: Spec) -> None:
    p = runs.problem
    out = reg.call(spec, p.logits_fn, p.x, None)
    for a, b in zip(_leaves(out), _leaves(runs.default(spec)), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("spec", ATTACKS, ids=repr)
def test_no_recompilation_for_new_eps_and_params(runs: Runs, spec: Spec) -> None:
    p = runs.problem
    first = reg.x_adv(runs.default(spec))
    new_fn = jaxadv.from_apply(reg.apply, reg.make_params(seed=2))
    new = dict(spec.retune)
    if spec.has_ball:
        new["eps"] = 0.7 * spec.kwargs["eps"]
    with count_compiles() as c:
        second = reg.x_adv(jax.block_until_ready(reg.call(spec, new_fn, p.x, p.labels, **new)))
    assert c.count(COMPILE) == 0 and c.count(TRACE) == 0, c.events
    assert not np.array_equal(np.asarray(first), np.asarray(second)), "the new values were not used"


@pytest.mark.parametrize("spec", ATTACKS, ids=repr)
def test_success_is_reprediction(runs: Runs, spec: Spec) -> None:
    p = runs.problem
    if reg.returns_info(spec):
        out = reg.call(spec, p.logits_fn, p.x, p.labels, info=True)
        assert isinstance(out, jaxadv.AttackResult)
        # Asking for the information does not change the result.
        np.testing.assert_array_equal(np.asarray(out.x_adv), np.asarray(reg.x_adv(runs.default(spec))))
    else:
        out = runs.default(spec)
    success = reg.success(out)
    if success is None:
        pytest.skip(f"{spec.name} takes no return_info and returns a bare array")
    want = jaxadv.is_adversarial(p.logits_fn, reg.x_adv(out), p.labels)
    assert success.shape == (reg.BATCH,) and success.dtype == jnp.bool_
    np.testing.assert_array_equal(np.asarray(success), np.asarray(want))


#: Each bad argument and the error message it must give (every attack checks its
#: inputs with the same ``prepare``).
BAD = {
    "negative eps": "eps must be >= 0",
    "unknown norm": "norm must be one of",
    "label >= C": r"y must hold labels in \[0, 4\)",
    "label < 0": r"y must hold labels in \[0, 4\)",
    # A targeted hop_skip_jump also needs starting points, and says so first.
    "no targets": "y is required for a targeted attack|targeted hop_skip_jump needs x_init",
}


@pytest.mark.parametrize("case", list(BAD))
@pytest.mark.parametrize("spec", ATTACKS, ids=repr)
def test_validation_errors(runs: Runs, spec: Spec, case: str) -> None:
    p = runs.problem
    labels: jax.Array | None = p.labels
    kwargs: dict[str, Any] = {}
    if case == "negative eps":
        if not spec.has_ball:
            pytest.skip("no eps-ball")
        kwargs = {"eps": -spec.kwargs["eps"]}
    elif case == "unknown norm":
        if isinstance(spec.fn, jaxadv.compose.Attack):  # a field, checked when the attack is built
            with pytest.raises(ValueError, match=BAD[case]):
                dataclasses.replace(spec.fn, norm="l3")
            return
        if not reg.accepts(spec, "norm"):
            pytest.skip("no norm argument")
        kwargs = {"norm": "l3"}
    elif case == "label >= C":
        labels = p.labels.at[1].set(reg.CLASSES)
    elif case == "label < 0":
        labels = p.labels.at[1].set(-1)
    else:
        if not spec.targeted:
            pytest.skip("not targeted")
        labels, kwargs = None, {"targeted": True}
    with pytest.raises(ValueError, match=BAD[case]):
        reg.call(spec, p.logits_fn, p.x, labels, **kwargs)


_TRACING_ERRORS = (
    jax.errors.ConcretizationTypeError,
    jax.errors.TracerArrayConversionError,
    jax.errors.TracerBoolConversionError,
    jax.errors.TracerIntegerConversionError,
)

#: The user's ``jit`` program is compiled at XLA's lowest backend (LLVM) optimisation
#: level: half the compile time, the same HLO passes; the result must still equal the
#: library's own (optimised) programs up to float rounding.
_QUICK_COMPILE: dict[str, str | bool] = {
    "xla_backend_optimization_level": "0",
    "xla_llvm_disable_expensive_passes": True,
}


@pytest.mark.parametrize("spec", ATTACKS, ids=repr)
def test_under_jit_equals_direct_call(runs: Runs, spec: Spec) -> None:
    p = runs.problem
    eps = None if "eps" not in spec.kwargs else jnp.asarray(spec.kwargs["eps"], jnp.float32)

    def run(params: Any, x: jax.Array, eps: Any) -> Any:
        over = {} if eps is None else {"eps": eps}
        return reg.call(spec, jaxadv.from_apply(reg.apply, params), x, p.labels, **over)

    try:
        lowered = jax.jit(run).lower(p.params, p.x, eps)
    except _TRACING_ERRORS as e:
        pytest.skip(f"{spec.name} does not accept traced inputs: {type(e).__name__}")
    got = lowered.compile(compiler_options=_QUICK_COMPILE)(p.params, p.x, eps)
    want = runs.default(spec)
    assert str(jax.tree_util.tree_structure(got)) == str(jax.tree_util.tree_structure(want))
    for a, b in zip(_leaves(got), _leaves(want), strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_allclose(a.astype(np.float64), b.astype(np.float64), atol=JIT_ATOL)
