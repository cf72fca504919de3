"""The `>>>` examples in the docstrings of proxy/, policies/ and rewriter/ (each rewrite rule's among them) stay true."""

from __future__ import annotations

import doctest
import importlib
import inspect
import pkgutil

import pytest

import policies
import proxy
import rewriter

PACKAGES = (proxy, policies, rewriter)
MODULES = sorted(
    info.name
    for package in PACKAGES
    for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}.")
    if not info.name.endswith(".__main__")  # runs the CLI when imported
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


@pytest.mark.parametrize("name", MODULES)
def test_every_example_is_run(name: str) -> None:
    """A `>>>` that doctest cannot find (in a comment, a nested function) would never run: none exists."""
    module = importlib.import_module(name)
    found = sum(len(test.examples) for test in doctest.DocTestFinder().find(module))
    assert inspect.getsource(module).count(">>>") == found
