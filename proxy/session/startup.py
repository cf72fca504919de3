"""What pgwarden refuses in a client's StartupMessage, judged against the config (pure)."""

from __future__ import annotations

from proxy.session.state import Refusal

REQUIRE_TLS = Refusal(
    "28000", "pgwarden requires TLS for every client (listen.tls.mode = require)", "connect with sslmode=require"
)


def user_refusal(user: str, method: str, users_listed: bool, known: bool) -> Refusal | None:
    """Why this user may not log in at all (a FATAL before authentication), or None.

    >>> user_refusal("", "trust", False, False).message
    'no PostgreSQL user name specified in startup packet'
    >>> user_refusal("bob", "trust", True, False).sqlstate, user_refusal("bob", "scram-sha-256", True, False)
    ('28000', None)
    """
    if not user:
        return Refusal("28000", "no PostgreSQL user name specified in startup packet", None)
    if method == "trust" and users_listed and not known:
        return Refusal(
            "28000", f'role "{user}" is not known to pgwarden', "add the user under auth.users in the pgwarden config"
        )
    return None
