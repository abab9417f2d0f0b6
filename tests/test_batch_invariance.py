"""``evaluate``'s per-example results do not depend on how the data is cut.

Each example's randomness comes from its own key, folded from its index in the
data (:func:`jaxadv.example_keys`), and every attack draws per row
(:mod:`jaxadv.keys`); the model's arithmetic on a row does not depend on the
other rows. So the standard suite (APGD-CE, APGD-T, FAB-T, Square, with
AutoAttack's budgets) gives the same ``fooled_by``, perturbation norms, query
counts and adversarial examples, bit for bit:

* with batch sizes 7 and 64 (uneven batches of 7; all the examples in one
  batch, whose attacks run on buckets of 16 and 8 rows); batch size 1 gives
  the same outcomes, and adversarial examples equal up to rounding (XLA:CPU
  multiplies a single row in another order: see the test);
* after a kill during the second batch of 7 and a resume with batch size 5, or
  with ``"auto"`` (which then keeps the checkpoint's size);
* with ``batch_size="auto"`` halving after an out-of-memory error on a later
  batch (the run mixes batches of 8 and of 4);
* over 8 simulated CPU devices, in a subprocess (this file run as a script with
  ``XLA_FLAGS=--xla_force_host_platform_device_count=8``), against one device
  (batches of 16: APGD-CE, which decides every fooled example here, runs with 2
  rows per device; the later members on 8 rows, 1 per device).

The model is the digits MLP on the first 14 test digits at L-inf eps 0.1, where
APGD-CE fools most of the correct digits and the later members still run on the
others (Square spends its 5000 queries on each). Every test here compiles the
suite's programs or runs a subprocess: the slow tier.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest

import jaxadv
from jaxadv.evaluation import EvaluationResult

pytestmark = pytest.mark.slow

evaluate_module = importlib.import_module("jaxadv.evaluation.evaluate")

N, EPS, DEVICES = 14, 0.1, 8
KW: dict[str, Any] = dict(eps=EPS, suite="standard", key=jax.random.key(3), progress=False, checks=False)


def _same(a: EvaluationResult, b: EvaluationResult, what: str, atol: float = 0.0) -> None:
    """Every per-example result bit for bit; with ``atol``, the adversarial examples and
    their norms within ``atol`` (the outcomes and query counts still exactly)."""
    np.testing.assert_array_equal(a.fooled_by, b.fooled_by, err_msg=f"fooled_by, {what}")
    np.testing.assert_array_equal(a.robust, b.robust, err_msg=f"robust, {what}")
    np.testing.assert_array_equal(a.queries, b.queries, err_msg=f"queries, {what}")
    for name, u, v in (("norms", a.perturbation_norm, b.perturbation_norm), ("x_adv", a.x_adv, b.x_adv)):
        if u is None or v is None:
            continue
        if atol:
            np.testing.assert_allclose(u, v, rtol=0, atol=atol, err_msg=f"{name}, {what}")
        else:
            np.testing.assert_array_equal(u, v, err_msg=f"{name}, {what}")


def _data() -> tuple[np.ndarray, np.ndarray]:
    from jaxadv import examples

    test = examples.load_digits(0)[1]
    return test.x[:N], test.y[:N]


@pytest.fixture(scope="module")
def setup(mlp: Any) -> tuple[Any, np.ndarray, np.ndarray]:
    x, y = _data()
    return mlp.logits_fn, x, y


@pytest.fixture(scope="module")
def by_size(setup: Any) -> dict[int, EvaluationResult]:
    fn, x, y = setup
    return {bs: jaxadv.evaluate(fn, x, y, batch_size=bs, store_adversarial=True, **KW) for bs in (64, 7, 1)}


def test_the_suite_has_work_for_every_member(by_size: dict[int, EvaluationResult]) -> None:
    """The comparison means something: some examples are fooled, some stay robust
    (so that every member after the first runs, Square with its whole budget)."""
    res = by_size[64]
    assert res.attacks == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert np.sum(res.fooled_by >= 0) >= 3 and np.sum(res.robust) >= 2
    assert np.all(res.queries[res.robust] > 0)  # Square queried the robust examples


def test_batch_sizes_1_7_and_64_give_the_same_per_example_results(
    by_size: dict[int, EvaluationResult],
) -> None:
    """Bit for bit at 7 and 64. At batch size 1 the attacks run on one row, and
    XLA:CPU computes a one-row matrix product with its matrix-vector kernel, which
    sums in another order: the MLP's logits and input gradients on a row alone
    differ from those in a batch of 2 or more by a few ulps (up to 4e-6), so the
    gradient attacks' iterates drift apart by rounding. The outcomes, flags and
    query counts are still the same; the adversarial examples agree to 2e-3
    (measured: 6 of 896 coordinates differ, by at most 1.95e-3; held to 1e-2,
    a tenth of eps). See docs/numbers.md."""
    _same(by_size[7], by_size[64], "batch size 7 against 64")
    _same(by_size[1], by_size[64], "batch size 1 against 64", atol=0.01)
    assert [by_size[bs].batch_size for bs in (7, 1)] == [7, 1]


@pytest.mark.parametrize("resume_size", [5, "auto"])
def test_a_run_killed_at_batch_size_7_resumes_at_another_size_to_the_same_results(
    setup: Any, by_size: dict[int, EvaluationResult], tmp_path: Path, monkeypatch: Any, resume_size: Any
) -> None:
    fn, x, y = setup
    path = tmp_path / "run.json"
    real = evaluate_module._evaluate_batch
    calls = {"n": 0}

    def killed_in_the_second_batch(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluate_module, "_evaluate_batch", killed_in_the_second_batch)
    with pytest.raises(KeyboardInterrupt):
        jaxadv.evaluate(fn, x, y, batch_size=7, checkpoint=path, **KW)
    monkeypatch.setattr(evaluate_module, "_evaluate_batch", real)
    assert EvaluationResult.load(path).num_examples == 7  # the first batch was saved
    resumed = jaxadv.evaluate(fn, x, y, batch_size=resume_size, checkpoint=path, resume=True, **KW)
    assert resumed.batch_size == (7 if resume_size == "auto" else resume_size)
    _same(resumed, by_size[64], f"killed at 7, resumed at {resume_size}")


def test_auto_halving_after_out_of_memory_gives_the_same_results(
    setup: Any, by_size: dict[int, EvaluationResult], monkeypatch: Any
) -> None:
    fn, x, y = setup
    real = evaluate_module._evaluate_batch
    sizes: list[int] = []

    def runs_out_on_the_second_batch(s: Any, xb: np.ndarray, *args: Any, **kwargs: Any) -> Any:
        sizes.append(len(xb))
        if len(sizes) == 2:  # the second batch of 8 needs more memory than the first, say
            raise jax.errors.JaxRuntimeError(
                "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1 bytes."
            )
        return real(s, xb, *args, **kwargs)

    monkeypatch.setattr(evaluate_module, "_evaluate_batch", runs_out_on_the_second_batch)
    res = jaxadv.evaluate(fn, x, y, batch_size="auto", max_batch_size=8, store_adversarial=True, **KW)
    assert sizes == [8, 6, 4, 2] and res.batch_size == 4  # 8 fitted, then 4: none lost or counted twice
    _same(res, by_size[64], "'auto' halved from 8 to 4")


# --- 8 simulated devices (a subprocess) ----------------------------------------------------


def _worker() -> dict[str, Any]:
    from small_models import trained_digits

    jax.config.update("jax_numpy_rank_promotion", "allow")
    x, y = _data()
    fn = trained_digits("mlp").logits_fn
    out: dict[str, Any] = {"devices": jax.device_count()}
    for name, sharding in (("sharded", True), ("one_device", False)):
        res = jaxadv.evaluate(fn, x, y, batch_size=16, sharding=sharding, store_adversarial=True, **KW)
        out[name] = res.to_dict()
        out[name]["x_adv"] = np.asarray(res.x_adv).tolist()
    return out


@pytest.fixture(scope="module")
def eight_devices() -> dict[str, Any]:
    root = Path(__file__).resolve().parents[1]
    env = {
        **os.environ,
        "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={DEVICES}",
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": os.pathsep.join([str(root), str(root / "tests"), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [sys.executable, __file__],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_eight_devices_give_the_per_example_results_of_one(
    eight_devices: dict[str, Any], by_size: dict[int, EvaluationResult]
) -> None:
    assert eight_devices["devices"] == DEVICES
    one = by_size[64]
    for name in ("sharded", "one_device"):
        got = eight_devices[name]
        what = f"{name} in the 8-device process against batch size 64 here"
        np.testing.assert_array_equal(got["fooled_by"], one.fooled_by, err_msg=what)
        np.testing.assert_array_equal(np.asarray(got["perturbation_norm"], np.float32), one.perturbation_norm)
        np.testing.assert_array_equal(got["queries"], one.queries, err_msg=what)
        np.testing.assert_array_equal(np.asarray(got["x_adv"], np.float32), one.x_adv, err_msg=what)


if __name__ == "__main__":
    print(json.dumps(_worker()))
