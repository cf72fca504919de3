"""Django settings for the client tests, configured in code from the proxy's address."""

from __future__ import annotations

import django
from django.conf import settings


def configure(
    host: str,
    port: int,
    dbname: str,
    server_side_binding: bool = False,
    local_time_zone: str | None = None,
    assume_role: str | None = None,
) -> None:
    """`local_time_zone`: USE_TZ off and that TIME_ZONE, which Django applies with set_config() per connection;
    `assume_role`: Django's OPTIONS["assume_role"], a SET ROLE after connecting."""
    options = {"sslmode": "disable", "server_side_binding": server_side_binding, "connect_timeout": 10}
    if assume_role:
        options["assume_role"] = assume_role
    settings.configure(
        DEBUG=False,
        USE_TZ=local_time_zone is None,
        TIME_ZONE=local_time_zone or "UTC",
        SECRET_KEY="pgwarden-tests",
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "tests.django_app"],
        DATABASES={
            "default": {
                "ENGINE": "django.db.backends.postgresql",
                "HOST": host,
                "PORT": port,
                "NAME": dbname,
                "USER": "postgres",
                "OPTIONS": options,
            }
        },
    )
    django.setup()
