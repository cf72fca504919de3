"""Django settings for the client tests, configured in code from the proxy's address."""

from __future__ import annotations

import django
from django.conf import settings


def configure(host: str, port: int, dbname: str, server_side_binding: bool = False) -> None:
    settings.configure(
        DEBUG=False,
        USE_TZ=True,
        TIME_ZONE="UTC",
        SECRET_KEY="pgwarden-tests",
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "tests.django_app"],
        DATABASES={"default": {
            "ENGINE": "django.db.backends.postgresql",
            "HOST": host, "PORT": port, "NAME": dbname, "USER": "postgres",
            "OPTIONS": {"sslmode": "disable", "server_side_binding": server_side_binding,
                        "connect_timeout": 10},
        }},
    )
    django.setup()
