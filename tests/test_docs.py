"""The documentation: every public name in the API reference, pages in place, links that resolve.

The HTML build itself (``python -m sphinx -W`` on ``docs/``, warnings as
errors) runs in ``.ci/run``; these checks are the fast, dependency-free part.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import jaxadv
import jaxadv.certify
import jaxadv.evaluation
import jaxadv.sharding
import jaxadv.training
import jaxadv.universal
import jaxadv.zoo

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
DIRECTIVE = re.compile(r"^\.\. auto(?:function|class|exception|data)::\s+(\S+)", re.M)


def _documented() -> set[str]:
    names: set[str] = set()
    for page in (DOCS / "api").glob("*.rst"):
        for target in DIRECTIVE.findall(page.read_text()):
            names.add(target.rsplit(".", 1)[-1])
    return names


def _public() -> dict[str, list[str]]:
    return {
        "jaxadv": [
            n
            for n in jaxadv.__all__
            if n
            not in (
                "certify",
                "compose",
                "config",
                "evaluation",
                "keys",
                "sharding",
                "training",
                "universal",
                "zoo",
            )
        ],
        "jaxadv.compose": list(jaxadv.compose.__all__),
        "jaxadv.certify": list(jaxadv.certify.__all__),
        "jaxadv.evaluation": list(jaxadv.evaluation.__all__),
        "jaxadv.training": list(jaxadv.training.__all__),
        "jaxadv.universal": list(jaxadv.universal.__all__),
        "jaxadv.sharding": list(jaxadv.sharding.__all__),
        "jaxadv.zoo": list(jaxadv.zoo.__all__),
    }


def test_every_public_name_is_in_the_api_reference() -> None:
    documented = _documented()
    missing = {mod: sorted(set(names) - documented) for mod, names in _public().items()}
    assert not any(missing.values()), f"add these to docs/api/*.rst: {missing}"


def _resolve(path: str) -> object:
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for part in parts[i:]:
            obj = getattr(obj, part)
        return obj
    raise ImportError(path)


def test_api_reference_names_exist() -> None:
    # A directive naming something that is gone would only warn at build time.
    for page in (DOCS / "api").glob("*.rst"):
        module = "jaxadv"
        for line in page.read_text().splitlines():
            if m := re.match(r"\.\. currentmodule::\s+(\S+)", line):
                module = m.group(1)
            elif m := DIRECTIVE.match(line):
                target = m.group(1)
                path = target if target.startswith("jaxadv.") else f"{module}.{target}"
                try:
                    _resolve(path)
                except (ImportError, AttributeError) as e:
                    raise AssertionError(f"{page.name} documents {path}, which does not exist") from e


def _toctree_entries(page: Path) -> list[str]:
    entries: list[str] = []
    for block in re.findall(r"\.\. toctree::\n((?:[ \t]+.*\n|\n)+)", page.read_text()):
        for line in block.splitlines():
            item = line.strip()
            if item and not item.startswith(":"):
                entries.append(item)
    return entries


def test_every_toctree_entry_exists() -> None:
    for page in [DOCS / "index.rst", DOCS / "api" / "index.rst"]:
        for entry in _toctree_entries(page):
            base = page.parent / entry
            assert base.with_suffix(".rst").exists() or base.with_suffix(".md").exists(), (
                f"{page.relative_to(ROOT)} lists {entry!r}, which has no page"
            )


def test_guides_are_linked_from_the_index() -> None:
    entries = _toctree_entries(DOCS / "index.rst")
    for guide in ("conventions", "which_attack", "notebooks", "cli", "scaling", "api/index"):
        assert guide in entries


def test_conventions_state_the_threat_model_once() -> None:
    text = (DOCS / "conventions.rst").read_text()
    for term in ("bounds=(lo, hi)", "(0.0, 1.0)", '"linf"', '"l2"', '"l1"', "raw input space", "[batch]"):
        assert term in text, term


def test_which_attack_page_names_real_attacks() -> None:
    text = (DOCS / "which_attack.rst").read_text()
    named = set(re.findall(r":func:`[~]?jaxadv\.([a-z_0-9]+)`", text))
    assert {"fgsm", "pgd", "apgd", "square", "hop_skip_jump", "transfer", "deepfool", "cw_l2"} <= named
    for name in named:
        assert hasattr(jaxadv, name), name


def test_notebooks_page_lists_every_notebook() -> None:
    text = (DOCS / "notebooks.rst").read_text()
    listed = re.findall(r"``(\d\d_[a-z_]+)\.ipynb``", text)
    on_disk = sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb"))
    assert sorted(listed) == on_disk
