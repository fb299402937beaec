"""Runs the provider sandbox, HTTP and SMTP on one asyncio loop, until SIGINT or SIGTERM.

Without Django: `python -m harness.sandbox.server --http-port 8025 --smtp-port 1025` (-m: see main()).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import weakref
from collections.abc import Callable

from aiohttp import web
from aiosmtpd.smtp import SMTP

from harness.sandbox.http import create_app
from harness.sandbox.smtp import SandboxHandler, create_protocol
from harness.sandbox.state import SandboxState

#: Seconds open HTTP requests get to finish on shutdown; the sandbox holds nothing worth waiting for.
SHUTDOWN_GRACE_SECONDS = 2.0

#: Called once both servers listen, with the host and the actually bound HTTP and SMTP ports.
ReadyCallback = Callable[[str, int, int], None]


async def serve(
    *,
    host: str,
    http_port: int,
    smtp_port: int,
    on_ready: ReadyCallback | None = None,
    stop: asyncio.Event | None = None,
    reports: list[dict] | None = None,
) -> None:
    """Serve until `stop` is set, or until SIGINT/SIGTERM when no event is given."""
    # aiosmtpd logs every command at INFO; at thousands of messages a second that
    # is the bottleneck, and a Django LOGGING config would print it all.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    loop = asyncio.get_running_loop()
    state = SandboxState()

    app = create_app(state)
    for report in reports or ():
        app["callbacks"].configure(report)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_GRACE_SECONDS)
    await runner.setup()
    site = web.TCPSite(runner, host, http_port)
    await site.start()

    handler = SandboxHandler(state)
    # The server does not close live connections on close(); shutdown closes them from here.
    connections: weakref.WeakSet[SMTP] = weakref.WeakSet()

    def smtp_factory() -> SMTP:
        protocol = create_protocol(handler, loop)
        connections.add(protocol)
        return protocol

    try:
        smtp_server = await loop.create_server(smtp_factory, host, smtp_port)
    except OSError:
        await runner.cleanup()
        raise

    if stop is None:
        stop = asyncio.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)

    if on_ready is not None:
        on_ready(host, site.port, smtp_server.sockets[0].getsockname()[1])

    try:
        await stop.wait()
    finally:
        smtp_server.close()
        for protocol in list(connections):
            if protocol.transport is not None:
                protocol.transport.close()
        await runner.cleanup()
        await asyncio.wait_for(smtp_server.wait_closed(), SHUTDOWN_GRACE_SECONDS)


def run(
    *,
    host: str,
    http_port: int,
    smtp_port: int,
    on_ready: ReadyCallback | None = None,
    reports: list[dict] | None = None,
) -> None:
    """Blocking entry point for the management command and `python -m`; `reports`: delivery-report settings
    (callbacks.Callbacks.configure) to start with."""
    asyncio.run(serve(host=host, http_port=http_port, smtp_port=smtp_port, on_ready=on_ready, reports=reports))


def describe(host: str, http_port: int, smtp_port: int) -> str:
    """The one line a launcher prints so people (and test helpers) know where the sandbox listens."""
    return f"Provider sandbox listening: HTTP http://{host}:{http_port}  SMTP {host}:{smtp_port}  (Ctrl-C to stop)"


def main(argv: list[str] | None = None) -> None:
    """Command line without Django. Run it with -m: as a script, this package's http.py would
    shadow the standard library's http, which aiohttp imports."""
    parser = argparse.ArgumentParser(prog="python -m harness.sandbox.server", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--http-port", type=int, default=8025)
    parser.add_argument("--smtp-port", type=int, default=1025)
    args = parser.parse_args(argv)
    run(
        host=args.host,
        http_port=args.http_port,
        smtp_port=args.smtp_port,
        on_ready=lambda *where: print(describe(*where), flush=True),
    )


if __name__ == "__main__":
    main()
