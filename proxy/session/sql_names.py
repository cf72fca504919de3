"""SQL-level prepared statement names of a policed session: which identities each name may hold."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class SqlNames:
    """For each name a policed session PREPAREd in SQL, the scopes (tenant, roles, policy
    version: `Guarded.statement_scope`) its text may have been rewritten for.

    pgwarden rewrites `PREPARE name AS ...` when it is sent, for the session's tenant and
    policy at that moment; an `EXECUTE name` runs whatever PostgreSQL holds. A name is safe
    to run only when every statement it may hold was rewritten for the current scope. A
    PREPARE or DEALLOCATE whose outcome pgwarden cannot be sure of (part of a
    multi-statement query, or sent while other requests are in flight or in a failed
    transaction) leaves every scope the name may hold in place, so a doubt refuses.

    >>> n = SqlNames(); n.prepare("q", "acme"); n.refusal("q", "acme") is None
    True
    >>> n.refusal("q", "globex")[0]
    '42501'
    >>> n.deallocate("q", sure=False); n.prepare("q", "globex"); n.refusal("q", "globex")[0]
    '42501'
    >>> n.deallocate("q", sure=True); n.prepare("q", "globex"); n.refusal("q", "globex") is None
    True
    """

    held: dict[str, set[str]] = field(default_factory=dict)

    def prepare(self, name: str, scope: str) -> None:
        self.held.setdefault(name, set()).add(scope)

    def deallocate(self, name: str, sure: bool) -> None:
        """DEALLOCATE name ('' for ALL, and DISCARD ALL): forgotten only when surely done."""
        if not sure:
            return
        if name:
            self.held.pop(name, None)
        else:
            self.held.clear()

    def refusal(self, name: str, scope: str) -> tuple[str, str, str] | None:
        """(SQLSTATE, message, hint) when running `name` now could run a statement rewritten
        for another tenant, role set or policy version; None when it is safe or not SQL-prepared."""
        scopes = self.held.get(name)
        if scopes is None or scopes == {scope}:
            return None
        return (
            "42501",
            f'prepared statement "{name}" is refused: it was prepared (rewritten) '
            "under another tenant or policy version than this session has now, or pgwarden "
            "cannot be sure it was not",
            f"DEALLOCATE {name} in a query of its own, then PREPARE it again; or PREPARE it under a new name",
        )
