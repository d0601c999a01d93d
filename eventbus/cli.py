"""The `eventbus` command: run a bus's subscribers, inspect and replay dead letters, write
the AsyncAPI document of a bus."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from .bus import EventBus
from .errors import ConfigurationError, EventBusError
from .log import configure as configure_logging


def load_bus(target: str) -> EventBus:
    """`package.module:bus` -> the EventBus (or a zero-argument factory returning one)."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigurationError(
            f"expected module:attribute, e.g. myapp.events:bus; got {target!r}"
        )
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"cannot import {module_name!r}: {exc}") from exc
    try:
        obj: Any = getattr(module, attr)
    except AttributeError:
        raise ConfigurationError(f"module {module_name!r} has no attribute {attr!r}") from None
    if callable(obj) and not isinstance(obj, EventBus):
        obj = obj()
    if not isinstance(obj, EventBus):
        raise ConfigurationError(f"{target} is {type(obj).__name__}, not an EventBus")
    return obj


async def _dlq(args: argparse.Namespace) -> int:
    bus = EventBus(args.url) if args.url else EventBus()
    async with bus:
        if args.action == "list":
            count = 0
            async for dead in bus.dead_letters(args.stream, args.group):
                count += 1
                if args.json:
                    print(
                        json.dumps(
                            {
                                "id": dead.attributes.get("id"),
                                "type": dead.attributes.get("type"),
                                "key": dead.key,
                                "reason": dead.reason,
                                "attempts": dead.attempts,
                                "headers": dead.headers,
                                "body": dead.body.decode("utf-8", "replace"),
                            }
                        )
                    )
                else:
                    print(
                        f"{dead.attributes.get('id', '?')}  {dead.attributes.get('type', '?')}"
                        f"  key={dead.key}  attempts={dead.attempts}  "
                        f"at={dead.headers.get('x-dead-lettered-at', '?')}  {dead.reason}"
                    )
            if not args.json:
                print(f"{count} dead letter(s) in {args.stream}.{args.group}.dlq")
        else:
            count = await bus.replay_dead_letters(args.stream, args.group)
            print(f"replayed {count} dead letter(s) to {args.stream}.{args.group}")
    return 0


def _run(args: argparse.Namespace) -> int:
    if args.log_format:
        os.environ["EVENTBUS_LOG_FORMAT"] = args.log_format
    if args.log_level:
        os.environ["EVENTBUS_LOG_LEVEL"] = args.log_level
    bus = load_bus(args.target)
    configure_logging(
        args.log_format or bus.settings.log_format,
        args.log_level or bus.settings.log_level,
        force=True,
    )
    if args.http is None:
        asyncio.run(bus.run())
        return 0
    try:
        from .service import run_with_http
    except ImportError as exc:
        raise ConfigurationError(
            f"--http needs the http extra: pip install 'eventbus[http]' ({exc})"
        ) from None
    bus.enable_metrics()
    asyncio.run(run_with_http(bus, args.http))
    return 0


def _asyncapi(args: argparse.Namespace) -> int:
    from .asyncapi import asyncapi_document, render

    output = args.output
    fmt = args.format
    if fmt is None:  # from the file's suffix; JSON otherwise
        fmt = "yaml" if output and output.lower().endswith((".yaml", ".yml")) else "json"
    bus = load_bus(args.target)
    document = asyncapi_document(
        bus, all_events=args.all_events, title=args.title, version=args.api_version
    )
    text = render(document, fmt)
    if output is None or output == "-":
        sys.stdout.write(text)
        return 0
    try:
        with open(output, "w", encoding="utf-8") as file:
            file.write(text)
    except OSError as exc:
        raise ConfigurationError(f"cannot write {output}: {exc.strerror or exc}") from None
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eventbus", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a bus's subscribers until SIGTERM/SIGINT")
    run.add_argument("target", help="module:attribute of an EventBus, e.g. myapp.events:bus")
    run.add_argument(
        "--http",
        metavar="HOST:PORT",
        default=None,
        help="serve /healthz, /readyz and /metrics (needs eventbus[http]), e.g. 0.0.0.0:8000",
    )
    run.add_argument(
        "--log-format", choices=["console", "json"], default=None, help="default: the bus's"
    )
    run.add_argument(
        "--log-level",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        type=str.upper,
        default=None,
        help="default: the bus's",
    )

    dlq = sub.add_parser("dlq", help="list or replay the dead letters of a group")
    dlq.add_argument("action", choices=["list", "replay"])
    dlq.add_argument("--stream", required=True)
    dlq.add_argument("--group", required=True)
    dlq.add_argument("--url", default=None, help="broker URL (default: EVENTBUS_URL)")
    dlq.add_argument("--json", action="store_true", help="one JSON object per dead letter")

    doc = sub.add_parser(
        "asyncapi",
        help="write the AsyncAPI 3.0 document of a bus (streams, events, groups, retry and "
        "dead-letter channels)",
    )
    doc.add_argument("target", help="module:attribute of an EventBus, e.g. myapp.events:bus")
    doc.add_argument("-o", "--output", default=None, help="file to write (default: stdout)")
    doc.add_argument(
        "--format",
        choices=["json", "yaml"],
        default=None,
        help="default: yaml for a .yaml/.yml output file, json otherwise (yaml needs PyYAML)",
    )
    doc.add_argument("--title", default=None, help="info.title (default: EVENTBUS_SOURCE)")
    doc.add_argument("--api-version", default="1.0.0", help="info.version (default: 1.0.0)")
    doc.add_argument(
        "--all-events",
        action="store_true",
        help="document every Event class the imported modules declare, not only those on "
        "the bus's streams (for a service that only publishes)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "dlq":
            return asyncio.run(_dlq(args))
        if args.command == "asyncapi":
            return _asyncapi(args)
    except EventBusError as exc:
        print(f"eventbus: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
