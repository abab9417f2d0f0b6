"""The README's first two commands are the project's contract with a newcomer.

The first runs the demo, the second the tests, and CI (``.ci/run``) must run
exactly the second.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


def test_readme_opens_with_demo_then_tests() -> None:
    commands = _readme_commands()
    assert len(commands) >= 2
    demo, tests = commands[0], commands[1]
    assert "\n" not in demo and "\n" not in tests
    assert "python -m jaxadv" in demo and "pip install" in demo
    assert "pytest" in tests and "pip install" in tests


def test_ci_runs_exactly_the_readme_test_command() -> None:
    test_command = _readme_commands()[1]
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_command in ci_lines
