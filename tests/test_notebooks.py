"""The notebooks: committed with outputs, in step with their source, and runnable top to bottom.

``notebooks/build.py`` holds the source of every notebook and writes the
``.ipynb`` files (with their outputs). These tests check that the committed
files match that source, that they were stored with their outputs, and that
each one still runs without error in a fresh kernel on the current library.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"


def _build_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("notebooks_build", NOTEBOOKS / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BUILD = _build_module()
NAMES = list(BUILD.NOTEBOOKS)


def _load(name: str) -> dict[str, Any]:
    return json.loads((NOTEBOOKS / f"{name}.ipynb").read_text())


def _source(cell: dict[str, Any]) -> str:
    src = cell["source"]
    return "".join(src) if isinstance(src, list) else src


def test_every_notebook_is_committed_and_listed() -> None:
    on_disk = sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb"))
    assert on_disk == sorted(NAMES)
    assert len(NAMES) == 10


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebook_matches_its_source(name: str) -> None:
    nb = _load(name)
    cells = BUILD.NOTEBOOKS[name]
    assert len(nb["cells"]) == len(cells), "regenerate with: python notebooks/build.py " + name
    for cell, src in zip(nb["cells"], cells, strict=True):
        if src.startswith("md:"):
            assert cell["cell_type"] == "markdown"
            assert _source(cell) == src[3:]
        else:
            assert cell["cell_type"] == "code"
            assert _source(cell) == src, "regenerate with: python notebooks/build.py " + name


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebook_has_its_outputs(name: str) -> None:
    nb = _load(name)
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    # Executed in order, top to bottom, without errors.
    assert [c["execution_count"] for c in code] == list(range(1, len(code) + 1))
    outputs = [o for c in code for o in c["outputs"]]
    assert not [o for o in outputs if o["output_type"] == "error"]
    # Figures are stored as PNG images, and the file stays small enough to read on the web.
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert images, f"{name} shows no figure"
    assert (NOTEBOOKS / f"{name}.ipynb").stat().st_size < 1_500_000


def test_notebook_figures_have_labelled_axes() -> None:
    # Every matplotlib axes made by a code cell gets labels or is an image grid.
    for name in NAMES:
        for src in BUILD.NOTEBOOKS[name]:
            if src.startswith("md:") or "plt.subplots" not in src:
                continue
            if "imshow" in src and "set_xticks([])" in src:
                continue
            assert "set_xlabel" in src and "set_ylabel" in src, f"{name}: a figure without axis labels"
            assert "set_title" in src or "suptitle" in src, f"{name}: a figure without a title"


# Slow tier: each notebook runs in a fresh kernel (a subprocess) and trains its models.
def _run_top_to_bottom(name: str) -> None:
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    BUILD.execute(nb)  # raises CellExecutionError naming the failing cell
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code)
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]


def _runner(name: str) -> type:
    """A test class per notebook: pytest-xdist (``--dist loadscope``) gives each class
    to a worker of its own, so the notebooks run side by side instead of one after
    another in the worker that got this file."""

    @pytest.mark.slow
    @pytest.mark.usefixtures("user_compilation")
    class Runner:
        def test_runs_top_to_bottom(self) -> None:
            _run_top_to_bottom(name)

    Runner.__name__ = Runner.__qualname__ = f"Test_{name}"
    return Runner


for _name in NAMES:
    globals()[f"Test_{_name}"] = _runner(_name)
