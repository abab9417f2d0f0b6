"""docs/compose.md ("Build your own attack") runs as written, and its attacks stay in
their ball and box.

The page's ``python`` code blocks are executed in order in one namespace (each
block may use what the earlier ones defined), then the results they leave
behind are checked.
"""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
import pytest

import jaxadv

# Slow tier: the page's code trains a digits model and runs its attacks as written.
# The page's code runs once (a module fixture) as its reader's would: optimised. Every
# test here reads it, and the last one reads its jit cache.
pytestmark = [pytest.mark.slow, pytest.mark.full_optimization]

PAGE = Path(__file__).resolve().parents[1] / "docs" / "compose.md"


def _blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", PAGE.read_text(), flags=re.S | re.M)


@pytest.fixture(scope="module")
def page() -> Any:
    # A real module, so that the page's dataclasses find their module.
    module = types.ModuleType("compose_docs_page")
    sys.modules[module.__name__] = module
    try:
        for i, block in enumerate(_blocks()):
            exec(compile(block, f"{PAGE.name}[block {i}]", "exec"), module.__dict__)
        yield module.__dict__
    finally:
        del sys.modules[module.__name__]


def test_page_has_the_worked_example() -> None:
    code = "\n".join(_blocks())
    needed_calls = ("compose.eot(", "compose.momentum(", "compose.heavy_ball(", "compose.restarts(")
    for needed in (*needed_calls, 'norm="l2"', "@jax.jit", "jax.vmap", "shard_batch"):
        assert needed in code, needed


def _inside(x_adv: Any, x: np.ndarray, eps: Any, norm: str) -> None:
    x_adv = np.asarray(x_adv)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert np.all(np.isfinite(x_adv))
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    dist = np.asarray(jaxadv.norm_of(jnp.asarray(x_adv - x), norm))
    assert np.all(dist <= np.asarray(eps) * (1 + 1e-5) + 1e-6), dist.max()


def test_worked_example_stays_in_the_l2_ball_and_the_box(page: dict[str, Any]) -> None:
    x = page["x"]
    _inside(page["x_adv"], x, 1.0, "l2")
    # The attack does something: most digits' predictions change at eps=1.
    assert np.mean(np.asarray(jaxadv.predict(page["logits_fn"], page["x_adv"])) == page["y"]) < 0.5


def test_halving_schedule_stays_in_the_l2_ball_and_the_box(page: dict[str, Any]) -> None:
    _inside(page["x_halving"], page["x"], 1.0, "l2")
    assert np.mean(np.asarray(jaxadv.predict(page["logits_fn"], page["x_halving"])) == page["y"]) < 0.5


def test_vmapped_curve_stays_in_each_ball(page: dict[str, Any]) -> None:
    x, radii, x_advs = page["x"], np.asarray(page["radii"]), np.asarray(page["x_advs"])
    assert x_advs.shape == (len(radii), *x.shape)
    for eps, x_adv in zip(radii, x_advs, strict=True):
        _inside(x_adv, x, eps, "l2")
    # Robust accuracy falls as the radius grows.
    curve = np.asarray(page["curve"])
    assert np.all(np.diff(curve) <= 1e-9) and curve[0] > curve[-1]
    # The vmapped attack at eps=1 is the direct call's attack (same key): same examples,
    # up to the float32 rounding that batching the matrix products under vmap changes
    # (2e-5 on a few pixels; a different attack would differ by the step size, 0.1).
    np.testing.assert_allclose(x_advs[list(radii).index(1.0)], np.asarray(page["x_adv"]), atol=1e-4)
    # A new decay is a new leaf value, not a new program.
    assert page["accuracy_curve"]._cache_size() == 1
    assert np.asarray(page["curve_less"]).shape == curve.shape


def test_sharded_batch_gives_the_direct_result(page: dict[str, Any]) -> None:
    rows = np.asarray(page["x_adv_rows"])
    _inside(rows, page["x"], 1.0, "l2")
    np.testing.assert_allclose(rows, np.asarray(page["x_adv"]), atol=1e-5)


def test_custom_rule_stays_in_the_linf_ball(page: dict[str, Any]) -> None:
    _inside(page["x_adam"], page["x"], 0.1, "linf")


def test_mi_fgsm_and_apgd_as_configurations_are_the_named_attacks(page: dict[str, Any]) -> None:
    np.testing.assert_array_equal(np.asarray(page["x_mi_parts"]), np.asarray(page["x_mi"]))
    np.testing.assert_array_equal(np.asarray(page["x_apgd_parts"]), np.asarray(page["x_apgd"]))
    # Not a vacuous equality: the attacks moved the examples, and APGD fooled more.
    x = np.asarray(page["x"])
    assert np.abs(np.asarray(page["x_apgd"]) - x).max() > 0.05
    _inside(page["x_apgd"], x, 0.1, "linf")
