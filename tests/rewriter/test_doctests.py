"""The `>>>` examples in the rewriter's docstrings (each rule's example among them) stay true."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import rewriter

MODULES = [m.name for m in pkgutil.iter_modules(rewriter.__path__, "rewriter.")]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
