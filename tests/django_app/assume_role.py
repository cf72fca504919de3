"""Django with OPTIONS["assume_role"] through pgwarden: prints, as JSON, the role each of its transactions ran as.

Usage: python -m tests.django_app.assume_role HOST PORT DBNAME ROLE
"""

from __future__ import annotations

import contextlib
import json
import sys


def run() -> dict:
    from django.db import connection, transaction

    users, pids = [], set()
    for i in range(20):
        with transaction.atomic() if i % 2 else contextlib.nullcontext():  # autocommit, or a transaction
            with connection.cursor() as cur:
                cur.execute("SELECT current_user::text, pg_backend_pid(), pg_sleep(0.005)")
                user, pid, _ = cur.fetchone()
        users.append(user)
        pids.add(pid)
    return {"users": sorted(set(users)), "backends": len(pids)}


if __name__ == "__main__":
    from tests.django_app.settings import configure

    host, port, dbname, role = sys.argv[1:5]
    configure(host, int(port), dbname, assume_role=role)
    print(json.dumps(run()))
