"""`python -m examples.orders [demo [N] | all | command [--workers N] | relay | projection |
notification | query [--workers N]]`."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from eventbus.errors import ConfigurationError
from eventbus.log import configure as configure_logging

from .services import SERVICES, System, load_orders_settings

USAGE = (
    f"usage: python -m examples.orders [demo [orders]|all|{'|'.join(SERVICES)}] "
    "[--workers N (command, query)]"
)


async def serve(services: tuple[str, ...]) -> None:
    settings = load_orders_settings()
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    async with System(settings, services=services):
        print(f"orders: running {', '.join(services)}", flush=True)
        await done.wait()


def serve_http(name: str, workers: int) -> None:
    """The command or query API in `workers` uvicorn worker processes."""
    from .api import serve_workers

    settings = load_orders_settings()
    port = settings.command_port if name == "command" else settings.query_port
    serve_workers(
        f"examples.orders.api:{name}_app",
        settings.host,
        port,
        workers,
        announce=f"orders: running {name} on {settings.host}:{port}, {workers} workers",
    )


def _workers(args: list[str]) -> int | None:
    """`--workers N` (None if absent); ConfigurationError for anything else."""
    if not args:
        return None
    if len(args) == 2 and args[0] == "--workers" and args[1].isdigit() and int(args[1]) >= 1:
        return int(args[1])
    raise ConfigurationError(f"expected --workers N (N >= 1), got {' '.join(args)!r}")


def main(argv: list[str]) -> int:
    name = argv[0] if argv else "demo"
    try:
        if name == "demo":
            from .demo import run_demo  # the client (httpx) only for the demo

            configure_logging(level=os.environ.get("EVENTBUS_LOG_LEVEL", "WARNING"))
            orders = int(argv[1]) if len(argv) > 1 else 300
            return asyncio.run(
                run_demo(orders, os.environ.get("EVENTBUS_URL", "memory://"),
                         os.environ.get("EVENTBUS_STORE_URL"))
            )  # fmt: skip
        if name == "all" or name in SERVICES:
            workers = _workers(argv[1:])
            if name in ("command", "query"):
                workers = workers or load_orders_settings().workers
                if workers > 1:
                    serve_http(name, workers)
                    return 0
            elif workers is not None:
                raise ConfigurationError("--workers is for the command and query services")
            asyncio.run(serve(SERVICES if name == "all" else (name,)))
            return 0
    except ConfigurationError as exc:
        print(f"orders: {exc}", file=sys.stderr)
        return 2
    print(USAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
