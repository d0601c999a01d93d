"""`python -m examples.orders [demo|all|command|relay|projection|notification|query]`."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from eventbus.errors import ConfigurationError
from eventbus.log import configure as configure_logging

from .demo import run_demo
from .services import SERVICES, System, load_orders_settings

USAGE = f"usage: python -m examples.orders [demo|all|{'|'.join(SERVICES)}] ..."


async def serve(services: tuple[str, ...]) -> None:
    settings = load_orders_settings()
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    async with System(settings, services=services):
        print(f"orders: running {', '.join(services)}", flush=True)
        await done.wait()


def main(argv: list[str]) -> int:
    name = argv[0] if argv else "demo"
    try:
        if name == "demo":
            configure_logging(level=os.environ.get("EVENTBUS_LOG_LEVEL", "WARNING"))
            orders = int(argv[1]) if len(argv) > 1 else 300
            return asyncio.run(
                run_demo(orders, os.environ.get("EVENTBUS_URL", "memory://"),
                         os.environ.get("EVENTBUS_STORE_URL"))
            )  # fmt: skip
        if name == "all":
            asyncio.run(serve(SERVICES))
            return 0
        if name in SERVICES:
            asyncio.run(serve((name,)))
            return 0
    except ConfigurationError as exc:
        print(f"orders: {exc}", file=sys.stderr)
        return 2
    print(USAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
