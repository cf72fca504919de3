"""Where policies and the rewriter meet: a session's identity, and a decision for each statement it sends."""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

from policies import evaluate
from policies.load import Policy
from proxy.enforce import shapes
from proxy.enforce.decisions import (  # noqa: F401 (re-exported: the session and guard import them from here)
    ORIGINAL,
    Decision,
    Forward,
    Identity,
    Refuse,
    SetTenant,
    tenant_parameter_types,
)
from rewriter import api as rewriter
from rewriter import pgparser
from rewriter.catalog import ImplicitRisks
from rewriter.context import Column, Context, MaskSpec, TableRule, UserRoutines
from rewriter.pgparser import PARSER_MAJOR
from rewriter.result import Allow, Deny, Result, Rewrite
from rewriter.risks import implicit_risks
from rewriter.server_grammar import SUPPORTED_SERVERS, unsupported

log = logging.getLogger("pgwarden.router")

CACHE_SIZE = 20_000
SHAPED_MAX_CHARS = 262_144  # longer texts are decided as they are, never by shape
_SERIALS = itertools.count(1)  # each Router (policy load or reload) gets its own


class PolicyLoadError(Exception):
    """The policy files cannot be used; `.errors` lists file:line: sentence for each problem."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


DecisionKey = tuple[str, str, str | None, str, tuple[str, ...] | None]
"""What a cached decision depends on: statement text, user, tenant, database, search_path."""
ContextKey = tuple[str, str | None, str, tuple[str, ...] | None]
"""What a session's rewriter Context depends on: user, tenant, database, search_path."""


def load_router(
    path: Path,
    schemas: dict[str, dict[str, tuple[Column, ...]]] | None = None,
    search_paths: dict[str, tuple[str, ...]] | None = None,
    routines: dict[str, UserRoutines] | None = None,
    server_majors: dict[str, int] | None = None,
) -> Router:
    """Load the policy at `path` (a file or a folder) into a new Router; PolicyLoadError if it is bad."""
    from policies.load import load_policy
    from policies.source import SourceError

    try:
        policy = load_policy(path)
    except SourceError as exc:
        raise PolicyLoadError(list(exc.errors)) from exc
    return Router(
        policy,
        Path(path),
        dict(schemas or {}),
        dict(search_paths or {}),
        dict(routines or {}),
        dict(server_majors or {}),
    )


class Router:
    """An immutable pairing of one policy version with the live schemas; reload builds a new one."""

    def __init__(
        self,
        policy: Policy,
        source: Path,
        schemas: dict[str, dict[str, tuple[Column, ...]]],
        search_paths: dict[str, tuple[str, ...]] | None = None,
        routines: dict[str, UserRoutines] | None = None,
        server_majors: dict[str, int] | None = None,
    ) -> None:
        self.policy = policy
        self.source = source
        self.schemas = schemas
        self.generation = 0  # bumped when a schema is read again: sessions' cached decisions expire
        self.serial = next(_SERIALS)  # which policy load this is: statements rewritten under it say so
        self.search_paths = search_paths or {}
        self.routines = routines or {}
        self.server_majors = server_majors or {}  # database -> its backend's PostgreSQL major
        self.monitor = policy.mode == "monitor"
        self.tenant_setting, self._signed, self._key = _tenant_settings(policy)
        self._cache: dict[DecisionKey, Decision] = {}
        self._contexts: dict[ContextKey, Context] = {}
        self._shapes: dict[DecisionKey, Decision] = {}
        self._risks: dict[str, ImplicitRisks] = {}
        self.hits = self.misses = 0
        self.observe: Callable[[float], object] | None = None  # called with the seconds each uncached decision took

    def add_schema(
        self,
        database: str,
        schema: dict[str, tuple[Column, ...]],
        search_path: tuple[str, ...],
        routines: UserRoutines | None = None,
        server_major: int | None = None,
    ) -> None:
        """A database's live schema, read (again) by the control plane, with its own functions and operators
        and its backend's PostgreSQL major (None: offline, judged with the parser's own grammar)."""
        self.schemas[database] = schema
        self.search_paths[database] = search_path
        self.routines[database] = routines or UserRoutines()
        self.server_majors[database] = server_major or PARSER_MAJOR
        if not self.server_supported(database):
            log.error(
                "database %r runs PostgreSQL %s: pgwarden supports %s to %s; every statement of a "
                "policed session there is refused",
                database,
                server_major,
                min(SUPPORTED_SERVERS),
                max(SUPPORTED_SERVERS),
            )
        self.generation += 1
        self._cache.clear()
        self._shapes.clear()
        self._contexts.clear()
        self._risks.pop(database, None)
        for problem in self.problems(database):
            log.error("%s", problem)

    def server_supported(self, database: str) -> bool:
        """True when pgwarden can judge statements for this database's backend major."""
        return self.server_majors.get(database, PARSER_MAJOR) in SUPPORTED_SERVERS

    def version_problem(self, database: str, reported: str) -> tuple[str, str] | None:
        """(message, hint) when policed sessions cannot use this database: its backend's major is not
        supported, or the server_version a backend reported (ParameterStatus) is another major than
        the control plane read; None when statements can be judged.
        """
        major = self.server_majors.get(database, PARSER_MAJOR)
        if major not in SUPPORTED_SERVERS:
            deny = unsupported(major).deny
            return deny.message, deny.hint
        digits = re.match(r"\d+", reported or "")
        if digits is not None and int(digits.group()) != major:
            return (
                f"the backend reports PostgreSQL {reported}, but pgwarden read PostgreSQL {major} "
                f"for database {database!r}: it cannot tell which grammar runs the statements",
                "Point the control plane and the backends of this database at the same PostgreSQL, "
                "or reload pgwarden after an upgrade.",
            )
        return None

    def problems(self, database: str) -> list[str]:
        """Tables and masked columns the policy names that the live schema lacks."""
        schema = self.schemas.get(database, {})
        out = []
        for table, columns in evaluate.masked_columns(self.policy).items():
            if table not in schema:
                out.append(
                    f"{self.source}: tables.{table}: no such table or view in database "
                    f"{database!r}; fix the name or create it"
                )
                continue
            present = {c.name for c in schema[table]}
            out += [
                f"{self.source}: tables.{table}.masks.{col}: no such column in {table}"
                for col in columns
                if col not in present
            ]
        for table in evaluate.tables(self.policy):
            if table not in schema and table not in evaluate.masked_columns(self.policy):
                out.append(
                    f"{self.source}: tables.{table}: no such table or view in database "
                    f"{database!r}; fix the name or create it"
                )
        return out

    # --- identity ---------------------------------------------------------------------------

    def identity(self, user: str) -> Identity:
        policy = self.policy
        return Identity(
            user,
            frozenset(evaluate.roles_of(policy, user)),
            evaluate.is_bypass(policy, user),
            evaluate.tenant_from_users(policy, user),
            user in _trusted_users(policy),
        )

    # --- statements -------------------------------------------------------------------------

    def decide(
        self, ident: Identity, tenant: str | None, database: str, sql: str, search_path: tuple[str, ...] | None = None
    ) -> Decision:
        """What to do with one statement text (a Query, or a Parse's text)."""
        if ident.bypass:
            return ORIGINAL
        key = (sql, ident.user, tenant, database, search_path)
        decision = self._cache.get(key)
        if decision is not None:
            self.hits += 1
        else:
            self.misses += 1
            decision = self._by_shape(ident, tenant, database, sql, search_path) or self._decide(
                ident, tenant, database, sql, search_path
            )
            if not isinstance(decision, SetTenant):
                if len(self._cache) >= CACHE_SIZE:
                    self._cache.clear()
                self._cache[key] = decision
        return decision

    def _by_shape(
        self, ident: Identity, tenant: str | None, database: str, sql: str, search_path: tuple[str, ...] | None
    ) -> Decision | None:
        """The decision for `sql` from the one made for its shape (literals as parameters).

        Simple-protocol clients (psycopg2, pgbench -M simple) send each value inside the
        text; deciding the shape once and putting the literals back keeps them off the
        cold path. None when the shape does not settle it (then the text is decided itself), and
        for a text over SHAPED_MAX_CHARS: scanning it costs more than deciding it (a huge statement
        is refused by its parse alone, rewriter.complexity), and its shape is unlikely to come again.
        """
        if "pgwarden." in sql or len(sql) > SHAPED_MAX_CHARS:
            return None
        shape = shapes.shape(sql)
        if shape is None:
            return None
        text, base, literals = shape
        key = (text, ident.user, tenant, database, search_path)
        decision = self._shapes.get(key)
        if decision is None:
            decision = self._decide(ident, tenant, database, text, search_path)
            if len(self._shapes) >= CACHE_SIZE:
                self._shapes.clear()
            self._shapes[key] = decision
        if not isinstance(decision, Forward):
            return None  # refused in shape: judge the text itself, with its literals
        if decision.sql is None:
            return ORIGINAL
        checks = []
        for number, expected in decision.param_checks:
            if number < base:
                checks.append((number, expected))
            elif shapes.string_value(literals[number - base]) != expected:
                return None  # a literal names the tenant column: the text itself decides
        restored = shapes.restore(decision.sql, base, literals)
        if restored is None:
            return None
        return Forward(restored, tuple(checks), decision.tables, decision.masked)

    def _decide(
        self, ident: Identity, tenant: str | None, database: str, sql: str, search_path: tuple[str, ...] | None
    ) -> Decision:
        tenant_stmt = self._tenant_statement(ident, sql, tenant)
        if tenant_stmt is not None:
            return tenant_stmt
        ctx = self._context(ident, tenant, database, search_path)
        started = time.perf_counter()
        result = rewriter.rewrite(sql, ctx)
        elapsed = time.perf_counter() - started
        if self.observe is not None:
            self.observe(elapsed)
        decision = self._from_result(result)
        if self.monitor and not (isinstance(decision, Forward) and decision.sql is None):
            log.warning(
                "monitor mode: would %s for user=%s tenant=%s: %s", _describe(decision), ident.user, tenant, sql[:500]
            )
            return ORIGINAL
        if elapsed > 0.05:
            log.info("rewrite took %.1f ms: %s", elapsed * 1000, sql[:200])
        return decision

    def _from_result(self, result: Result) -> Decision:
        if isinstance(result, Allow):
            return ORIGINAL
        if isinstance(result, Rewrite):
            return Forward(result.sql, result.param_checks, result.tables, result.masked)
        assert isinstance(result, Deny)
        hint = f"{result.hint} (policy file {self.policy.file_of(result.rule)}, rule `{result.rule}`)"
        return Refuse(result.sqlstate, result.message, hint, result.rule)

    def _context(
        self, ident: Identity, tenant: str | None, database: str, search_path: tuple[str, ...] | None
    ) -> Context:
        key = (ident.user, tenant, database, search_path)
        ctx = self._contexts.get(key)
        if ctx is None:
            path = search_path or self.search_paths.get(database) or ("public",)
            ctx = Context(
                _table_rules(self.policy, ident.user),
                self.schemas.get(database, {}),
                tenant,
                frozenset(evaluate.allowed_functions(self.policy)),
                tuple(s.replace("$user", ident.user) for s in path if s),
                evaluate.SENSITIVE_CATALOG_RELATIONS,
                self.routines.get(database, UserRoutines()),
                self.implicit(database),
                self.server_majors.get(database, PARSER_MAJOR),
            )
            self._contexts[key] = ctx
        return ctx

    def implicit(self, database: str) -> ImplicitRisks:
        """What PostgreSQL would call unnamed in `database` that functions.allow does not cover (once per read)."""
        risks = self._risks.get(database)
        if risks is None:
            catalog = self.routines.get(database, UserRoutines()).catalog
            risks = self._risks[database] = implicit_risks(catalog, frozenset(evaluate.allowed_functions(self.policy)))
        return risks

    def parameter_types(self, ident: Identity, database: str, param_types: bytes) -> Refuse | None:
        """A Parse that declares a parameter of an unsafe type: PostgreSQL would run the type's
        input or receive function on each value bound to it."""
        if ident.bypass or len(param_types) <= 2:
            return None
        risks = self.implicit(database)
        count = int.from_bytes(param_types[:2], "big")
        oids = [int.from_bytes(param_types[2 + 4 * i : 6 + 4 * i], "big") for i in range(count)]
        name = next((risks.type_oids[oid] for oid in oids if oid in risks.type_oids), None)
        if name is None:
            return None
        risk = risks.types[name]
        return Refuse(
            "42501",
            f"Parse refused: a parameter is declared of type {name}: {risk.why}",
            f"Review {', '.join(risk.functions)} and add them to functions.allow (policy file "
            f"{self.policy.file_of('functions.allow')}, rule `functions.allow`), or declare the "
            "parameter without that type.",
            "functions.allow",
        )

    # --- SET / RESET of the tenant settings -------------------------------------------------

    def _tenant_statement(self, ident: Identity, sql: str, tenant: str | None) -> Decision | None:
        """SET/RESET of pgwarden's tenant settings: honoured, or refused; None for other SQL."""
        if "pgwarden." not in sql.lower():
            return None
        shown = _single_show(sql)
        if shown is not None and shown == self.tenant_setting:
            literal = "NULL" if tenant is None else "'" + tenant.replace("'", "''") + "'"
            return Forward(f'SELECT CAST({literal} AS text) AS "{shown}"')
        stmt = _single_variable_set(sql)
        if stmt is None:
            return None
        name, value, local, reset = stmt
        if ident.tenant is not None and name in (self.tenant_setting, self._signed):
            return Refuse(
                "42501",
                f'user "{ident.user}" has a fixed tenant ({ident.tenant}) from '
                f"tenancy.sources.users; {name} cannot change it",
                "the first tenant source that matches wins: connect as a user without a "
                f"fixed tenant to switch tenants (policy file {self.policy.file_of('tenancy')})",
                "tenancy.sources",
            )
        if name == self.tenant_setting:
            if not ident.may_set_tenant:
                return Refuse(
                    "42501",
                    f'user "{ident.user}" may not set {name}',
                    "only the setting source's trusted_users may (policy file "
                    f"{self.policy.file_of('tenancy')}, rule `tenancy.sources`); use a "
                    "signed token instead",
                    "tenancy.sources",
                )
            if reset:
                return SetTenant(None, local, sql)
            if value is None:
                return Refuse("22023", f"{name} must be set to a string", "SET it to the tenant id", "tenancy.sources")
            return SetTenant(value, local, sql)
        if name == self._signed:
            if reset:
                return SetTenant(None, local, f"RESET {self.tenant_setting or 'pgwarden.tenant'}")
            return self._token(value or "", local)
        return None

    def _token(self, token: str, local: bool) -> Decision:
        key = os.environ.get(self._key or "", "").encode()
        if not key:
            return Refuse(
                "42501",
                "signed tenant tokens are not accepted: the key is not set",
                f"set the environment variable {self._key} for pgwarden",
                "tenancy.sources",
            )
        try:
            tenant = evaluate.verify_tenant_token(token, key, time.time())
        except evaluate.TokenError as exc:
            return Refuse(
                "42501",
                f"tenant token refused: {exc}; the tenant is unchanged",
                "get a fresh token signed with the current key",
                "tenancy.sources",
            )
        name = self.tenant_setting or "pgwarden.tenant"
        quoted = tenant.replace("'", "''")
        return SetTenant(tenant, local, f"SET {'LOCAL ' if local else ''}{name} TO '{quoted}'")


def _describe(decision: Decision) -> str:
    if isinstance(decision, Refuse):
        return f"refuse ({decision.rule}: {decision.message})"
    if isinstance(decision, Forward):
        return f"rewrite to: {decision.sql}"
    return "change the tenant"


def _single_show(sql: str) -> str | None:
    """The setting name of a lone SHOW statement, else None."""
    try:
        stmts = json.loads(pgparser.parse_sql_json(sql))["stmts"]
    except Exception:
        return None
    if len(stmts) != 1 or "VariableShowStmt" not in stmts[0]["stmt"]:
        return None
    name: str = stmts[0]["stmt"]["VariableShowStmt"]["name"]
    return name.lower()


def _single_variable_set(sql: str) -> tuple[str, str | None, bool, bool] | None:
    """(name, string value, is_local, is_reset) of a lone SET/RESET statement, else None."""
    try:
        stmts = json.loads(pgparser.parse_sql_json(sql))["stmts"]
    except Exception:
        return None
    if len(stmts) != 1 or "VariableSetStmt" not in stmts[0]["stmt"]:
        return None
    node = stmts[0]["stmt"]["VariableSetStmt"]
    args = node.get("args") or []
    value = None
    if len(args) == 1 and "sval" in args[0].get("A_Const", {}):
        value = args[0]["A_Const"]["sval"]["sval"]
    reset = node["kind"] in ("VAR_RESET", "VAR_SET_DEFAULT")
    return node.get("name", "").lower(), value, bool(node.get("is_local")), reset


def _tenant_settings(policy: Policy) -> tuple[str | None, str | None, str | None]:
    setting = signed = key = None
    for source in evaluate.tenant_sources(policy):
        if source.get("setting"):
            setting = source["setting"].lower()
        if source.get("signed_setting"):
            signed, key = source["signed_setting"].lower(), source.get("key_env")
    if signed and not setting:
        setting = "pgwarden.tenant"  # where a verified token's tenant is kept
    return setting, signed, key


def _trusted_users(policy: Policy) -> frozenset[str]:
    users: set[str] = set()
    for source in evaluate.tenant_sources(policy):
        if source.get("setting"):
            users |= set(source.get("trusted_users") or ())
    return frozenset(users)


def _table_rules(policy: Policy, user: str) -> dict[str, TableRule]:
    rules = {}
    for name, tenant_column in evaluate.tables(policy).items():
        masks = {
            col: MaskSpec(spec.kind, tuple(sorted(_mask_options(spec).items())))
            for col, spec in evaluate.masks_for(policy, user, name).items()
        }
        rules[name] = TableRule(name, tenant_column, frozenset(evaluate.allowed_actions(policy, user, name)), masks)
    return rules


def _mask_options(spec: evaluate.MaskRule) -> dict[str, object]:
    options = {k: v for k, v in spec.options.items() if v is not None}
    salt_env = options.pop("salt_env", None)
    if spec.kind == "hash":
        options["salt"] = os.environ.get(salt_env, "") if salt_env else ""
    return options
