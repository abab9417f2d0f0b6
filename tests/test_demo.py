"""The demo (``python -m jaxadv``) trains the digits CNN and tabulates attacks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import optimised

from jaxadv import demo

# Slow tier: the whole demo (trains the digits CNN, runs every attack family), compiled
# with the backend optimisations on, as a user's run would be.
pytestmark = [pytest.mark.slow, pytest.mark.full_optimization]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, list[float]], list[str], Path]:
    """One run of the demo, read by both tests below (each run trains two models and
    compiles every attack family: the slow tier ran it twice, for about 50 s, before)."""
    out = tmp_path_factory.mktemp("demo")
    lines: list[str] = []
    with optimised():  # module scope: outside the function-scoped full_optimization fixture
        table = demo.run((0.1, 0.3), steps=5, queries=40, minimal_examples=12, out=out, print_fn=lines.append)
    return table, lines, out


def test_demo_table_is_consistent(demo_run: Any) -> None:
    table, lines, tmp_path = demo_run
    clean = table["clean"][0]
    assert clean > 0.95
    fgsm, bim = table["FGSM"], table["BIM-5"]
    # Attacks hurt, more with larger eps, and the iterative attack is no weaker.
    assert fgsm[0] < clean and fgsm[1] <= fgsm[0]
    assert all(b <= f + 0.01 for b, f in zip(bim, fgsm, strict=True))
    assert bim[1] < 0.1
    assert any("accuracy (L-inf)" in line for line in lines)
    # Every attack family appears, and every accuracy is a fraction no larger than clean.
    names = " ".join(table)
    for family in ("PGD-5", "MI-FGSM", "APGD-CE", "APGD-T", "Square", "transfer"):
        assert family in names
    for row in table.values():
        assert len(row) == 2 and all(0.0 <= a <= clean + 1e-6 for a in row)
    text = "\n".join(lines)
    for family in ("DeepFool", "Carlini-Wagner", "HopSkipJump", "least-likely"):
        assert family in text
    # Progress is reported before the table, and the figures and results are written.
    assert lines.index(next(line for line in lines if "FGSM" in line)) < lines.index(
        next(line for line in lines if "accuracy (L-inf)" in line)
    )
    for name in ("accuracy_vs_eps.png", "examples.png", "minimal_l2.png", "results.json"):
        assert (tmp_path / name).stat().st_size > 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["accuracy"]["FGSM"] == fgsm
    assert results["eps"] == [0.1, 0.3]


def test_the_demo_prints_each_stage_once_and_no_repeated_row(demo_run: Any) -> None:
    """One line per stage (compilation and run apart), none left open with "...", and no
    sentence repeating a row of the table. (Was in test_demo_output.py, on a demo run of
    its own with one eps and smaller budgets; which lines are printed depends on neither.)"""
    _, lines, _ = demo_run
    stages = [line for line in lines if "(compile " in line]
    labels = [line.split(": ")[0] for line in stages]
    assert len(labels) == len(set(labels)) and len(labels) >= 10
    assert not any(line.endswith("...") for line in lines)
    assert not any(line.startswith("iterative least-likely class") for line in lines)
