"""Server settings that can carry secrets, and the checks that keep policed sessions from reading them."""

from __future__ import annotations

from .analyse import node_type
from .checks import Resolved, constant_text
from .pgparser import Node
from .refuse import Refused

# PostgreSQL 15 hides these from roles without pg_read_all_settings (GUC_SUPERUSER_ONLY);
# pgwarden's backend role usually is a superuser, so pgwarden hides them itself.
SUPERUSER_ONLY_SETTINGS = frozenset(
    {
        "config_file",
        "data_directory",
        "dynamic_library_path",
        "external_pid_file",
        "hba_file",
        "ident_file",
        "jit_provider",
        "krb_server_keyfile",
        "log_directory",
        "log_filename",
        "primary_conninfo",
        "session_preload_libraries",
        "shared_preload_libraries",
        "ssl_ciphers",
        "ssl_dh_params_file",
        "ssl_ecdh_curve",
        "ssl_max_protocol_version",
        "ssl_min_protocol_version",
        "ssl_passphrase_command",
        "unix_socket_directories",
        "local_preload_libraries",
    }
)
# Readable by every PostgreSQL role, yet often written with credentials inside (an
# `aws s3 cp` with keys, PGPASSWORD=..., a conninfo) or naming the server's private key.
COMMAND_AND_KEY_SETTINGS = frozenset(
    {
        "archive_command",
        "archive_library",
        "archive_cleanup_command",
        "restore_command",
        "recovery_end_command",
        "primary_slot_name",
        "ssl_key_file",
        "ssl_passphrase_command_supports_reload",
    }
)
SECRET_SETTINGS = SUPERUSER_ONLY_SETTINGS | COMMAND_AND_KEY_SETTINGS
SETTINGS_VIEW = "pg_catalog.pg_settings"
HINT = "Ask for the settings you need by name: SHOW name, current_setting('name') or pg_settings WHERE name = '...'."


def secret(name: str) -> bool:
    """True for a setting a policed session may not read (names are case-insensitive).

    >>> secret("Primary_Conninfo"), secret("TimeZone")
    (True, False)
    """
    return name.lower() in SECRET_SETTINGS


def check_show(kind: str, fields: Node) -> None:
    """Refuse SHOW ALL and SHOW of a secret setting.

    >>> check_show("VariableShowStmt", {"name": "transaction_isolation"})
    """
    if kind != "VariableShowStmt":
        return
    name = fields.get("name") or ""
    if name.lower() == "all":
        raise Refused("SHOW ALL is refused: it would list server settings that can carry secrets", HINT, "catalogs")
    if secret(name):
        raise Refused(
            f"SHOW {name} is refused: the setting can carry secrets (passwords, commands, key files)",
            "Read only settings that carry no secrets.",
            "catalogs",
        )


def check_setting_reads(setting_reads: list[list[Node]]) -> None:
    """current_setting() only of a setting named by a literal that carries no secret."""
    for args in setting_reads:
        name = constant_text(args[0]) if args else None
        if name is None:
            raise Refused(
                "current_setting() with a computed setting name is refused: it could read a "
                "setting that carries secrets",
                "Name the setting as a string literal.",
                "catalogs",
            )
        if secret(name):
            raise Refused(
                f"current_setting('{name}') is refused: the setting can carry secrets (passwords, commands, key files)",
                "Read only settings that carry no secrets.",
                "catalogs",
            )


def check_settings_view(kind: str, fields: Node, refs: tuple[Resolved, ...]) -> None:
    """pg_settings only in a SELECT whose sole FROM item it is and whose WHERE keeps nothing
    but non-secret names given as literals (`name = '...'`, `name IN (...)`, ANDed)."""
    views = [r for r in refs if r.name == SETTINGS_VIEW]
    if not views:
        return
    filtered: set[int] = set()
    _filtered_views({kind: fields}, filtered)
    for r in views:
        if id(r.ref.rv) not in filtered:
            raise Refused(
                "reading pg_settings is refused unless the statement keeps only settings named by "
                "literals that carry no secrets (passwords, commands, key files)",
                "Select from pg_settings alone with WHERE name = '...' (or name IN ('...', ...)) "
                "and nothing else in the WHERE.",
                "catalogs",
            )


def _filtered_views(node: object, out: set[int]) -> None:
    """Add id() of each pg_settings RangeVar that is the sole FROM item of a SELECT filtering `name`."""
    if isinstance(node, list):
        for item in node:
            _filtered_views(item, out)
        return
    if not isinstance(node, dict):
        return
    typed = node_type(node)
    if typed and typed[0] == "SelectStmt":
        rv = _sole_settings_item(typed[1].get("fromClause") or [])
        if rv is not None and _names_only(typed[1].get("whereClause"), _qualifiers(rv)):
            out.add(id(rv))
    for value in node.values():
        _filtered_views(value, out)


def _sole_settings_item(from_clause: list[Node]) -> Node | None:
    if len(from_clause) != 1:
        return None
    typed = node_type(from_clause[0])
    if typed is None or typed[0] != "RangeVar" or typed[1]["relname"] != "pg_settings":
        return None
    return typed[1] if typed[1].get("schemaname") in (None, "pg_catalog") else None


def _qualifiers(rv: Node) -> set[tuple[str, ...]]:
    """How a column of this FROM item may be written: name, ref.name (and schema.rel.name)."""
    alias = (rv.get("alias") or {}).get("aliasname")
    if alias:
        return {(), (alias,)}
    return {(), ("pg_settings",), ("pg_catalog", "pg_settings")}


def _names_only(where: object, qualifiers: set[tuple[str, ...]]) -> bool:
    """True when `where` is one or more ANDed restrictions of `name` to non-secret literals.

    Nothing else may stand in the WHERE: PostgreSQL may evaluate another condition on a
    secret row first, and its error would show the value.
    """
    typed = node_type(where)
    if typed is None:
        return False
    kind, fields = typed
    if kind == "BoolExpr":
        return fields.get("boolop") == "AND_EXPR" and all(_names_only(a, qualifiers) for a in fields["args"])
    if kind != "A_Expr" or [n.get("String", {}).get("sval") for n in fields.get("name", [])] != ["="]:
        return False
    sides = [fields.get("lexpr"), fields.get("rexpr")]
    if fields.get("kind") == "AEXPR_IN" and _is_name(sides[0], qualifiers):
        values = (node_type(sides[1]) or ("", {}))[1].get("items") or [None]
    elif fields.get("kind") == "AEXPR_OP":
        values = [s for s in sides if not _is_name(s, qualifiers)]
        values = values if len(values) == 1 else [None]
    else:
        return False
    texts = [_string_literal(v) for v in values]
    return all(t is not None and not secret(t) for t in texts)


def _is_name(node: object, qualifiers: set[tuple[str, ...]]) -> bool:
    typed = node_type(node)
    if typed is None or typed[0] != "ColumnRef":
        return False
    parts = tuple(f.get("String", {}).get("sval") for f in typed[1]["fields"])
    return parts[-1] == "name" and parts[:-1] in qualifiers


def _string_literal(node: object) -> str | None:
    const = node_type(node)
    if const is None or const[0] != "A_Const" or "sval" not in const[1]:
        return None
    text: str = const[1]["sval"].get("sval", "")
    return text
