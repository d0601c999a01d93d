"""The `eventbus` command: run a bus's subscribers; list, show, replay and purge dead
letters; write the AsyncAPI document of a bus."""

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


# --- eventbus dlq ----------------------------------------------------------------------------


async def _dlq(args: argparse.Namespace) -> int:
    """`eventbus dlq list|show|replay|purge`: the dead letters of one group."""
    try:
        return await _dlq_action(args)
    except BrokenPipeError:  # `... | head`: the reader has all it wants
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the exit's flush must not fail again
        return 0


async def _dlq_action(args: argparse.Namespace) -> int:
    from .deadletter import DeadLetterFilter

    bus = EventBus(args.url) if args.url else EventBus()
    stream, group, where = args.stream, args.group, f"{args.stream}.{args.group}"
    async with bus:
        if args.action == "show":
            return await _dlq_show(bus, args)
        chosen = DeadLetterFilter(tuple(args.type or ()), args.since, args.contains, args.limit)
        if args.action == "list" or args.dry_run:
            count = await _dlq_list(bus, args, chosen, print_them=True)
            if args.action != "list":
                _dlq_say(
                    args, f"would {args.action} {count} dead letter(s) of {where}.dlq (dry run)"
                )
            elif not args.json:
                matching = "" if chosen.everything else "matching "
                print(f"{count} {matching}dead letter(s) in {where}.dlq")
            return 0
        if args.action == "replay":
            with _DlqProgress(f"replaying {where}.dlq") as progress:
                select = None if chosen.everything else progress.counting(chosen.selector())
                count = await bus.replay_dead_letters(stream, group, select=select)
            print(f"replayed {count} dead letter(s) to {where}")
            return 0
        counted = None
        if not args.yes:  # ask first, with the count
            with _DlqProgress(f"counting {where}.dlq") as progress:
                counted = await _dlq_list(bus, args, chosen, progress=progress)
            if not counted:
                print(f"no dead letter to purge in {where}.dlq")
                return 0
            if not _dlq_confirm(
                f"purge {counted} dead letter(s) from {where}.dlq for good? [y/N] "
            ):
                print("nothing purged", file=sys.stderr)
                return 1
        with _DlqProgress(f"purging {where}.dlq", counted) as progress:
            select = None if chosen.everything else progress.counting(chosen.selector())
            count = await bus.purge_dead_letters(stream, group, select=select)
        changed = ""
        if counted is not None and count != counted:
            changed = f" ({counted} counted before: they changed meanwhile)"
        print(f"purged {count} dead letter(s) from {where}.dlq{changed}")
        return 0


async def _dlq_list(
    bus: EventBus,
    args: argparse.Namespace,
    chosen: Any,
    *,
    print_them: bool = False,
    progress: _DlqProgress | None = None,
) -> int:
    """Print (or count) the chosen dead letters as they are read; -> how many."""
    import contextlib

    count = 0
    async with contextlib.aclosing(bus.dead_letters(args.stream, args.group)) as letters:
        async for dead in letters:
            matched = chosen.matches(dead)
            if progress is not None:
                progress.read(matched)
            if not matched:
                continue
            count += 1
            if print_them:
                print(_dlq_json(dead) if args.json else _dlq_line(dead), flush=args.json)
            if chosen.limit is not None and count >= chosen.limit:
                break
    return count


async def _dlq_show(bus: EventBus, args: argparse.Namespace) -> int:
    import contextlib

    async with contextlib.aclosing(bus.dead_letters(args.stream, args.group)) as letters:
        async for dead in letters:
            if dead.attributes.get("id") != args.id:
                continue
            if args.json:
                print(_dlq_json(dead))
                return 0
            at = dead.headers.get("x-dead-lettered-at", "?")
            print(f"id:       {args.id}")
            print(f"type:     {dead.attributes.get('type', '?')}")
            print(f"key:      {dead.key}")
            print(f"reason:   {dead.reason}")
            print(f"attempts: {dead.attempts}  (dead-lettered at {at})")
            print("headers:")
            for name in sorted(dead.headers):
                value = str(dead.headers[name]).replace("\n", "\n    ")
                print(f"  {name}: {value}")
            print(f"body ({len(dead.body)} bytes):")
            print(_dlq_body(dead.body))
            return 0
    print(
        f"eventbus: no dead letter with id {args.id!r} in {args.stream}.{args.group}.dlq",
        file=sys.stderr,
    )
    return 1


def _dlq_body(body: bytes) -> str:
    """The body for reading: pretty JSON, else the text, else escaped bytes."""
    try:
        text = body.decode()
    except UnicodeDecodeError:
        return "  " + body.decode("utf-8", "backslashreplace")
    try:
        pretty = json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except ValueError:
        pretty = text
    return "\n".join(f"  {line}" for line in pretty.splitlines())


def _dlq_json(dead: Any) -> str:
    return json.dumps(
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


def _dlq_line(dead: Any) -> str:
    return (
        f"{dead.attributes.get('id', '?')}  {dead.attributes.get('type', '?')}"
        f"  key={dead.key}  attempts={dead.attempts}  "
        f"at={dead.headers.get('x-dead-lettered-at', '?')}  {dead.reason}"
    )


def _dlq_say(args: argparse.Namespace, line: str) -> None:
    """A summary: on stdout, or on stderr when stdout carries JSON lines."""
    print(line, file=sys.stderr if args.json else sys.stdout)


def _dlq_confirm(question: str) -> bool:
    sys.stderr.write(question)
    sys.stderr.flush()
    return sys.stdin.readline().strip().lower() in ("y", "yes")


class _DlqProgress:
    """Progress of a long dead-letter operation, drawn with `rich` on stderr when both
    stdout and stderr are a terminal (and rich is installed: eventbus[cli]); otherwise
    nothing is shown."""

    def __init__(self, what: str, total: int | None = None) -> None:
        self.what = what
        self.total = total
        self.examined = 0
        self.selected = 0
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> _DlqProgress:
        if not (sys.stdout.isatty() and sys.stderr.isatty()):
            return self
        try:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                Progress,
                SpinnerColumn,
                TextColumn,
                TimeElapsedColumn,
            )
        except ImportError:
            return self
        self._bar = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed} selected, {task.fields[examined]} read"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self._bar.start()
        self._task = self._bar.add_task(self.what, total=self.total, examined=0)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def read(self, selected: bool) -> None:
        self.examined += 1
        self.selected += selected
        if self._bar is not None:
            self._bar.update(self._task, completed=self.selected, examined=self.examined)

    def counting(self, select: Any) -> Any:
        """`select`, reporting each dead letter it sees."""

        def counted(dead: Any) -> bool:
            chosen = bool(select(dead))
            self.read(chosen)
            return chosen

        return counted


def _dlq_arguments(dlq: argparse.ArgumentParser) -> None:
    from .deadletter import parse_since
    from .routing import validate_pattern

    def since(text: str) -> Any:
        try:
            return parse_since(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    def pattern(text: str) -> str:
        try:
            return validate_pattern(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    def count(text: str) -> int:
        if not text.isdigit():
            raise argparse.ArgumentTypeError(f"expected a number of dead letters, not {text!r}")
        return int(text)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--stream", required=True)
    common.add_argument("--group", required=True)
    common.add_argument("--url", default=None, help="broker URL (default: EVENTBUS_URL)")
    common.add_argument("--json", action="store_true", help="one JSON object per dead letter")
    filters = argparse.ArgumentParser(add_help=False)
    which = filters.add_argument_group("which dead letters (all the conditions given)")
    which.add_argument(
        "--type",
        action="append",
        type=pattern,
        metavar="PATTERN",
        help="event type or pattern (order.created, order.*, order.#); repeat for any of several",
    )
    which.add_argument(
        "--since",
        type=since,
        metavar="WHEN",
        help="dead-lettered at or after WHEN: an ISO-8601 time (local time without an "
        "offset) or a duration back from now (90s, 15m, 1h30m, 2d)",
    )
    which.add_argument("--contains", metavar="TEXT", help="TEXT is in the body or the reason")
    which.add_argument("--limit", type=count, metavar="N", help="the first N (oldest first)")
    actions = dlq.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser(
        "list", parents=[common, filters], help="print dead letters as they are read"
    )
    show = actions.add_parser("show", parents=[common], help="one dead letter, every header")
    show.add_argument("id", metavar="ID", help="the event id")
    replay = actions.add_parser(
        "replay", parents=[common, filters], help="send dead letters back to their group"
    )
    replay.add_argument("--dry-run", action="store_true", help="print them, change nothing")
    purge = actions.add_parser(
        "purge", parents=[common, filters], help="delete dead letters for good (asks first)"
    )
    purge.add_argument("--yes", "-y", action="store_true", help="do not ask")
    purge.add_argument("--dry-run", action="store_true", help="print them, change nothing")


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
    if args.workers is not None:
        from .supervisor import supervise

        if args.http is not None:
            _, _, port = args.http.rpartition(":")
            if not port.isdigit():
                raise ConfigurationError(
                    f"--http expects host:port, e.g. 0.0.0.0:8000; got {args.http!r}"
                )
        run_args = [args.target]
        if args.log_format:
            run_args += ["--log-format", args.log_format]
        if args.log_level:
            run_args += ["--log-level", args.log_level]
        return supervise(
            run_args,
            args.workers,
            http=args.http,
            shutdown_timeout=bus.settings.shutdown_timeout,
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


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(text)


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
        "--workers",
        type=_positive,
        metavar="N",
        default=None,
        help="run N worker processes under a supervisor that restarts a crashed one and "
        "forwards SIGTERM (worker i serves --http on PORT+i)",
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

    dlq = sub.add_parser("dlq", help="list, show, replay or purge the dead letters of a group")
    _dlq_arguments(dlq)

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
    except ConnectionError as exc:  # the broker cannot be reached: may pass (exit 1, not 2)
        print(f"eventbus: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
