"""Query statistics by fingerprint (SHOW QUERIES), aggregated off the hot path."""

from __future__ import annotations

import re
from collections import deque

from proxy.audit.redact import redact
from proxy.wire import protocol
from rewriter import pgparser

MAX_FINGERPRINTS = 5000
MAX_PENDING = 50_000
SHAPES_CAP = 50_000  # messages a generation of Shapes holds at most (about 15 MB of short statements)
DIGITS_CAP, DIGITS_MAX_BYTES = 10_000, 2048  # digit keys Shapes keeps (under 25 MB at the very most)
# Text whose integer literals are all A_Const (values the fingerprint ignores): plain SELECT/DML
# without quoted identifiers, dollar quotes, escapes, comments, float(p) or current_time(p).
_DML_HEADS = ("select", "insert", "update", "delete", "with", "values")
_INTEGER = re.compile(r"[0-9]{1,9}\b")  # (up to 9 digits: an Iconst, never out of range)
_DIGIT_RUN = re.compile(r"[0-9]+")
_ZEROS = bytes.maketrans(b"123456789", b"000000000")
_QUERY = ord("Q")
COLUMNS = ["fingerprint", "calls", "total_ms", "mean_ms", "p95_ms", "max_ms", "rows", "refusals", "cache_hits", "query"]


def statement_text(msg: bytes) -> str:
    """The SQL of a Query or Parse message."""
    return protocol.decode_query(msg) if msg[0] == ord("Q") else protocol.decode_parse(msg).query


def literal_key(sql: str) -> str:
    """A key for the fingerprint cache: plain SELECT/DML with its integer literals (up to 9 digits) zeroed (they are
    constants, which the fingerprint ignores), so `WHERE aid = 5` and `= 6` are parsed once.
    Any other text is its own key.

    >>> literal_key("SELECT abalance FROM pgbench_accounts WHERE aid = 4711;")
    'SELECT abalance FROM pgbench_accounts WHERE aid = 0;'
    >>> literal_key("select t2.a[1], 1.5 from t2 limit 10")
    'select t2.a[0], 0.5 from t2 limit 0'
    >>> literal_key('select "c 1" from t where a = 1')
    'select "c 1" from t where a = 1'
    """
    return shaped(sql)[0]


def shaped(sql: str) -> tuple[str, bool]:
    """`literal_key(sql)`, and whether it zeroed every run of digits in `sql` (`exact`): then any text
    that differs from `sql` only in its digits has the same key (`Shapes.known`).

    >>> shaped("select a from t where b = 12"), shaped("select a from t1 where b = 12")
    (('select a from t where b = 0', True), ('select a from t1 where b = 0', False))
    """
    low = sql.lower()
    if (
        not low.lstrip().startswith(_DML_HEADS)
        or '"' in low
        or "$" in low
        or "\\" in low
        or "/*" in low
        or "--" in low
        or "float" in low
        or "current_" in low
        or "localtime" in low
    ):
        return sql, _DIGIT_RUN.search(sql) is None
    zeroed = 0

    def zero(match: re.Match[str]) -> str:
        nonlocal zeroed
        at = match.start()
        before = sql[at - 1] if at else " "  # a digit in a name (t1) or a fraction (1.5) stays
        if before.isalnum() or before in "_.":
            return match.group()
        zeroed += 1  # (a whole run: nothing that is a digit before it, a word boundary after it)
        return "0"

    shape = _INTEGER.sub(zero, sql)
    return shape, zeroed == len(_DIGIT_RUN.findall(sql))


def digit_key(msg: bytes) -> bytes:
    """A Query message with each digit made 0. Two texts with one key differ only in their digits: if
    `shaped` zeroed every run of one, it does so for the other, to the same shape (the choice to zero
    a run depends on the characters around it alone, which the two share; a digit byte is never part
    of another UTF-8 character).

    >>> digit_key(protocol.query("select 1 from t9"))[5:]
    b'select 0 from t0\\x00'
    """
    return msg.translate(_ZEROS)


class Shapes:
    """Query and Parse messages seen lately -> (their text, its `literal_key`): a new text is decoded
    and shaped once, whether the result cache judges it on the hot path or the statistics count it
    at their next flush. Two generations: each flush starts a new one (a message used since the
    last one is kept), and so does a generation of `cap` messages. With `whole` False (no cache: only
    the statistics shape, once per message anyway) no message is kept.

    A Query whose text `shaped` zeroed every digit of also keys its shape by `digit_key`: another text
    that differs from it only in its digits (pgbench's `aid = 4711`, an ORM's `LIMIT 21`) gets its shape
    from `known` without being decoded or shaped at all."""

    def __init__(self, cap: int = SHAPES_CAP, whole: bool = True) -> None:
        self.cap, self.whole = cap, whole
        self._new: dict[bytes, tuple[str, str]] = {}
        self._old: dict[bytes, tuple[str, str]] = {}
        self._digits: dict[bytes, str] = {}  # digit_key of an exact Query -> its shape

    def known(self, msg: bytes) -> str | None:
        """The shape of a Query message another one with the same `digit_key` had, else None.

        >>> shapes = Shapes()
        >>> _ = shapes.of(protocol.query("select 1 from t where a = 7"))
        >>> shapes.known(protocol.query("select 5 from t where a = 9")), shapes.known(protocol.query("select 1"))
        ('select 0 from t where a = 0', None)
        """
        return self._digits.get(digit_key(msg)) if msg[0] == _QUERY else None

    def of(self, msg: bytes) -> tuple[str, str]:
        """
        >>> Shapes().of(protocol.query("select 1 from t where a = 7"))
        ('select 1 from t where a = 7', 'select 0 from t where a = 0')
        """
        got = self._new.get(msg)
        if got is None:
            got = self._old.get(msg)
            if got is None:
                text = statement_text(msg)
                shape, exact = shaped(text)
                got = (text, shape)
                if exact and msg[0] == _QUERY and len(msg) <= DIGITS_MAX_BYTES:
                    if len(self._digits) >= DIGITS_CAP:
                        self._digits.clear()
                    self._digits[digit_key(msg)] = shape
            if not self.whole:
                return got
            if len(self._new) >= self.cap:
                self.rotate()
            if len(msg) <= 20_000:
                self._new[msg] = got
        return got

    def rotate(self) -> None:
        """A new generation: the messages not used since the last rotation are forgotten."""
        self._old, self._new = self._new, {}


class QueryStats:
    """The hot path appends (text, seconds, rows, cached); `flush` (once a second) fingerprints and counts.

    Memory is bounded: at most MAX_FINGERPRINTS entries (the least called is evicted for a new
    one), each keeping its last 200 durations for the p95."""

    def __init__(self, latency=None, shapes: Shapes | None = None) -> None:
        self.latency = latency  # a histogram's observe_many, fed each flush's durations
        self.shapes = shapes if shapes is not None else Shapes(whole=False)  # (given: shared with the result cache)
        self.pending: deque[tuple[str | bytes, float | None, int, bool]] = deque(maxlen=MAX_PENDING)
        self.by_fingerprint: dict[str, dict] = {}
        self._fingerprints: dict[str, str] = {}  # text, or `literal_key` of it -> fingerprint

    def observe(self, sql: str | bytes, seconds: float, rows: int = 0, cached: bool = False) -> None:
        """A statement answered (its text, or the Query/Parse message carrying it): its duration,
        rows returned or affected, rewrite-cache hit."""
        self.pending.append((sql, seconds, rows, cached))

    def refusal(self, sql: str) -> None:
        """A statement the policy refused (it never reached PostgreSQL)."""
        self.pending.append((sql, None, 0, False))

    def flush(self) -> None:
        """Aggregate what was observed."""
        pending, durations = self.pending, []
        seen: dict[str | bytes, dict] = {}  # the same message (a driver's Parse) is looked up once
        while pending:
            sql, seconds, rows, cached = pending.popleft()
            entry = seen.get(sql)
            if entry is None:
                if len(self.by_fingerprint) >= MAX_FINGERPRINTS:
                    seen.clear()  # an entry may be evicted: none kept here may be stale
                entry = seen[sql] = self._known(sql) or self._entry(*self._text(sql))
            if seconds is None:
                entry["refusals"] += 1
                continue
            durations.append(seconds)
            entry["calls"] += 1
            entry["rows"] += rows
            entry["cache_hits"] += cached
            entry["total_s"] += seconds
            entry["max_s"] = max(entry["max_s"], seconds)
            entry["recent"].append(seconds)
        if self.latency is not None and durations:
            self.latency(durations)
        self.shapes.rotate()  # (what was observed since the last flush has been taken)

    def _known(self, sql: str | bytes) -> dict | None:
        """The entry of a Query whose shape is `Shapes.known` (no decoding, no shaping), if it has one."""
        if isinstance(sql, str):
            return None
        shape = self.shapes.known(sql)
        fp = None if shape is None else self._fingerprints.get(shape)
        return None if fp is None else self.by_fingerprint.get(fp)

    def _text(self, sql: str | bytes) -> tuple[str, str | None]:
        """An observed statement's text, and its shape."""
        if isinstance(sql, str):
            return sql, None
        return self.shapes.of(sql)

    def _entry(self, sql: str, shape: str | None) -> dict:
        fp = self._fingerprint(sql, shape)
        entry = self.by_fingerprint.get(fp)
        if entry is None:
            if len(self.by_fingerprint) >= MAX_FINGERPRINTS:
                self._evict()
            entry = self.by_fingerprint[fp] = {
                "calls": 0,
                "total_s": 0.0,
                "max_s": 0.0,
                "rows": 0,
                "refusals": 0,
                "cache_hits": 0,
                "recent": deque(maxlen=200),
                "query": redact(sql),
            }
        return entry

    def _fingerprint(self, sql: str, shape: str | None) -> str:
        fp = self._fingerprints.get(sql)  # (a driver's text with $n parameters is its own key)
        if fp is not None:
            return fp
        key = literal_key(sql) if shape is None else shape
        fp = self._fingerprints.get(key)
        if fp is None:
            try:
                fp = pgparser.fingerprint(sql)
            except Exception:  # not parseable: its redacted text is its identity
                fp = redact(sql)[:200]
            if len(self._fingerprints) > 20_000:
                self._fingerprints.clear()
            self._fingerprints[key] = fp
        return fp

    def _evict(self) -> None:
        entries = self.by_fingerprint
        least = min(entries, key=lambda k: entries[k]["calls"] + entries[k]["refusals"])
        del self.by_fingerprint[least]

    def rows(self, top: int = 50) -> list[list[object]]:
        """SHOW QUERIES rows (COLUMNS): the statements that took most time first."""
        ranked = sorted(self.by_fingerprint.items(), key=lambda kv: -kv[1]["total_s"])[:top]
        out = []
        for fp, e in ranked:
            recent = sorted(e["recent"])
            p95 = recent[min(len(recent) - 1, int(len(recent) * 0.95))] if recent else 0.0
            mean = e["total_s"] / e["calls"] if e["calls"] else 0.0
            out.append(
                [
                    fp,
                    e["calls"],
                    round(e["total_s"] * 1000, 3),
                    round(mean * 1000, 3),
                    round(p95 * 1000, 3),
                    round(e["max_s"] * 1000, 3),
                    e["rows"],
                    e["refusals"],
                    e["cache_hits"],
                    e["query"][:300],
                ]
            )
        return out
