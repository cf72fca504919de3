"""Session state a client sets (SET, RESET, DISCARD): tracked so it can be re-applied on another backend."""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from typing import NamedTuple

from rewriter import pgparser
from rewriter.leading import first_word

# First words of statements that may change session state; anything else is not parsed here.
_WATCHED = frozenset(
    {
        "set",
        "reset",
        "discard",
        "listen",
        "prepare",
        "savepoint",
        "release",
        "rollback",
        "abort",
        "begin",
        "start",
        "commit",
        "end",
        "execute",
        "explain",
        "create",
        "deallocate",
        "drop",
        "alter",
    }
)
_NOT_FORWARDED = frozenset({"user", "database", "replication", "options"})


class Arg(NamedTuple):
    """One argument of a SQL EXECUTE: a plain literal's value (None: NULL), or not a literal."""

    literal: bool
    value: str | None = None


@dataclass(frozen=True, slots=True)
class Effect:
    """What one statement does to session state.

    kind: 'set' (name, text to replay), 'reset' (name), 'reset_all', 'discard_all',
    'listen', 'prepare', 'identity' (SET ROLE / SESSION AUTHORIZATION), 'local' (no lasting effect),
    'execute' (SQL EXECUTE, also inside EXPLAIN or CREATE TABLE AS: name, the statement's;
    args, its arguments) and
    'deallocate' (name; '' for ALL), 'database' (name: a database PostgreSQL wants no other session
    on: DROP DATABASE, ALTER DATABASE ... RENAME, CREATE DATABASE's template);
    and what transaction control does to them: 'savepoint', 'release', 'rollback_to' (name: the
    savepoint's), 'begin' (BEGIN, START TRANSACTION), 'commit' (COMMIT, END, PREPARE TRANSACTION)
    and 'rollback' (ROLLBACK, ABORT) of the whole transaction, name 'chain' for AND CHAIN.
    """

    kind: str
    name: str = ""
    text: str = ""
    args: tuple[Arg, ...] = field(default=(), repr=False)


_HEADS = frozenset(
    {
        "set",
        "res",
        "dis",
        "lis",
        "pre",
        "dea",
        "rol",
        "abo",
        "cre",
        "dec",
        "sav",
        "rel",
        "beg",
        "sta",
        "com",
        "end",
        "exe",
        "exp",
        "dro",
        "alt",
    }
)
# Words without which a statement cannot leave state behind (temporary objects, WITH HOLD
# cursors, session advisory locks, set_config()): a cheap scan before any parse. U& is an
# identifier spelled with escapes (U&"set\005fconfig"), which only the parse can read.
# The same words (temp|hold|set_config|advisory_lock|u&), factored on their first letter: the
# regex engine then tries one character class per byte instead of five words (1.1 µs per
# pgbench statement instead of 2.1; it runs on every Query and Parse under transaction pooling).
# The words of text that may leave state behind; MAY_LEAVE_STATE and session_sql.may_leave_state
# are faster forms of the same test (a property test holds both to these words).
MAY_LEAVE_STATE_WORDS = ("temp", "hold", "set_config", "advisory_lock", "u&")
MAY_LEAVE_STATE = re.compile(r"(?i)[thsau](?:(?<=t)emp|(?<=h)old|(?<=s)et_config|(?<=a)dvisory_lock|(?<=u)&)")


def plain_transaction_control(sql: str) -> bool:
    """BEGIN, COMMIT, END, ROLLBACK ... as written, nothing else (`_PLAIN`)."""
    return sql.strip().rstrip(";").strip().lower() in _PLAIN


def maybe_stateful(sql: str) -> bool:
    """Cheap test: could this statement text change session state? (False for plain SELECT/DML.)

    >>> maybe_stateful("SELECT 1;"), maybe_stateful(" set x = 1"), maybe_stateful("select 1; set x=1")
    (False, True, True)
    """
    head = sql.lstrip()[:3].lower()
    return (
        head in _HEADS
        or not (head[:1].isascii() and head[:1].isalpha())  # (a comment, a parenthesis...: judged in full)
        or ";" in sql.rstrip().rstrip(";")
        or MAY_LEAVE_STATE.search(sql) is not None
    )


_ADVISORY = frozenset(
    {"pg_advisory_lock", "pg_advisory_lock_shared", "pg_try_advisory_lock", "pg_try_advisory_lock_shared"}
)
_CURSOR_OPT_HOLD = 0x0020
# Settings PostgreSQL reports with ParameterStatus whenever they change: tracked that way.
REPORTED = frozenset(
    {
        "application_name",
        "client_encoding",
        "datestyle",
        "intervalstyle",
        "timezone",
        "standard_conforming_strings",
        "default_transaction_read_only",
    }
)


def leaves_state(sql: str) -> bool:
    """Does this statement leave state on the backend beyond its transaction?

    Temporary objects (TEMP tables, views, sequences; anything created in pg_temp, which
    shadows even built-in type names), session-level advisory locks, WITH HOLD cursors and
    set_config() of a setting PostgreSQL does not report do: under transaction pooling such
    a client keeps its backend, which is reset (DISCARD ALL) before anyone else gets it.
    Judged on PostgreSQL's parse tree, so comments, quoting and case do not hide them.

    >>> leaves_state("CREATE TEMP TABLE t (x int)"), leaves_state("select pg_advisory_xact_lock(1)")
    (True, False)
    >>> leaves_state("SELECT set_config('TimeZone', $1, false)"), leaves_state("select set_config($1, $2, false)")
    (False, True)
    >>> leaves_state("declare c cursor with/**/hold for select 1"), leaves_state("create table pg_temp.t (x int)")
    (True, True)
    >>> leaves_state("select 1 into temporary t"), leaves_state('SELECT "SET_CONFIG"(1)'), leaves_state('SELECT "set_config"(1)')
    (True, False, True)
    >>> leaves_state("create temp table t (x int) on commit drop"), leaves_state("select temperature from t")
    (False, False)
    """
    return MAY_LEAVE_STATE.search(sql) is not None and _parsed_leaves_state(sql)


@functools.lru_cache(maxsize=2048)
def _parsed_leaves_state(sql: str) -> bool:
    try:
        tree = json.loads(pgparser.parse_sql_json(sql))
    except Exception:  # PostgreSQL will refuse it too; if it does not, keep the backend
        return True
    return _holds(tree)


def _holds(node: object) -> bool:
    """Walk a parse tree for anything that outlives the transaction (see `leaves_state`)."""
    if isinstance(node, list):
        return any(_holds(item) for item in node)
    if not isinstance(node, dict):
        return False
    if node.get("relpersistence") == "t" or str(node.get("schemaname", "")).startswith("pg_temp"):
        return True
    string = node.get("String")
    if isinstance(string, dict) and str(string.get("sval", "")).startswith("pg_temp"):
        return True
    cursor = node.get("DeclareCursorStmt")
    if isinstance(cursor, dict) and int(cursor.get("options", 0)) & _CURSOR_OPT_HOLD:
        return True
    call = node.get("FuncCall")
    if isinstance(call, dict) and _call_holds(call):
        return True
    dropped = node.get("oncommit", node.get("onCommit")) == "ONCOMMIT_DROP"  # gone at COMMIT
    return any(_holds(value) for key, value in node.items() if not (dropped and key in ("relation", "rel")))


def _call_holds(call: dict) -> bool:
    """A session advisory lock, or set_config() of a setting that is not reported."""
    names = [part.get("String", {}).get("sval", "") for part in call.get("funcname", [])]
    name = names[-1] if names else ""
    if name in _ADVISORY:
        return True
    if name != "set_config":
        return False
    args = call.get("args") or [{}]
    setting = args[0].get("A_Const", {}).get("sval", {}).get("sval")
    return setting is None or setting.lower() not in REPORTED


def effects(sql: str) -> list[Effect]:
    """The session-state effects of a query string; [] when it has none (the common, cheap case).

    >>> effects("SET TimeZone TO 'UTC'")
    [Effect(kind='set', name='timezone', text="SET TimeZone TO 'UTC'")]
    >>> effects("select 1")
    []
    >>> effects('SAVEPOINT "A"; ROLLBACK TO a; RELEASE a')
    [Effect(kind='savepoint', name='A', text=''), Effect(kind='rollback_to', name='a', text=''), Effect(kind='release', name='a', text='')]
    """
    if first_word(sql) not in _WATCHED and ";" not in sql.rstrip().rstrip(";"):
        return []
    plain = _PLAIN.get(sql.strip().rstrip(";").strip().lower())
    if plain is not None:  # BEGIN / COMMIT / ROLLBACK, in every transaction: no parse
        return [plain]
    try:
        stmts = json.loads(pgparser.parse_sql_json(sql))["stmts"]
    except Exception:  # pglast raises its own ParseError; PostgreSQL will report it to the client
        return []
    out = []
    for raw in stmts:
        start = raw.get("stmt_location", 0)
        text = sql[start : start + raw["stmt_len"]] if raw.get("stmt_len") else sql[start:]
        out += _effects(raw["stmt"], text.strip().rstrip(";").strip())
    return out


def _effects(stmt: dict, text: str) -> list[Effect]:
    """A statement's effects; SET SESSION CHARACTERISTICS is the three defaults it sets."""
    ((kind, node),) = stmt.items()
    if kind == "VariableSetStmt" and node.get("name", "").lower() == "session characteristics":
        return [
            Effect("set", f"default_{d['DefElem']['defname']}", _characteristic(d["DefElem"]))
            for d in node.get("args") or []
        ]
    effect = _effect(kind, node, text)
    return [effect] if effect is not None else []


def _characteristic(elem: dict) -> str:
    """`SET default_transaction_x TO '...'` for one element of SET SESSION CHARACTERISTICS."""
    const = elem["arg"]["A_Const"]
    value = const["sval"]["sval"] if "sval" in const else ("on" if const.get("ival", {}).get("ival") else "off")
    return f"SET default_{elem['defname']} TO {_literal(value)}"


_TRANSACTION = {
    "TRANS_STMT_SAVEPOINT": "savepoint",
    "TRANS_STMT_RELEASE": "release",
    "TRANS_STMT_ROLLBACK_TO": "rollback_to",
    "TRANS_STMT_ROLLBACK": "rollback",
    "TRANS_STMT_BEGIN": "begin",
    "TRANS_STMT_START": "begin",
    "TRANS_STMT_COMMIT": "commit",
    "TRANS_STMT_PREPARE": "commit",
}  # PREPARE TRANSACTION keeps the SETs, as COMMIT does
_PLAIN = {
    text: Effect(kind)
    for kind, words in [
        ("begin", ["begin", "begin transaction", "begin work", "start transaction"]),
        ("commit", ["commit", "end", "commit transaction", "commit work"]),
        ("rollback", ["rollback", "abort", "rollback transaction", "rollback work"]),
    ]
    for text in words
}


def _effect(kind: str, node: dict, text: str) -> Effect | None:
    if kind == "TransactionStmt":
        control = _TRANSACTION.get(node.get("kind", ""))
        if control in ("commit", "rollback"):
            return Effect(control, "chain" if node.get("chain") else "")
        return Effect(control, node.get("savepoint_name", "")) if control else None
    if kind == "ListenStmt":
        return Effect("listen", node.get("conditionname", ""))
    if kind == "PrepareStmt":
        return Effect("prepare", node.get("name", ""))
    executed = _executed(kind, node)
    if executed is not None:
        return Effect("execute", executed[0], args=executed[1])
    if kind in ("DropdbStmt", "CreatedbStmt") or (kind == "RenameStmt" and node.get("renameType") == "OBJECT_DATABASE"):
        return Effect("database", _database(kind, node))
    if kind == "DeallocateStmt":
        return Effect("deallocate", "" if node.get("isall") else node.get("name", ""))
    if kind == "DiscardStmt":
        return Effect("discard_all") if node.get("target") == "DISCARD_ALL" else Effect("local")
    if kind != "VariableSetStmt":
        return None
    name = node.get("name", "").lower()
    if node.get("is_local"):
        return Effect("local", name)
    if name in ("session_authorization", "session authorization"):
        return Effect("identity", name)
    set_kind = node["kind"]
    if name == "role" and set_kind == "VAR_SET_VALUE" and _role_none(node):
        return Effect("reset", name)  # SET ROLE NONE
    if set_kind == "VAR_RESET_ALL":
        return Effect("reset_all")
    if set_kind in ("VAR_RESET", "VAR_SET_DEFAULT"):
        return Effect("reset", name)
    if name.startswith("transaction") and set_kind == "VAR_SET_MULTI":
        return Effect("local", name)  # SET TRANSACTION ...: this transaction only
    return Effect("set", name, text)


def _database(kind: str, node: dict) -> str:
    """The database a DROP DATABASE drops, an ALTER DATABASE renames or a CREATE DATABASE copies
    (template1 unless it names a TEMPLATE).

    >>> [effects(s)[0].name for s in ("drop database if exists x", 'create database y template "X"', "create database z")]
    ['x', 'X', 'template1']
    """
    if kind == "DropdbStmt":
        return node.get("dbname", "")
    if kind == "RenameStmt":
        return node.get("subname", "")
    for option in node.get("options") or []:
        elem = option.get("DefElem", {})
        if elem.get("defname") == "template":
            return elem.get("arg", {}).get("String", {}).get("sval", "")
    return "template1"


def _role_none(node: dict) -> bool:
    """SET ROLE NONE (PostgreSQL compares the folded text with 'none')."""
    args = node.get("args") or [{}]
    return args[0].get("A_Const", {}).get("sval", {}).get("sval") == "none"


def _executed(kind: str, node: dict) -> tuple[str, tuple[Arg, ...]] | None:
    """The prepared statement a statement runs and its arguments: EXECUTE, or EXPLAIN /
    CREATE TABLE AS of one."""
    while kind in ("ExplainStmt", "CreateTableAsStmt"):
        ((kind, node),) = (node.get("query") or {"": {}}).items()
    if kind != "ExecuteStmt":
        return None
    return node.get("name", ""), tuple(_argument(p) for p in node.get("params") or [])


def execute_args(sql: str) -> tuple[Arg, ...]:
    """The arguments of the (first) SQL EXECUTE in `sql`.

    >>> [tuple(a) for a in execute_args("EXECUTE s1(904, 'globex', E'x', NULL, 'a' || 'b', 'a'::text, 1.5, -2)")]
    [(True, '904'), (True, 'globex'), (True, 'x'), (True, None), (False, None), (False, None), (True, '1.5'), (True, '-2')]
    """
    return next((e.args for e in effects(sql) if e.kind == "execute"), ())


_CONSTANTS = ("sval", "ival", "fval", "bsval", "boolval")  # A_Const value keys


def _argument(node: dict) -> Arg:
    """A plain literal (string, number, boolean, NULL) as PostgreSQL reads it; anything else is not."""
    const = node.get("A_Const")
    if not isinstance(const, dict):
        return Arg(False)
    if const.get("isnull"):
        return Arg(True, None)
    for key in _CONSTANTS:
        if key in const:
            value = const[key].get(key, 0 if key == "ival" else False if key == "boolval" else "")
            return Arg(True, ("true" if value else "false") if key == "boolval" else str(value))
    return Arg(False)


def startup_settings(params: dict[str, str]) -> dict[str, str]:
    """The client's startup parameters as SET statements, by lower-cased name.

    >>> startup_settings({"user": "u", "application_name": "it's", "options": "-c search_path=s1"})
    {'application_name': "SET application_name TO 'it''s'", 'search_path': "SET search_path TO 's1'"}
    """
    return {k.lower(): f"SET {_ident(k)} TO {_literal(v)}" for k, v in startup_pairs(params)}


def startup_pairs(params: dict[str, str]) -> list[tuple[str, str]]:
    """The settings among a client's startup parameters, `options=-c name=value` included, in order."""
    return [(k, v) for k, v in params.items() if k not in _NOT_FORWARDED] + _options(params.get("options", ""))


def _options(options: str) -> list[tuple[str, str]]:
    out = []
    words = options.replace("\\ ", "\0").split()
    for i, word in enumerate(words):
        word = word.replace("\0", " ")
        if word == "-c" and i + 1 < len(words):
            word = "--" + words[i + 1].replace("\0", " ")
        if word.startswith("--") and "=" in word:
            key, value = word[2:].split("=", 1)
            out.append((key.replace("-", "_"), value))
    return out


def _ident(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", name) else '"' + name.replace('"', '""') + '"'


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


# Reported by PostgreSQL but not settable by a client (or not to be replayed).
_READ_ONLY_REPORTED = frozenset(
    {
        "server_version",
        "server_encoding",
        "integer_datetimes",
        "is_superuser",
        "session_authorization",
        "in_hot_standby",
    }
)


def reported_setting(name: str, value: str) -> str | None:
    """The SET that reproduces a ParameterStatus the backend sent (None for read-only ones).

    A list (search_path, reported since PostgreSQL 18) is set through set_config(), which
    reads the text as a list: SET would take the quoted text as one name.

    >>> reported_setting("TimeZone", "Asia/Tokyo")
    "SET TimeZone TO 'Asia/Tokyo'"
    >>> reported_setting("search_path", "s1, public")
    "SELECT pg_catalog.set_config('search_path', 's1, public', false)"
    """
    if name.lower() in _READ_ONLY_REPORTED:
        return None
    if name.lower() == "search_path":
        return f"SELECT pg_catalog.set_config('search_path', {_literal(value)}, false)"
    return f"SET {_ident(name)} TO {_literal(value)}"


def apply(settings: dict[str, str], effect: Effect) -> None:
    """Record a successful statement's effect in a settings map (name -> SET text)."""
    if effect.kind == "set":
        settings[effect.name] = effect.text
    elif effect.kind == "reset":
        settings.pop(effect.name, None)
    elif effect.kind == "discard_all":
        settings.clear()
    elif effect.kind == "reset_all":  # RESET ALL keeps the role (PostgreSQL's GUC_NO_RESET_ALL)
        role = settings.get(ROLE)
        settings.clear()
        if role is not None:
            settings[ROLE] = role


ROLE = "role"  # SET ROLE, tracked as a setting by this name


def replay(client: dict[str, str], backend: dict[str, str]) -> str:
    """SQL that turns a backend's settings into the client's ('' when they already match).

    A role is reset before anything else (the other settings were made under the role the
    client had then), and a replay that changes the role runs in a transaction block: if it
    fails, the client's next statement fails too instead of running as another role.

    >>> replay({"a": "SET a TO '1'"}, {"b": "SET b TO '2'"})
    "RESET b; SET a TO '1'"
    >>> replay({"a": "SET a TO '1'", "role": "SET ROLE app"}, {"role": "SET ROLE other"})
    "BEGIN; RESET role; SET a TO '1'; SET ROLE app; COMMIT"
    """
    role_changes = client.get(ROLE) != backend.get(ROLE)
    stmts = ["RESET role"] if role_changes and ROLE in backend else []
    for name in backend:
        if name not in client and name != ROLE:
            stmts.append(f"RESET {_ident(name)}")
    stmts += [text for name, text in client.items() if backend.get(name) != text]
    if role_changes:
        stmts = ["BEGIN", *stmts, "COMMIT"]
    return "; ".join(stmts)


ROLE_REPLAY = "role replay"  # the tag of a replay that changes the role


def replay_tag(client: dict[str, str], backend: dict[str, str]) -> str | None:
    """The tag of the replay from `backend`'s settings to `client`'s: ROLE_REPLAY when it changes the role."""
    return ROLE_REPLAY if client.get(ROLE) != backend.get(ROLE) else None
