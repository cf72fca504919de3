"""What extended-protocol statements do to session state, applied when a portal of theirs runs, not when parsed (pure)."""

from __future__ import annotations

from proxy.session.params import Effect
from proxy.wire import protocol
from proxy.wire.protocol import MSG_BIND, MSG_CLOSE, MSG_PARSE

Effects = tuple[Effect, ...]


class Deferred:
    """The effects of each statement name's text (SET, RESET, BEGIN, SAVEPOINT...), and of each portal
    bound from one: PostgreSQL runs a SET sent as a Parse only when a portal of it is executed, each
    time it is; a Parse never executed changes nothing (and taking it as done lets pgwarden judge
    under a search_path or tenant PostgreSQL does not have).

    >>> bind, run = protocol.message(b"B", b"\\0\\0\\0\\0\\0\\0"), protocol.message(b"E", b"\\0\\0\\0\\0\\0")
    >>> d = Deferred(); d.parsed("", (Effect("set", "search_path", "SET search_path = x"),))
    >>> d.executed(run), d.noted(MSG_BIND, bind)
    ((), None)
    >>> [e.name for e in d.executed(run)]
    ['search_path']
    >>> d.noted(MSG_PARSE, protocol.parse("", "select 1")); d.noted(MSG_BIND, bind)
    >>> d.executed(run), d.statements, d.portals
    ((), {}, {})
    """

    __slots__ = ("portals", "statements")

    def __init__(self) -> None:
        self.statements: dict[str, Effects] = {}  # a statement name ("": unnamed) -> its text's effects
        self.portals: dict[str, Effects] = {}  # a portal ("": unnamed) -> those of the statement bound

    def parsed(self, name: str, effects: Effects) -> None:
        """A Parse of a statement that changes session state, on its way: run when executed."""
        if effects:
            self.statements[name] = effects
        else:
            self.statements.pop(name, None)

    def noted(self, kind: int, msg: bytes) -> None:
        """Any other Parse, a Bind or a Close on its way: what the names and portals hold now."""
        if kind == MSG_PARSE:
            self.statements.pop(protocol.read_cstr(msg, 5)[0], None)
        elif kind == MSG_BIND:
            portal, statement, _ = protocol.decode_bind_names(msg)
            effects = self.statements.get(statement)
            if effects:
                self.portals[portal] = effects
            else:
                self.portals.pop(portal, None)
        elif kind == MSG_CLOSE:
            which, name = protocol.decode_target(msg)
            (self.statements if which == "S" else self.portals).pop(name, None)

    def executed(self, msg: bytes) -> Effects:
        """An Execute on its way: the effects of the portal it runs (none: not a stateful statement's)."""
        return self.portals.get(protocol.read_cstr(msg, 5)[0], ()) if self.portals else ()
