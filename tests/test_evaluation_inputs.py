"""``evaluate``'s progress file, the summary's figures and its throughput line.

* ``checkpoint=`` never replaces an existing file unless ``resume`` or
  ``overwrite`` says so (another run's file is left byte-identical), and warns
  when the whole dataset fits in one batch (nothing would be saved before the end).
* ``summary()`` shows the figures behind the masking checks on one line, and
  says when the throughput adds up the sessions of a resumed run.

The model is the registry's tiny MLP; the suite is FGSM alone.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Iterator

import jax
import numpy as np
import pytest
from attack_registry import apply, make_batch, make_params

import jaxadv
from jaxadv.evaluation import EvaluationResult

KEY = jax.random.key(0)
RUN: dict[str, Any] = dict(eps=0.05, key=KEY, suite=["fgsm"], progress=False, checks=False)


@pytest.fixture(scope="module")
def data() -> tuple[Any, np.ndarray, np.ndarray]:
    f = jaxadv.from_apply(apply, make_params())
    x = np.concatenate([np.asarray(make_batch(seed=s)) for s in range(4)])  # 20 examples
    return f, x, np.asarray(jaxadv.predict(f, x), np.int32)


def test_an_existing_checkpoint_is_refused_and_left_unchanged(data: Any, tmp_path: Path) -> None:
    f, x, y = data
    path = tmp_path / "progress.json"
    path.write_text("another run's progress")
    with pytest.raises(ValueError, match="exists.*resume=True.*overwrite=True"):
        jaxadv.evaluate(f, x, y, batch_size=8, checkpoint=path, **RUN)
    assert path.read_text() == "another run's progress"


def test_overwrite_replaces_an_existing_checkpoint(data: Any, tmp_path: Path) -> None:
    f, x, y = data
    path = tmp_path / "progress.json"
    path.write_text("stale")
    result = jaxadv.evaluate(f, x, y, batch_size=8, checkpoint=path, overwrite=True, **RUN)
    again = jaxadv.evaluate(f, x, y, batch_size=8, checkpoint=path, resume=True, **RUN)
    np.testing.assert_array_equal(again.fooled_by, result.fooled_by)  # the file is now this run's


def test_a_checkpoint_that_protects_nothing_is_warned_about(data: Any, tmp_path: Path) -> None:
    f, x, y = data
    with pytest.warns(UserWarning, match="all 20 examples fit in one batch of 32"):
        jaxadv.evaluate(f, x, y, batch_size=32, checkpoint=tmp_path / "one.json", **RUN)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        jaxadv.evaluate(f, x, y, batch_size=8, checkpoint=tmp_path / "three.json", **RUN)


def _interrupted(x: np.ndarray, y: np.ndarray, after: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for i in range(0, len(x), 8):
        if i >= after:
            raise KeyboardInterrupt
        yield x[i : i + 8], y[i : i + 8]


def test_the_throughput_of_a_resumed_run_says_it_adds_sessions(data: Any, tmp_path: Path) -> None:
    f, x, y = data
    path = tmp_path / "progress.json"
    with pytest.raises(KeyboardInterrupt):
        jaxadv.evaluate(f, _interrupted(x, y, 8), batch_size=8, checkpoint=path, **RUN)
    resumed = jaxadv.evaluate(f, x, y, batch_size=8, checkpoint=path, resume=True, **RUN)
    whole = jaxadv.evaluate(f, x, y, batch_size=8, **RUN)
    np.testing.assert_array_equal(resumed.fooled_by, whole.fooled_by)
    assert (resumed.sessions, whole.sessions) == (2, 1)
    line = next(s for s in resumed.summary().splitlines() if s.startswith("throughput"))
    assert "resumed run" in line and "2 sessions added" in line
    assert "resumed" not in whole.summary()
    assert EvaluationResult.from_dict(resumed.to_dict()).sessions == 2


def _result(checks: dict[str, Any]) -> EvaluationResult:
    return EvaluationResult(
        eps=0.1,
        norm="linf",
        attacks=["a"],
        fooled_by=np.asarray([-1, 0]),
        perturbation_norm=np.zeros(2, np.float32),
        queries=np.zeros(2, np.int64),
        checks=checks,
    )


def test_the_summary_shows_the_masking_figures() -> None:
    figures = {
        "large_eps": 1.0,
        "accuracy_at_large_eps": 0.25,
        "accuracy_single_step": 0.5,
        "accuracy_iterative": 0.375,
        "black_box_only_successes": 0.125,
    }
    lines = _result(figures).summary().splitlines()
    line = next(s for s in lines if s.startswith("masking checks"))
    assert "BIM-50 at eps=1 25.0%" in line
    assert "FGSM 50.0% vs PGD-20 37.5%" in line
    assert "black-box-only successes 12.5%" in line
    assert not any(s.startswith("masking checks") for s in _result({}).summary().splitlines())


@pytest.mark.slow
def test_the_masking_line_follows_the_checks_of_a_real_run(data: Any) -> None:
    f, x, y = data
    result = jaxadv.evaluate(f, x[:8], y[:8], **{**RUN, "checks": True})
    line = next(s for s in result.summary().splitlines() if s.startswith("masking checks"))
    assert f"{result.checks['accuracy_at_large_eps']:.1%}" in line
    assert f"FGSM {result.checks['accuracy_single_step']:.1%}" in line
