"""What the demo prints and draws: one line per stage with compilation and run
apart, no sentence repeating the table, and figures that say which eps they show."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxadv import demo


def test_a_stage_prints_one_line_with_compile_and_run_apart() -> None:
    lines: list[str] = []
    f = jax.jit(lambda a: jnp.tanh(a @ a.T).sum())  # a new function: compiled by the first call
    x = jnp.ones((64, 64))
    demo._timed(lines.append, "first", lambda: f(x))
    assert demo._clock is not None
    compile_first = demo._clock.seconds  # printed to 0.1 s, so read the clock itself
    demo._timed(lines.append, "second", lambda: f(x))
    assert len(lines) == 2
    first, second = lines
    assert first.startswith("first: ") and "(compile " in first and ", run " in first
    compile_second = float(second.split("(compile ")[1].split("s")[0])
    assert compile_first > 0.0 and demo._clock.seconds == 0.0 == compile_second  # the program is reused


def test_examples_figure_names_the_attack_and_eps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import jaxadv.evaluation

    titles: list[str] = []
    original = jaxadv.evaluation.plot_examples

    def spy(*args: Any, **kwargs: Any) -> Any:
        titles.append(kwargs["title"])
        return original(*args, **kwargs)

    monkeypatch.setattr(jaxadv.evaluation, "plot_examples", spy)
    x = np.zeros((2, 8, 8, 1), np.float32)
    grid = (x, x + 0.1, np.zeros(2, int), np.ones(2, int))
    table = {"clean": [1.0], "FGSM": [0.5]}
    demo._write_figures(tmp_path, [0.1], table, grid, {}, "PGD-20 at eps=0.1")
    assert titles and "PGD-20 at eps=0.1" in titles[0]
    assert (tmp_path / "examples.png").stat().st_size > 0


# The check that the whole demo prints each stage once and repeats no row runs on
# tests/test_demo.py's demo run (test_the_demo_prints_each_stage_once_and_no_repeated_row).
