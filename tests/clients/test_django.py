"""The Django ORM through pgwarden: migrations on a fresh database, CRUD, joins, prefetches, savepoints."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.clients.support import pool_mode, scratch_database, unique
from tests.harness import ROOT

pytestmark = pytest.mark.timeout(120)

EXPECTED = {
    "migrations": [
        "auth.0001_initial",
        "auth.0002_alter_permission_name_max_length",
        "auth.0003_alter_user_email_max_length",
        "auth.0004_alter_user_username_opts",
        "auth.0005_alter_user_last_login_null",
        "auth.0006_require_contenttypes_0002",
        "auth.0007_alter_validators_add_error_messages",
        "auth.0008_alter_user_username_max_length",
        "auth.0009_alter_user_last_name_max_length",
        "auth.0010_alter_group_name_max_length",
        "auth.0011_update_proxy_permissions",
        "auth.0012_alter_user_first_name_max_length",
        "contenttypes.0001_initial",
        "contenttypes.0002_remove_content_type_name",
        "django_app.0001_initial",
    ],
    "tables": ["pgw_dj_author", "pgw_dj_book", "pgw_dj_book_tags", "pgw_dj_tag"],
    "books": [["Ficciones", "11.00", "Borges"], ["Solaris", "9.50", "Lem"]],
    "select_related": [["Ficciones", "Borges"], ["Solaris", "Lem"]],
    "select_related_queries": 1,
    "prefetch_related": [["Borges", ["fiction", "short"]], ["Lem", ["classic", "fiction"]]],
    "prefetch_related_queries": 3,
    "bulk_ids_returned": True,
    "bulk_count": 300,
    "short_count": 151,
    "integrity_error": True,
    "in_atomic": True,
    "authors": ["Borges", "Inner kept", "Lem", "Outer"],
    "per_author": [["Borges", 1, "12.00"], ["Lem", 301, "11222.00"]],
}


@pytest.mark.parametrize("binding", ["client-side", "server-side"])
def test_django_orm(proxy, binding):
    # A database of its own, created and dropped directly on PostgreSQL, so migrations start clean.
    with scratch_database(unique(f"pgw_django_{pool_mode(proxy)}")) as dbname:
        args = [sys.executable, "-m", "tests.django_app.scenario", proxy.host, str(proxy.port), dbname]
        if binding == "server-side":
            args.append("--server-side-binding")
        result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=100)
        assert result.returncode == 0, result.stderr[-3000:]
        assert json.loads(result.stdout) == EXPECTED


def test_django_local_time_zone_from_many_threads(proxy):
    """USE_TZ off, TIME_ZONE Asia/Tokyo: Django sets it with set_config() on each connection; every
    write and read, from 12 threads, must use it whatever backend the statement lands on."""
    with scratch_database(unique(f"pgw_django_tz_{pool_mode(proxy)}")) as dbname:
        result = subprocess.run(
            [sys.executable, "-m", "tests.django_app.scenario", proxy.host, str(proxy.port), dbname, "--local-time"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=100,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert json.loads(result.stdout) == {"round_trips": True, "books": 60, "stored_as_tokyo_time": 60}
