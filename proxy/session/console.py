"""The admin console's connection: its simple queries answered by `proxy.ops.admin`, nothing else accepted."""

from __future__ import annotations

from proxy.ops.admin import AdminConsole
from proxy.session.context import Shell
from proxy.wire import protocol
from proxy.wire.protocol import MSG_QUERY, MSG_TERMINATE


def console_messages(console: AdminConsole, msgs: list[tuple[int, bytes]], shell: Shell) -> None:
    """Answer a batch of a console client's messages: simple queries, Terminate; anything else is fatal."""
    for kind, msg in msgs:
        if kind == MSG_QUERY:
            shell.write(console.handle(protocol.decode_query(msg)))
        elif kind == MSG_TERMINATE:
            shell.close("client sent Terminate")
            return
        else:
            shell.fatal("0A000", "the admin console answers simple queries only")
            return


async def console_across(console: AdminConsole, msgs: list[tuple[int, bytes]], shell: Shell) -> None:
    """As `console_messages`, with several workers: a per-worker command (SHOW POOLS, KILL ...)
    is answered by every worker, its rows merged (the caller pauses the client meanwhile)."""
    for kind, msg in msgs:
        if kind == MSG_QUERY and console.across(sql := protocol.decode_query(msg)):
            try:
                shell.write(await console.handle_all(sql))
            except (TimeoutError, OSError) as exc:  # (a worker that does not answer is left out)
                shell.write(
                    protocol.error_response("58000", f"workers did not answer: {exc}") + protocol.ready_for_query(b"I")
                )
        else:
            console_messages(console, [(kind, msg)], shell)
            if kind != MSG_QUERY:
                return
