"""Worker threads for sync handlers: daemon threads, so a handler that never returns cannot
keep the process alive after a graceful stop gave up on it.

`asyncio.to_thread` uses the loop's default executor, whose threads are joined when the
interpreter exits: one sync handler blocked forever makes `eventbus run` hang after SIGTERM.
Here the shutdown timeout is the last word: the bus stops, the blocked thread is abandoned
(its delivery was given back to the broker), and the process exits.
"""

from __future__ import annotations

import asyncio
import contextvars
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")


class SyncGeneratorExit(Exception):
    """A sync handler raised `GeneratorExit`, which a coroutine cannot re-raise from an
    awaited future; it is reported (and retried, dead-lettered) under this name."""


_Job = tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]


class DaemonThreads:
    """A grow-on-demand pool of daemon threads (at most `max_threads`; idle ones are
    reused). Exceptions of any kind, `SystemExit` and `KeyboardInterrupt` included, are
    handed to the awaiting coroutine instead of ending a thread or the process."""

    def __init__(self, max_threads: int = 64) -> None:
        self.max_threads = max_threads
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        #: threads waiting for a job that nobody claimed yet
        self._idle = 0
        #: jobs queued while every thread was busy (the next free thread takes one)
        self._backlog = 0

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        future: Future[T] = Future()
        self._jobs.put((future, fn, args))
        with self._lock:
            if self._idle:
                self._idle -= 1  # an idle thread takes it
                return future
            if self._threads >= self.max_threads:
                self._backlog += 1  # queued until a thread is free
                return future
            self._threads += 1
            number = self._threads
        threading.Thread(target=self._work, name=f"eventbus-sync-{number}", daemon=True).start()
        return future

    def _work(self) -> None:
        jobs = self._jobs
        while True:
            future, fn, args = jobs.get()
            if future.set_running_or_notify_cancel():
                try:
                    result = fn(*args)
                except GeneratorExit as exc:  # cannot cross an `await`: carried as an Exception
                    future.set_exception(SyncGeneratorExit(f"GeneratorExit: {exc}"))
                except BaseException as exc:  # the handler's failure, whatever it is
                    future.set_exception(exc)
                else:
                    future.set_result(result)
                del future, fn, args
            with self._lock:
                if self._backlog:
                    self._backlog -= 1
                else:
                    self._idle += 1


_pool = DaemonThreads()


async def run_sync(fn: Callable[..., T], *args: Any) -> T:
    """`await asyncio.to_thread(fn, *args)` on daemon threads (context variables copied)."""
    context = contextvars.copy_context()
    return await asyncio.wrap_future(_pool.submit(context.run, fn, *args))
