"""Sphinx configuration: the API reference is generated from the docstrings.

Build (warnings are errors)::

    pip install -e ".[docs]"
    python -m sphinx -W --keep-going -b html docs build/docs
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

project = "jaxadv"
author = "the jaxadv authors"
copyright = "the jaxadv authors"

import jaxadv  # noqa: E402

version = release = jaxadv.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
master_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# Google-style docstrings, as the code uses them.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True  # NamedTuple "Attributes:" as fields, not duplicate attribute entries
napoleon_use_rtype = False

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
autodoc_default_options = {"show-inheritance": False}

# No intersphinx: the docs build offline (CI reaches no documentation sites).

myst_heading_anchors = 3

html_theme = "furo"
html_title = f"jaxadv {release}"
html_static_path: list[str] = []
