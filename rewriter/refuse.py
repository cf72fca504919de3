"""The one exception the rewriter raises internally: a statement refused, carrying its Deny."""

from __future__ import annotations

from .result import Deny


class Refused(Exception):
    """Raised anywhere in the analysis; `rewrite()` turns it into the returned Deny."""

    def __init__(self, message: str, hint: str, rule: str, sqlstate: str = "42501") -> None:
        super().__init__(message)
        self.deny = Deny(message, hint, rule, sqlstate)
