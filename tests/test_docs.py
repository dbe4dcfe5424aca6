"""The API reference lists every public name, and each has a docstring with a runnable example.

``docs/api.rst`` documents modules with ``automodule``; autodoc then shows a module's
members that are in its ``__all__`` and have a docstring. A public function or class is
therefore in the reference when the module that defines it is listed with ``:members:``
and exports it. The examples themselves run as doctests (``--doctest-modules``).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import pytest

import hybridmatch

ROOT = Path(__file__).resolve().parent.parent
API = (ROOT / "docs" / "api.rst").read_text()

_AUTOMODULE = re.compile(r"^\.\. automodule:: (\S+)\n((?:[ \t]+:.*\n)*)", re.MULTILINE)


def documented_modules() -> dict[str, str]:
    """``{module: its option lines}`` for every ``automodule`` of api.rst."""
    return {match.group(1): match.group(2) for match in _AUTOMODULE.finditer(API)}


def public_modules() -> list[str]:
    """hybridmatch and every module of it whose dotted name has no part starting with ``_``."""
    names = ["hybridmatch"]
    for info in pkgutil.walk_packages(hybridmatch.__path__, "hybridmatch."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return names


def public_objects() -> list[tuple[str, object]]:
    """``(module.name, object)`` for each function or class in a public module's ``__all__``."""
    found = []
    for module_name in public_modules():
        module = importlib.import_module(module_name)
        for name in getattr(module, "__all__", []):
            obj = getattr(module, name)
            if inspect.isclass(obj) or inspect.isfunction(obj):
                found.append((f"{module_name}.{name}", obj))
    return found


def test_the_extractors_see_the_reference() -> None:
    modules = documented_modules()
    assert "hybridmatch.costs.classes" in modules and ":members:" in modules["hybridmatch.costs.classes"]
    assert len(public_objects()) > 50


def test_every_public_module_is_in_the_reference() -> None:
    missing = [name for name in public_modules() if name not in documented_modules()]
    assert not missing, f"add these modules to docs/api.rst: {missing}"


@pytest.mark.parametrize("path, obj", public_objects(), ids=[path for path, _ in public_objects()])
def test_every_public_name_is_documented_with_an_example(path: str, obj: object) -> None:
    home = obj.__module__
    options = documented_modules().get(home)
    assert options is not None and ":members:" in options, f"{path}: {home} is not in docs/api.rst with :members:"
    exported = getattr(importlib.import_module(home), "__all__", None)
    assert exported is None or obj.__name__ in exported, f"{path}: {home}.__all__ lacks {obj.__name__}"
    doc = inspect.getdoc(obj) or ""
    assert doc.strip(), f"{path} has no docstring"
    assert ">>>" in doc, f"{path}'s docstring has no example (a doctest)"


def test_the_readme_links_every_page() -> None:
    readme = (ROOT / "README.md").read_text()
    links = set(re.findall(r"\]\((docs/[^)]+\.rst)\)", readme))
    for link in links:
        assert (ROOT / link).is_file(), f"README.md links {link}, which does not exist"
    pages = {f"docs/{page.name}" for page in (ROOT / "docs").glob("*.rst")} - {"docs/index.rst"}
    assert pages <= links, f"README.md's Documentation section lacks {sorted(pages - links)}"
    assert "docs/examples/index.rst" in links and "make docs" in readme
