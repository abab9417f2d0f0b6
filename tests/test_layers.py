"""The package reads one way: every import goes to the same layer or a lower one.

Each module under ``jaxadv/`` is parsed with :mod:`ast` (nothing is imported)
and mapped to its layer, bottom to top:

0. the private core and the foundation modules (``_core``, ``typing``,
   ``config``, ``validation``, ``keys``, ``losses``, ``models``,
   ``threat_models``, ``success``, ``gradients``, ``targets``, ``engine``);
1. ``compose``, the parts of the iterative attacks;
2. the attacks (``attacks``, ``callables``);
3. what runs attacks (``evaluation``, ``training``, ``certify``,
   ``universal``, ``sharding``);
4. the entry points (``zoo``, ``examples``, ``cli``, ``demo``,
   ``__main__``, the package ``__init__``).

Every ``jaxadv.*`` import must go to the same or a lower layer; only the entry
points may import the package ``jaxadv`` itself (the flat namespace) or import
inside a function (to keep the command line's start fast). A new module must
be given a layer here.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path
from typing import Iterator

import pytest

import jaxadv

# Read from the source tree: the test must run even when an import cycle breaks `import jaxadv`.
ROOT = Path(__file__).resolve().parents[1] / "jaxadv"

# Longest prefix wins: "jaxadv.attacks" covers every module of the package.
LAYERS: dict[str, int] = {
    "jaxadv._core": 0,
    "jaxadv.typing": 0,
    "jaxadv.config": 0,
    "jaxadv.validation": 0,
    "jaxadv.keys": 0,
    "jaxadv.losses": 0,
    "jaxadv.models": 0,
    "jaxadv.threat_models": 0,
    "jaxadv.success": 0,
    "jaxadv.gradients": 0,
    "jaxadv.targets": 0,
    "jaxadv.engine": 0,
    "jaxadv.compose": 1,
    "jaxadv.attacks": 2,
    "jaxadv.callables": 2,
    "jaxadv.evaluation": 3,
    "jaxadv.training": 3,
    "jaxadv.certify": 3,
    "jaxadv.universal": 3,
    "jaxadv.sharding": 3,
    "jaxadv.zoo": 4,
    "jaxadv.examples": 4,
    "jaxadv.cli": 4,
    "jaxadv.demo": 4,
    "jaxadv.__main__": 4,
    "jaxadv": 4,
}
# The modules that may import the package itself, and import inside functions.
ENTRY_POINTS = {"jaxadv", "jaxadv.__main__", "jaxadv.cli", "jaxadv.demo"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def is_package(name: str) -> bool:
    return (ROOT.parent / Path(*name.split(".")) / "__init__.py").exists()


def is_module(name: str) -> bool:
    path = ROOT.parent / Path(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def layer_of(name: str) -> int:
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in LAYERS:
            return LAYERS[prefix]
    raise KeyError(name)


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def imports(name: str, tree: ast.AST) -> Iterator[tuple[str, ast.stmt, bool]]:
    """``(imported module, statement, inside a function)`` for every ``jaxadv`` import;
    ``from jaxadv.pkg import sub`` names the module ``jaxadv.pkg.sub`` when ``sub`` is one,
    and the bare package ``jaxadv`` stands for the flat namespace."""

    def walk(node: ast.AST, in_function: bool) -> Iterator[tuple[str, ast.stmt, bool]]:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name.split(".")[0] == "jaxadv":
                        yield alias.name, child, in_function
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    package = name if is_package(name) else name.rpartition(".")[0]
                    anchor = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    base = ".".join([*anchor, *([base] if base else [])])
                if base.split(".")[0] != "jaxadv":
                    continue
                for alias in child.names:
                    sub = f"{base}.{alias.name}"
                    yield (sub if is_module(sub) else base), child, in_function
            yield from walk(child, nested)

    yield from walk(tree, False)


@functools.cache
def all_imports() -> list[tuple[str, str, int, bool]]:
    found = []
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        for target, node, in_function in imports(name, tree):
            found.append((name, target, node.lineno, in_function))
    return found


def test_every_module_has_a_layer():
    unplaced = [name for name in MODULES if not any(name == p or name.startswith(p + ".") for p in LAYERS)]
    assert not unplaced, f"give these modules a layer in tests/test_layers.py: {unplaced}"


def test_the_walk_sees_the_imports():
    # The check below is only as good as the walk: it must see the imports we know of.
    seen = {(src, dst) for src, dst, _, _ in all_imports()}
    assert ("jaxadv.compose.loop", "jaxadv._core.problem") in seen
    assert ("jaxadv.attacks.blackbox", "jaxadv.validation") in seen  # from jaxadv import validation
    assert ("jaxadv.cli", "jaxadv") in seen


def test_no_import_goes_upward():
    upward = [
        f"{src}:{line} imports {dst} (layer {layer_of(src)} -> {layer_of(dst)})"
        for src, dst, line, _ in all_imports()
        if dst != "jaxadv" and layer_of(dst) > layer_of(src)
    ]
    assert not upward, "\n".join(upward)


def test_only_entry_points_import_the_package():
    flat = [
        f"{src}:{line}" for src, dst, line, _ in all_imports() if dst == "jaxadv" and src not in ENTRY_POINTS
    ]
    assert not flat, f"import the module that defines a name, not the package jaxadv: {flat}"


def test_no_import_inside_a_function():
    inner = [
        f"{src}:{line} imports {dst}"
        for src, dst, line, in_function in all_imports()
        if in_function and src not in ENTRY_POINTS
    ]
    assert not inner, f"imports inside functions (move them to the top of the module): {inner}"


@pytest.mark.parametrize("package", ["jaxadv.certify", "jaxadv.training"])
def test_certify_and_training_use_the_core_not_the_attack_internals(package):
    # They may run a named attack (jaxadv.attacks.iterative.pgd) but take the
    # problem from the core, not from the attacks' package.
    bad = [
        f"{src}:{line}"
        for src, dst, line, _ in all_imports()
        if src.startswith(package) and dst in ("jaxadv.attacks.base", "jaxadv.attacks.blackbox")
    ]
    assert not bad, bad


def test_no_module_of_the_package_is_over_600_lines() -> None:
    """One idea per module: a module that grows past 600 lines is split along a seam."""
    root = Path(jaxadv.__file__).resolve().parent
    lines = {str(p.relative_to(root)): len(p.read_text().splitlines()) for p in root.rglob("*.py")}
    long = {name: n for name, n in lines.items() if n > 600}
    assert not long, long
