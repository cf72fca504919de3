"""The admin console across workers: every worker's SHOW table as rows with a worker column, KILL and RECONNECT counts summed."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import NamedTuple

from proxy.wire import protocol

_TEXT_OID = 25
_I16 = struct.Struct("!h")


class Table(NamedTuple):
    """A console answer read back: its columns, text rows and command tag."""

    columns: list[str]
    rows: list[list[str | None]]
    tag: str


def untable(body: bytes) -> Table:
    """Read a console answer (RowDescription, DataRows, CommandComplete) back into a table.

    >>> untable(table(["a", "b"], [["1", None]], "SHOW"))
    Table(columns=['a', 'b'], rows=[['1', None]], tag='SHOW')
    """
    columns: list[str] = []
    rows: list[list[str | None]] = []
    tag = ""
    for kind, msg in protocol.Framer().split(body):
        if kind == ord("T"):
            at = 7
            for _ in range(_I16.unpack_from(msg, 5)[0]):
                name, at = protocol.read_cstr(msg, at)
                columns.append(name)
                at += 18  # table oid, column, type oid, size, modifier, format
        elif kind == protocol.MSG_DATA_ROW:
            rows.append([None if v is None else v.decode() for v in protocol.data_row(msg)])
        elif kind == protocol.MSG_COMMAND_COMPLETE:
            tag = protocol.read_cstr(msg, 5)[0]
    return Table(columns, rows, tag)


def table(columns: Sequence[str], rows: Sequence[Sequence[object]], tag: str) -> bytes:
    """RowDescription, DataRows (text) and CommandComplete for one result."""
    fields = b"".join(protocol.cstr(c) + struct.pack("!IhIhih", 0, 0, _TEXT_OID, -1, -1, 0) for c in columns)
    out = [protocol.message(b"T", struct.pack("!h", len(columns)) + fields)]
    for row in rows:
        cells = b"".join(
            struct.pack("!i", -1) if v is None else struct.pack("!i", len(b := str(v).encode())) + b for v in row
        )
        out.append(protocol.message(b"D", struct.pack("!h", len(row)) + cells))
    out.append(protocol.command_complete(tag))
    return b"".join(out)


def merged(answers: Sequence[tuple[int, bytes]]) -> bytes:
    """One answer from each worker's (worker index, answer): a SHOW's rows with a leading
    `worker` column, in worker order; a KILL's or RECONNECT's counts summed; an error passed on as it is.

    >>> one, two = table(["db"], [["a"]], "SHOW"), table(["db"], [["b"], ["c"]], "SHOW")
    >>> untable(merged([(1, two), (0, one)])).rows
    [['0', 'a'], ['1', 'b'], ['1', 'c']]
    >>> merged([(0, protocol.command_complete("KILL 2")), (1, protocol.command_complete("KILL 1"))])
    b'C\\x00\\x00\\x00\\x0bKILL 3\\x00'
    >>> merged([(0, protocol.command_complete("RECONNECT 2")), (1, protocol.command_complete("RECONNECT 0"))])
    b'C\\x00\\x00\\x00\\x10RECONNECT 2\\x00'
    """
    ordered = sorted(answers)
    for _, body in ordered:
        if body[:1] == b"E":
            return body
    tables = [(index, untable(body)) for index, body in ordered]
    if tables and tables[0][1].tag.startswith(("KILL", "RECONNECT")):
        verb = tables[0][1].tag.split()[0]
        return protocol.command_complete(f"{verb} {sum(int(t.tag.split()[1]) for _, t in tables)}")
    columns = ["worker", *(tables[0][1].columns if tables else [])]
    rows = [[str(index), *row] for index, t in tables for row in t.rows]
    return table(columns, rows, "SHOW")
