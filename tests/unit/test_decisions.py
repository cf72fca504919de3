"""The router's decision records and the check of declared tenant-parameter types (doctests)."""

from __future__ import annotations

import doctest

from proxy.enforce import decisions


def test_docstring_examples() -> None:
    result = doctest.testmod(decisions)
    assert result.attempted >= 2 and result.failed == 0
