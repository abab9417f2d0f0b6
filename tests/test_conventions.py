"""The signature convention of docs/conventions.rst, checked over every registered attack.

* ``key``: every attack accepts it, with default ``None``; an attack that draws
  random numbers with its default arguments (:attr:`Spec.keyed`) refuses a
  missing key with a ``ValueError`` naming ``key``; the others ignore it.
* ``loss``: where an attack has one, its default is written as a name that
  :func:`jaxadv.losses.get_loss` resolves, and a name gives the result of the
  callable it names.
* one meaning per argument name: no attack takes ``beta`` (renamed where it
  meant different things), and the removed spellings are refused.
"""

from __future__ import annotations

import inspect
import typing
from typing import Any

import attack_registry as reg
import jax
import numpy as np
import pytest
from attack_registry import ATTACKS, BY_NAME, Spec

import jaxadv
from jaxadv.losses import get_loss

KEY = jax.random.key(0)
REMOVED = ("eot_samples", "samples", "delta", "sigma", "n_restarts", "n_target_classes", "beta")


def _setup() -> tuple[Any, jax.Array, jax.Array]:
    f = jaxadv.from_apply(reg.apply, reg.make_params())
    x = reg.make_batch()
    return f, x, jaxadv.predict(f, x)


@pytest.mark.parametrize("spec", ATTACKS, ids=repr)
def test_every_attack_accepts_key_defaulting_to_none(spec: Spec) -> None:
    params = reg.parameters(spec.fn)
    assert "key" in params, spec.name
    assert params["key"].kind is inspect.Parameter.KEYWORD_ONLY
    assert params["key"].default is None, f"{spec.name}: key must default to None (see docs/conventions.rst)"


@pytest.mark.parametrize("spec", [s for s in ATTACKS if s.keyed], ids=repr)
def test_an_attack_that_draws_refuses_a_missing_key(spec: Spec) -> None:
    f, x, y = _setup()
    with pytest.raises(ValueError, match="key"):
        spec.fn(f, x, y, **spec.kwargs)


@pytest.mark.parametrize("spec", [s for s in ATTACKS if not s.keyed], ids=repr)
def test_an_attack_that_does_not_draw_ignores_key(spec: Spec) -> None:
    f, x, y = _setup()
    without = reg.x_adv(spec.fn(f, x, y, **spec.kwargs))
    with_key = reg.x_adv(spec.fn(f, x, y, key=jax.random.key(7), **spec.kwargs))
    np.testing.assert_array_equal(without, with_key)


@pytest.mark.parametrize("spec", [s for s in ATTACKS if reg.accepts(s, "loss")], ids=repr)
def test_loss_defaults_to_a_name(spec: Spec) -> None:
    default = reg.parameters(spec.fn)["loss"].default
    if default is None:  # the reference's choice per mode: "cw" untargeted, "ce" targeted
        assert spec.name == "sparse_rs", spec.name
        return
    assert isinstance(default, str) and default in ("ce", "cw", "dlr"), (spec.name, default)
    assert callable(get_loss(default))


@pytest.mark.parametrize("name", ["pgd", "spsa", "sparse_rs"])
def test_a_loss_name_is_the_callable_it_names(name: str) -> None:
    spec = BY_NAME[name]
    f, x, y = _setup()
    by_name = reg.call(spec, f, x, y, loss="cw")
    by_callable = reg.call(spec, f, x, y, loss=jaxadv.cw_margin)
    np.testing.assert_array_equal(reg.x_adv(by_name), reg.x_adv(by_callable))
    with pytest.raises(ValueError, match="loss must be"):
        reg.call(spec, f, x, y, loss="no such loss")


@pytest.mark.parametrize("spec", ATTACKS, ids=repr)
def test_removed_names_are_not_parameters(spec: Spec) -> None:
    params = reg.parameters(spec.fn)
    assert not set(REMOVED) & set(params), (spec.name, set(REMOVED) & set(params))


@pytest.mark.parametrize("name", ["apgd", "apgd_targeted", "spsa", "nes"])
def test_removed_spellings_are_refused(name: str) -> None:
    f, x, y = _setup()
    old = {"apgd": "n_restarts", "apgd_targeted": "n_target_classes", "spsa": "delta", "nes": "sigma"}[name]
    with pytest.raises(TypeError, match=old):
        reg.call(BY_NAME[name], f, x, y, **{old: 1})


def test_deprecated_aliases_are_gone() -> None:
    assert not hasattr(jaxadv, "BlackBoxResult")
    assert "BlackBoxResult" not in jaxadv.__all__


@pytest.mark.parametrize("spec", [s for s in ATTACKS if inspect.isfunction(s.fn)], ids=repr)
def test_return_info_is_overloaded(spec: Spec) -> None:
    # Literal[False] (the default) -> Array; Literal[True] -> AttackResult.
    found = set()
    for overload in typing.get_overloads(spec.fn):
        sig = inspect.signature(overload)
        found.add((str(sig.parameters["return_info"].annotation), str(sig.return_annotation)))
    assert ("Literal[False]", "Array") in found, (spec.name, found)
    assert ("Literal[True]", "AttackResult") in found, (spec.name, found)
    assert inspect.signature(spec.fn).return_annotation == "Array | AttackResult"
