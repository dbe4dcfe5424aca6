"""Every Python snippet of README.md and every .rst page under docs/ (subfolders too) runs as written.

The snippets of one file run in order in one namespace, as a reader follows the page
(a later snippet may use names an earlier one defined). README.md contributes its
```python fenced blocks; an .rst page its ``.. code-block:: python`` directives and any
``>>>`` doctest examples.
"""

from __future__ import annotations

import doctest
import re
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").rglob("*.rst") if "_build" not in p.parts)]

_FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
_DIRECTIVE = re.compile(r"^(?P<indent>[ \t]*)\.\. code-block:: python[ \t]*\n")


def markdown_snippets(text: str) -> list[tuple[int, str]]:
    """``(line, code)`` of each ```python block, line 1-based at the block's first code line."""
    return [(text.count("\n", 0, match.start(1)) + 1, match.group(1)) for match in _FENCE.finditer(text)]


def rst_snippets(text: str) -> list[tuple[int, str]]:
    """``(line, code)`` of each ``.. code-block:: python`` directive's body."""
    lines = text.splitlines()
    snippets = []
    index = 0
    while index < len(lines):
        match = _DIRECTIVE.match(lines[index] + "\n")
        index += 1
        if match is None:
            continue
        indent = len(match.group("indent"))
        while index < len(lines) and lines[index].strip().startswith(":"):  # directive options
            index += 1
        while index < len(lines) and not lines[index].strip():
            index += 1
        body_start = index
        while index < len(lines) and (
            not lines[index].strip() or len(lines[index]) - len(lines[index].lstrip()) > indent
        ):
            index += 1
        body = textwrap.dedent("\n".join(lines[body_start:index])).strip("\n") + "\n"
        snippets.append((body_start + 1, body))
    return snippets


def run_snippets(name: str, snippets: list[tuple[int, str]]) -> dict:
    """Run ``snippets`` in order in one namespace; an error names the page and line."""
    namespace: dict = {"__name__": f"snippets_{Path(name).stem}"}
    for line, code in snippets:
        try:
            exec(compile(code, f"{name}:{line}", "exec"), namespace)
        except Exception as error:
            raise AssertionError(f"the snippet of {name} at line {line} fails: {error!r}") from error
    return namespace


def run_doctests(name: str, text: str) -> None:
    parser = doctest.DocTestParser()
    test = parser.get_doctest(text, {}, name, name, 0)
    if not test.examples:
        return
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    runner.run(test)
    failed, _ = runner.summarize(verbose=False)
    assert failed == 0, f"{failed} doctest example(s) of {name} fail"


# README.md's first snippet runs the native solver, which checks its build on first use.
@pytest.mark.parametrize(
    "page",
    [pytest.param(page, marks=pytest.mark.slow) if page.name == "README.md" else page for page in PAGES],
    ids=[str(page.relative_to(ROOT)) for page in PAGES],
)
def test_page_snippets_run(page: Path) -> None:
    text = page.read_text()
    snippets = markdown_snippets(text) if page.suffix == ".md" else rst_snippets(text)
    run_snippets(str(page.relative_to(ROOT)), snippets)
    if page.suffix == ".rst":
        run_doctests(str(page.relative_to(ROOT)), text)


def test_every_python_block_is_found() -> None:
    # A block the extractors miss would go untested: count the markers independently.
    for page in PAGES:
        text = page.read_text()
        if page.suffix == ".md":
            assert len(markdown_snippets(text)) == text.count("```python"), page.name
        else:
            assert len(rst_snippets(text)) == text.count(".. code-block:: python"), page.name
    assert len(markdown_snippets((ROOT / "README.md").read_text())) >= 4


def test_a_broken_snippet_fails() -> None:
    page = "Intro\n\n```python\nx = 1\n```\n\n```python\ny = x + undefined_name\n```\n"
    snippets = markdown_snippets(page)
    assert [line for line, _ in snippets] == [4, 8]
    with pytest.raises(AssertionError, match=r"page.md at line 8 fails: NameError"):
        run_snippets("page.md", snippets)
    rst = "Title\n=====\n\n.. code-block:: python\n\n   a = 1\n\n   b = a + 1\n\ntext\n\n.. code-block:: python\n\n   raise ValueError\n"
    namespace = run_snippets("page.rst", rst_snippets(rst)[:1])
    assert namespace["b"] == 2
    with pytest.raises(AssertionError, match=r"page.rst at line 14 fails: ValueError"):
        run_snippets("page.rst", rst_snippets(rst))
