"""Sphinx configuration for the hybridmatch documentation.

Build with ``sphinx-build -b html docs docs/_build/html`` from the repository root.
"""

from __future__ import annotations

import importlib.util
import os
import sys

# Document the checkout, installed or not.
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

project = "hybridmatch"
author = "hybridmatch contributors"
copyright = "hybridmatch contributors"

try:
    from hybridmatch import __version__ as release
except ImportError:  # a broken checkout still gets its prose pages built
    release = "unknown"
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]

# Docstrings are Google style.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

# Members are listed per module in api.rst; undocumented members stay out.
autodoc_default_options = {
    "show-inheritance": True,
}
autodoc_member_order = "bysource"
autodoc_typehints = "description"

# No intersphinx: the docs build without network access.

exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

html_theme = "furo" if importlib.util.find_spec("furo") is not None else "alabaster"
html_title = f"hybridmatch {release}"
