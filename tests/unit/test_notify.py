"""The LISTEN/UNLISTEN statements pgwarden answers itself, and the NotificationResponse it writes (no I/O)."""

from __future__ import annotations

import pytest

from proxy.pooling.listener import decode, quote
from proxy.session.notify import DISCARD_ALL, Command, command, notification_response
from proxy.wire import protocol as p


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("LISTEN jobs", Command(True, "jobs")),
        ("  listen Jobs ;", Command(True, "jobs")),
        ('LISTEN "Jobs ""x"""', Command(True, 'Jobs "x"')),
        ("UNLISTEN jobs", Command(False, "jobs")),
        ("unlisten *", Command(False, "*")),
        ("LISTEN " + "c" * 70, Command(True, "c" * 63)),
        ("DISCARD ALL", DISCARD_ALL),
        ("listen a; select 1", None),
        ("/* c */ LISTEN a", None),
        ("select 'listen a'", None),
        ("DISCARD PLANS", None),
    ],
)
def test_the_statements_answered_here(sql, expected):
    assert command([(p.MSG_QUERY, p.query(sql))]) == expected


def test_a_notification_round_trips():
    msg = notification_response(42, "jobs", "payload ✓")
    note = decode(msg)
    assert (note.pid, note.channel, note.payload) == (42, "jobs", "payload ✓")
    assert quote('a"b') == '"a""b"'
