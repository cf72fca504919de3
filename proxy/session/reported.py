"""The ParameterStatus values a client has been told, so that it is told again when a pooled backend's differ."""

from __future__ import annotations

from proxy.session import params
from proxy.session.state import SessionState
from proxy.wire import protocol


def at_login(state: SessionState, server_params: dict[str, str]) -> dict[str, str]:
    """The values a client is shown at login (the pool's, with the client's own startup values
    for the parameters PostgreSQL reports, `options=-c` ones too), remembered as what the client
    has seen. PostgreSQL would show its own spelling of a value (`UTC` for `utc`): the client is
    told that one with its first statement, when the backend reports it.

    The pool's map is shared by every client of the pool; a client keeps only its differences.

    >>> state = SessionState(1, 2, client_params={"application_name": "app", "options": "-c timezone=Asia/Tokyo"})
    >>> at_login(state, {"application_name": "", "TimeZone": "UTC"})
    {'application_name': 'app', 'TimeZone': 'Asia/Tokyo'}
    >>> state.reported, seen(state, "DateStyle")
    ({'application_name': 'app', 'TimeZone': 'Asia/Tokyo'}, None)
    """
    names = {name.lower(): name for name in server_params}
    own = {}
    for key, value in params.startup_pairs(state.client_params):
        name = names.get(key.lower())
        if name is not None and server_params[name] != value:
            own[name] = value
    state.reported_base = server_params
    state.reported = own or None
    return {**server_params, **own} if own else server_params


def seen(state: SessionState, name: str) -> str | None:
    """The value of a reported parameter the client was last told (None: never told)."""
    own = state.reported
    if own is not None and name in own:
        return own[name]
    return state.reported_base.get(name)


def told(state: SessionState, name: str, value: str) -> bool:
    """The client is told `name` = `value` now (or was, by a ParameterStatus it got): remember
    it. True when that differs from what it was told before.

    >>> state = SessionState(1, 2)
    >>> _ = at_login(state, {"standard_conforming_strings": "on"})
    >>> told(state, "standard_conforming_strings", "on"), told(state, "standard_conforming_strings", "off")
    (False, True)
    >>> seen(state, "standard_conforming_strings"), state.reported_base
    ('off', {'standard_conforming_strings': 'on'})
    """
    if seen(state, name) == value:
        return False
    if state.reported is None:
        state.reported = {}
    state.reported[name] = value
    return True


def changed(state: SessionState, msg: bytes, backend_settings: dict[str, str], track: bool) -> bool:
    """A ParameterStatus from the backend (however caused: SET, set_config(), ROLLBACK, a
    replay): with `track`, the setting is tracked for replay, in the client's settings and
    the backend's. True when the value differs from what the client was last told."""
    name, pos = protocol.read_cstr(msg, 5)
    value = protocol.read_cstr(msg, pos)[0]
    if track:
        text = params.reported_setting(name, value)
        if text is not None:
            key = name.lower()
            state.settings[key] = backend_settings[key] = text
    return told(state, name, value)
