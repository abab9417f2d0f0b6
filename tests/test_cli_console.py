"""The installed ``jaxadv`` command, run as a user runs it: the save recipe of
docs/cli.rst as a script, then the console script from the directory holding
the model module, and from elsewhere with ``--app-dir``.

Each subprocess pays JAX's import (seconds), so there are only four, and only
one runs a whole evaluation.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

# Slow tier: every test runs the installed console script in a subprocess.
pytestmark = pytest.mark.slow

DOCS = Path(__file__).resolve().parents[1] / "docs" / "cli.rst"
SCRIPT = Path(sys.executable).parent / ("jaxadv.exe" if os.name == "nt" else "jaxadv")


def _doc_block(first_line: str) -> str:
    """The ``.. code-block:: python`` of docs/cli.rst whose code starts with ``first_line``."""
    text = DOCS.read_text()
    for match in re.finditer(r"\.\. code-block:: python\n\n((?:(?: {4}.*)?\n)+)", text):
        code = "\n".join(line[4:] for line in match.group(1).splitlines())
        if code.lstrip().startswith(first_line):
            return code
    raise AssertionError(f"docs/cli.rst has no python block starting with {first_line!r}")


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def documented(tmp_path_factory: Any) -> Path:
    """A directory prepared exactly as docs/cli.rst says: mymodels.py, then save_checkpoint.py run."""
    root = tmp_path_factory.mktemp("console")
    (root / "mymodels.py").write_text(_doc_block("# mymodels.py"))
    (root / "save_checkpoint.py").write_text(_doc_block("# save_checkpoint.py"))
    done = _run([sys.executable, "save_checkpoint.py"], cwd=root)
    assert done.returncode == 0, done.stderr
    assert (root / "ckpt").is_dir() and any((root / "ckpt").iterdir()), "the recipe saved no checkpoint"
    assert (root / "test.npz").is_file()
    return root


EVALUATE = [
    "evaluate",
    "--eps",
    "0.05",
    "--suite",
    "fgsm",
    "--batch-size",
    "64",
    "--no-progress",
    "--no-checks",
]


def test_console_script_imports_the_model_from_the_working_directory(documented: Path) -> None:
    """From the module's directory, as ``python -m jaxadv`` would; the checkpoint of
    the documented recipe restores (the labels are the saved model's predictions)."""
    assert SCRIPT.is_file(), f"the console script is not installed at {SCRIPT}"
    args = ["--model", "mymodels:make_model", "--weights", "ckpt", "--data", "test.npz", "--out", "out"]
    done = _run([str(SCRIPT), *EVALUATE, *args], cwd=documented)
    assert done.returncode == 0, done.stderr
    report = json.loads((documented / "out" / "report.json").read_text())
    assert report["clean_accuracy"] == 1.0


def test_console_script_app_dir(documented: Path) -> None:
    """From another directory, ``--app-dir`` finds the module. Labels beyond the
    model's classes stop the run once the model has been imported, restored and
    run on the data: a full evaluation is not needed to see the import work."""
    elsewhere = documented / "elsewhere"
    elsewhere.mkdir()
    with np.load(documented / "test.npz") as data:
        np.savez(elsewhere / "shifted.npz", x=data["x"], y=data["y"] + 10)
    args = [
        "--model", "mymodels:make_model",
        "--app-dir", str(documented),
        "--weights", str(documented / "ckpt"),
        "--data", "shifted.npz",
        "--out", "out",
    ]  # fmt: skip
    done = _run([str(SCRIPT), *EVALUATE, *args], cwd=elsewhere)
    assert done.returncode == 2
    assert "but the model has 10 classes" in done.stderr, done.stderr
    assert "No module named" not in done.stderr


def test_console_script_user_error_is_one_line(documented: Path) -> None:
    args = ["--model", "mymodels:make_model", "--weights", "ckpt", "--data", "test.npz", "--out", "bad"]
    done = _run([str(SCRIPT), "evaluate", "--eps", "inf", *args], cwd=documented)
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines == ["jaxadv evaluate: error: --eps must be a finite number >= 0, got inf"], done.stderr
    assert not (documented / "bad").exists()
