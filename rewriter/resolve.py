"""Resolve relation and function names as PostgreSQL would, and decide which ones a session may use."""

from __future__ import annotations

from .context import Context, TableRule
from .pg_names import BUILTIN_FUNCTIONS, CATALOG_RELATIONS
from .refuse import Refused
from .statistics import check_statistics_relation, statistics_function

CATALOG_SCHEMAS = frozenset({"pg_catalog", "information_schema"})

# Catalog relations that expose other sessions' statements, secrets, or (planner
# statistics) sample values taken from every tenant's rows.
SENSITIVE_CATALOGS = frozenset(
    f"pg_catalog.{n}"
    for n in (
        "pg_stat_activity",
        "pg_stat_statements",
        "pg_stat_statements_info",
        "pg_authid",
        "pg_shadow",
        "pg_user_mapping",
        "pg_user_mappings",
        "pg_largeobject",
        "pg_largeobject_metadata",
        "pg_stats",
        "pg_statistic",
        "pg_stats_ext",
        "pg_stats_ext_exprs",
        "pg_statistic_ext_data",
        "pg_stat_replication",
        "pg_stat_wal_receiver",
        "pg_stat_subscription",
        "pg_subscription",
        "pg_hba_file_rules",
        "pg_ident_file_mappings",
        "pg_file_settings",
        "pg_db_role_setting",
        "pg_replication_slots",
        "pg_stat_ssl",
        "pg_stat_gssapi",
        "pg_backend_memory_contexts",
        "pg_locks",
        "pg_foreign_server",
        "pg_foreign_table",
        "pg_policy",
        "pg_policies",
        # what a pooled backend holds for whichever client it serves: statement texts (rewritten
        # for another tenant), cursors, and every session's prepared transactions (gids, owners)
        "pg_prepared_statements",
        "pg_cursors",
        "pg_prepared_xacts",
        # replication origins and their progress (PostgreSQL revokes both from PUBLIC)
        "pg_replication_origin",
        "pg_replication_origin_status",
    )
) | frozenset(
    {
        "information_schema.user_mapping_options",
        "information_schema.user_mappings",
        "information_schema.foreign_server_options",
    }
)

# Built-in functions that read files, run SQL text, reach other sessions or
# databases, change settings or administer the server. Every other pg_catalog
# function only computes and is allowed; a function outside pg_catalog must be
# listed in functions.allow.
DANGEROUS_FUNCTIONS = frozenset(
    {
        "pg_terminate_backend",
        "pg_cancel_backend",
        "pg_reload_conf",
        "pg_rotate_logfile",
        "pg_current_logfile",
        "pg_promote",
        "pg_switch_wal",
        "query_to_xml",
        "query_to_xmlschema",
        "query_to_xml_and_xmlschema",
        "ts_stat",
        "ts_rewrite",
        "pg_import_system_collations",
        "pg_blocking_pids",
        "pg_safe_snapshot_blocking_pids",
        "pg_isolation_test_session_is_blocked",
        "pg_stat_file",
        "pg_log_backend_memory_contexts",
        "pg_get_backend_memory_contexts",
        "pg_stat_statements",
        "pg_stat_statements_reset",
        "pg_get_keywords",
        "pg_hba_file_rules",
        "pg_ident_file_mappings",
        "pg_show_all_file_settings",
        "pg_show_all_settings",
        "pg_show_replication_origin_status",
        "pg_control_system",
        "pg_control_checkpoint",
        "pg_control_recovery",
        "pg_control_init",
        "pg_walfile_name",
        "pg_walfile_name_offset",
        "pg_prepared_xact",
        "pg_lock_status",
        "pg_get_shmem_allocations",
        "pg_backup_start",
        "pg_backup_stop",
        "pg_start_backup",
        "pg_stop_backup",
        "pg_create_restore_point",
        "pg_wal_replay_pause",
        "pg_wal_replay_resume",
        "pg_nextoid",
        "pg_stop_making_pinned_objects",
        "pg_sequence_last_value",
        "pg_export_snapshot",
        "pg_notification_queue_usage",
        "setval",
        "pg_notify",
        "brin_desummarize_range",
        "brin_summarize_new_values",
        "brin_summarize_range",
        "gin_clean_pending_list",
    }
)
# Built-ins that read what the backend holds for its session: on a pooled backend that is
# whichever client it served last (its statements, cursors, sequence values).
PER_BACKEND_FUNCTIONS = frozenset({"pg_prepared_statement", "pg_cursor", "lastval", "currval"})
DANGEROUS_FUNCTIONS |= PER_BACKEND_FUNCTIONS
# Built-ins whose effect crosses tenants: advisory locks share one key space per database (a
# tenant sees and blocks another's locks), currtid2() follows any row's update chain by its
# ctid, setseed() leaves random()'s state to the next client of a pooled backend
# (DISCARD ALL keeps it). Each maps to why it is refused and what to do instead.
ADVISORY_LOCKS = (
    ("advisory locks share one key space across the database, so a tenant would see and block another tenant's locks"),
    "Lock your own rows with SELECT ... FOR UPDATE instead.",
)
ADVISORY_LOCK_FUNCTIONS = frozenset(
    {
        "pg_advisory_lock",
        "pg_advisory_lock_shared",
        "pg_advisory_xact_lock",
        "pg_advisory_xact_lock_shared",
        "pg_try_advisory_lock",
        "pg_try_advisory_lock_shared",
        "pg_try_advisory_xact_lock",
        "pg_try_advisory_xact_lock_shared",
        "pg_advisory_unlock",
        "pg_advisory_unlock_shared",
        "pg_advisory_unlock_all",
    }
)
TID_CHAIN = (
    "it follows the update chain of any row by its ctid, another tenant's included",
    "Select the row again by its key.",
)
SEED = (
    (
        "random()'s seed stays with the pooled backend and would make the next client's random() "
        "predictable (DISCARD ALL does not reset it)"
    ),
    "Generate reproducible values in the application, or use gen_random_uuid()/random() unseeded.",
)
CROSS_TENANT_FUNCTIONS: dict[str, tuple[str, str]] = {
    **dict.fromkeys(ADVISORY_LOCK_FUNCTIONS, ADVISORY_LOCKS),
    **dict.fromkeys(("currtid", "currtid2"), TID_CHAIN),
    "setseed": SEED,
}
DANGEROUS_FUNCTIONS |= frozenset(CROSS_TENANT_FUNCTIONS)
DANGEROUS_PREFIXES = (
    "pg_read_",
    "pg_ls_",
    "lo_",
    "dblink",
    "pg_file_",
    "pg_stat_get_",
    "pg_stat_reset",
    "pg_stat_clear",
    "pg_logical_",
    "pg_replication_",
    "pg_create_",
    "pg_drop_replication",
    "pg_copy_",
    "binary_upgrade_",
    "cursor_to_",
    "table_to_",
    "schema_to_",
    "database_to_",
    "pg_get_wal_",
    "pg_wal_",
    "pg_current_wal",
    "pg_last_wal",
    "pg_last_xact",
    "pg_stat_have",
)
LARGE_OBJECT_FUNCTIONS = frozenset({"loread", "lowrite"})


def search_order(search_path: tuple[str, ...]) -> tuple[str, ...]:
    """Schemas searched for an unqualified name: pg_catalog first unless the path places it.

    >>> search_order(("public",))
    ('pg_catalog', 'public')
    """
    path = tuple(s for s in search_path if s != "$user")
    return path if "pg_catalog" in path else ("pg_catalog", *path)


def _refuse_schema(schema: str, relname: str) -> None:
    if schema == "pg_temp" or schema.startswith(("pg_temp_", "pg_toast")):
        raise Refused(
            f'relation "{schema}.{relname}" is in a temporary or internal schema',
            "Temporary and internal schemas are for bypass roles only.",
            "default",
        )


def resolve_relation(schema: str | None, relname: str, ctx: Context) -> str:
    """The "schema.relation" PostgreSQL would read for a name, or Refused when it is unknown.

    Relations known are the live schema's, the policy's and pg_catalog's.
    """

    def known(name: str) -> bool:
        return name in ctx.schema or name in ctx.tables

    if schema is not None:
        _refuse_schema(schema, relname)
        name = f"{schema}.{relname}"
        if schema in CATALOG_SCHEMAS or known(name):
            return name
    else:
        for s in search_order(ctx.search_path):
            name = f"{s}.{relname}"
            if known(name) or (s == "pg_catalog" and relname in CATALOG_RELATIONS):
                return name
    shown = relname if schema is None else f"{schema}.{relname}"
    raise Refused(
        f'relation "{shown}" is not known to pgwarden\'s policy',
        f"Add the table to a policy file (tables:) or qualify it; search_path is {', '.join(ctx.search_path)}.",
        "default",
    )


def relation_name_only(schema: str | None, relname: str, search_path: tuple[str, ...]) -> str:
    """Best-effort "schema.relation" without a live schema (for classify()).

    >>> relation_name_only(None, "pg_class", ("public",)), relation_name_only(None, "t", ("app",))
    ('pg_catalog.pg_class', 'app.t')
    """
    if schema is not None:
        return f"{schema}.{relname}"
    if relname in CATALOG_RELATIONS:
        return f"pg_catalog.{relname}"
    path = [s for s in search_path if s not in ("$user", "pg_catalog")]
    return f"{path[0] if path else 'public'}.{relname}"


def table_rule(name: str, action: str, ctx: Context) -> TableRule | None:
    """The rule that lets this session do `action` on relation `name`; None for a readable catalog."""
    schema = name.partition(".")[0]
    check_statistics_relation(name)
    if name in SENSITIVE_CATALOGS or name in ctx.denied_relations:
        raise Refused(
            f'reading "{name}" is refused: it exposes other sessions\' data or secrets',
            "Only bypass roles may read this catalog.",
            "catalogs",
        )
    if schema in CATALOG_SCHEMAS and name not in ctx.tables:
        if action != "select":
            raise Refused(f'{action} on catalog "{name}" is refused', "Catalogs are read-only.", "catalogs")
        return None
    rule = ctx.tables.get(name)
    if rule is None:
        raise Refused(
            f'{action} on "{name}" is refused: the policy does not list it (default: deny)',
            f"Add {name} under tables: in a policy file and grant {action} to your role.",
            f"tables.{name}",
        )
    if action not in rule.actions:
        raise Refused(
            f'{action} on "{name}" is refused: your role has no {action} grant',
            f"Grant {action} on {name} to your role in the policy file.",
            f"tables.{name}.grants",
        )
    if rule.tenant_column is not None and ctx.tenant is None:
        raise Refused(
            f'"{name}" is tenant-scoped and this session has no tenant',
            "Connect as a user mapped to a tenant, or SET pgwarden.tenant (trusted users).",
            "tenancy.sources",
        )
    if rule.protected and name not in ctx.schema:
        raise Refused(
            f'"{name}" is not in the live schema, so its protected projection cannot be built',
            "Check the table name in the policy against the database.",
            f"tables.{name}",
        )
    return rule


def function_allowed(parts: tuple[str, ...], ctx: Context) -> bool:
    """True when a call of function `parts` (as written) is safe for this session.

    >>> from .context import Context
    >>> ctx = Context({}, {}, None, frozenset({"public.order_total"}))
    >>> [function_allowed(p, ctx) for p in (("lower",), ("pg_read_file",), ("order_total",), ("evil",))]
    [True, False, True, False]
    """
    name = parts[-1]
    if len(parts) == 2:
        return not dangerous(name) if parts[0] == "pg_catalog" else ".".join(parts) in ctx.allowed_functions
    if len(parts) != 1:
        return False
    for schema in search_order(ctx.search_path):
        if schema == "pg_catalog" and name in BUILTIN_FUNCTIONS:
            return not dangerous(name)
        if f"{schema}.{name}" in ctx.allowed_functions:
            return True
    return False


def dangerous(name: str) -> bool:
    """True for built-ins refused to every non-bypass session.

    >>> dangerous("pg_read_binary_file"), dangerous("lo_import"), dangerous("upper")
    (True, True, False)
    """
    return (
        name in DANGEROUS_FUNCTIONS
        or name in LARGE_OBJECT_FUNCTIONS
        or name.startswith(DANGEROUS_PREFIXES)
        or statistics_function(name)
    )
