"""Sphinx configuration for the hybridmatch documentation.

Build with ``make docs`` (``sphinx-build -W -n -b html docs docs/_build/html``) from the
repository root. The figures of the concepts page are drawn by the library itself,
by ``docs/make_figures.py``, at the start of every build.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys

DOCS = os.path.dirname(os.path.abspath(__file__))
# Document the checkout, installed or not.
sys.path.insert(0, os.path.abspath(os.path.join(DOCS, "..")))
sys.path.insert(0, DOCS)

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

# Every cross-reference must resolve (``-n``): a page that names something that does
# not exist fails the build.
nitpicky = True

# No intersphinx: the docs build without network access, so names of torch, numpy,
# scipy and the standard library have no target. They are the only names let through.
nitpick_ignore_regex = [
    ("py:.*", r"(torch|numpy|scipy|collections|abc|typing|transformers)(\..*)?"),
    ("py:class", r"(Tensor|ndarray|Generator)"),
    # The dimension names and dtypes inside docstring types such as ``Tensor[B, N, 4] int64``;
    # napoleon turns every word of a type into a reference, but these are not names.
    ("py:class", r"([A-Z]'?|[A-Z]_max|\d+|\d+ \* J|int64|floating|integer|optional|sequence|nested sequence)"),
    ("py:class", r"(sequence of )?J floats"),
    # Module-level type aliases in signatures (``NanPolicy = Literal["raise", "worst"]``, ...);
    # each parameter's docstring spells out the values.
    ("py:class", r"(NanPolicy|Criterion|Convention)"),
]

exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

html_theme = "furo" if importlib.util.find_spec("furo") is not None else "alabaster"
html_title = f"hybridmatch {release}"
html_static_path: list[str] = []


# --- references to re-exported names ------------------------------------------------
# Each public class or function is documented once, where api.rst lists it; docstrings
# name it by any public path (``hybridmatch.HungarianMatcher``,
# ``hybridmatch.matchers.HungarianMatcher``, ``Cost`` inside hybridmatch.costs). A
# reference that does not resolve as written is resolved to the documented object it
# imports as, never to a guess: an unknown name still fails the build.

_documented: dict[int, str] = {}


def _import_path(path: str):
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for name in parts[cut:]:
                obj = getattr(obj, name)
        except AttributeError:
            return None
        return obj
    return None


def _documented_name(env, obj) -> str | None:
    domain = env.get_domain("py")
    if not _documented:
        for name, entry in domain.objects.items():
            if entry.objtype in ("class", "function", "exception", "method", "module"):
                found = _import_path(name)
                if found is not None:
                    _documented.setdefault(id(found), name)
    return _documented.get(id(obj))


def _resolve_alias(app, env, node, contnode):
    if node.get("refdomain") != "py":
        return None
    from sphinx.util.nodes import make_refnode

    target = node["reftarget"].lstrip("~.")
    module, owner = node.get("py:module"), node.get("py:class")
    prefixes = [p for p in (f"{module}.{owner}" if module and owner else None, module, "hybridmatch") if p]
    domain = env.get_domain("py")
    for candidate in [f"{p}.{target}" for p in prefixes] + [target]:
        if not candidate.startswith("hybridmatch"):
            continue
        parts = candidate.split(".")
        # The longest prefix that is a documented object; the rest is its attribute.
        for cut in range(len(parts), 0, -1):
            obj = _import_path(".".join(parts[:cut]))
            if obj is None or isinstance(obj, (str, int, float, tuple, frozenset)):
                continue
            name = _documented_name(env, obj)
            if name is None:
                continue
            full = ".".join([name, *parts[cut:]])
            entry = domain.objects.get(full)
            if entry is not None:
                return make_refnode(app.builder, node["refdoc"], entry.docname, entry.node_id, contnode, full)
            break
    return None


def _public_bases(app, name, obj, options, bases):
    # A private base class (``_BoxCost``) has no page: show the public class it derives from.
    index = 0
    while index < len(bases):
        base = bases[index]
        if getattr(base, "__name__", "").startswith("_") and getattr(base, "__module__", "").startswith("hybridmatch"):
            bases[index : index + 1] = [b for b in base.__bases__ if b is not object]
        else:
            index += 1


def _draw_figures(app):
    import make_figures

    make_figures.main(os.path.join(DOCS, "_figures"))


def setup(app):
    app.connect("builder-inited", _draw_figures)
    app.connect("missing-reference", _resolve_alias)
    app.connect("autodoc-process-bases", _public_bases)
