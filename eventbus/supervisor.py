"""`eventbus run myapp:bus --workers N`: N worker processes under one supervisor.

Each worker is a plain `eventbus run myapp:bus` of its own (a process: its own event loop,
GIL and broker connections), so the workers are members of the bus's groups like any
other instances: Kafka shares the partitions among them, RabbitMQ the partition queues of
a group subscribed with `partitions=`. The supervisor only starts, watches and stops them:

- SIGTERM or SIGINT is forwarded to every worker as SIGTERM, and each stops gracefully
  (finishes its in-flight handlers, commits, closes); a worker still running
  `shutdown_timeout` + `STOP_GRACE` seconds later is killed. The supervisor exits 0 once
  every worker exited 0, 1 otherwise.
- A worker that exits on its own (crashed, killed, or stopped itself because a consumer
  died) is started again, after 0.5 s, doubling per crash in a row up to 30 s; a worker
  that ran for `STABLE_AFTER` seconds starts the count afresh.
- A worker whose first run exits with status 2 (eventbus's configuration or start-up
  error: a wrong URL, an unreachable broker) stops them all: the same error would hit
  every restart, and the supervisor exits 2 instead of looping.

Worker `i` (0-based) runs with `EVENTBUS_WORKER=i`, and, where they are set,
`EVENTBUS_KAFKA_INSTANCE_ID=<id>-<i>` (static membership needs one name per process) and
`--http HOST:PORT+i` (each worker serves its own probes and metrics; port 0 stays 0).
Worker output goes straight to the supervisor's stdout and stderr (one write per log
line, so lines never splice). On Linux a worker gets SIGTERM when the supervisor dies,
even by SIGKILL: none outlives it.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .log import get_logger

_log = get_logger()

#: seconds a worker may take beyond the bus's `shutdown_timeout` to exit after SIGTERM
STOP_GRACE = 10.0
#: the first restart delay, and the longest
FIRST_BACKOFF = 0.5
MAX_BACKOFF = 30.0
#: a worker that ran this long counts as healthy: its next crash restarts it at once
STABLE_AFTER = 60.0
#: `eventbus run`'s exit status for a configuration or start-up error
CONFIGURATION_ERROR = 2


@dataclass
class _Worker:
    index: int
    process: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    runs: int = 0
    crashes_in_a_row: int = 0


class Supervisor:
    """Start `workers` copies of `eventbus run <run_args>` and keep them running (see the
    module docstring)."""

    def __init__(
        self,
        run_args: Sequence[str],
        workers: int,
        *,
        http: str | None = None,
        shutdown_timeout: float = 30.0,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self.run_args = list(run_args)
        self.workers = [_Worker(i) for i in range(workers)]
        self.http = http
        self.stop_timeout = shutdown_timeout + STOP_GRACE
        self._stopping = asyncio.Event()
        self._fatal: int | None = None

    # --- one worker ----------------------------------------------------------------------

    def argv(self, index: int) -> list[str]:
        """The command line of worker `index`."""
        argv = [sys.executable, "-m", "eventbus", "run", *self.run_args]
        if self.http is not None:
            host, _, port = self.http.rpartition(":")
            number = int(port)
            argv += ["--http", f"{host}:{number + index if number else 0}"]
        return argv

    def env(self, index: int) -> dict[str, str]:
        """The environment of worker `index`."""
        env = {**os.environ, "EVENTBUS_WORKER": str(index)}
        instance = env.get("EVENTBUS_KAFKA_INSTANCE_ID")
        if instance:
            env["EVENTBUS_KAFKA_INSTANCE_ID"] = f"{instance}-{index}"
        return env

    async def _start(self, worker: _Worker) -> None:
        worker.process = await asyncio.create_subprocess_exec(
            *self.argv(worker.index),
            env=self.env(worker.index),
            preexec_fn=_die_with(os.getpid()) if sys.platform.startswith("linux") else None,
        )
        worker.started_at = time.monotonic()
        worker.runs += 1
        _log.info("supervisor.worker_started", worker=worker.index, pid=worker.process.pid)

    async def _watch(self, worker: _Worker) -> None:
        """Run one worker until the supervisor stops, restarting it when it exits."""
        while not self._stopping.is_set():
            await self._start(worker)
            assert worker.process is not None
            if self._stopping.is_set():  # the stop came while it started: it stops too
                worker.process.send_signal(signal.SIGTERM)
            code = await worker.process.wait()
            ran = time.monotonic() - worker.started_at
            if self._stopping.is_set():
                _log.info("supervisor.worker_stopped", worker=worker.index, returncode=code)
                return
            _log.warning(
                "supervisor.worker_exited",
                worker=worker.index,
                pid=worker.process.pid,
                returncode=code,
                ran_s=round(ran, 1),
            )
            if code == CONFIGURATION_ERROR and worker.runs == 1:
                _log.error(
                    "supervisor.giving_up",
                    worker=worker.index,
                    reason="the worker could not start (configuration or start-up error)",
                )
                self._fatal = CONFIGURATION_ERROR
                self._stopping.set()
                return
            worker.crashes_in_a_row = 1 if ran >= STABLE_AFTER else worker.crashes_in_a_row + 1
            delay = min(FIRST_BACKOFF * 2 ** (worker.crashes_in_a_row - 1), MAX_BACKOFF)
            _log.info("supervisor.restarting", worker=worker.index, in_s=delay)
            try:
                await asyncio.wait_for(self._stopping.wait(), delay)
            except TimeoutError:
                continue

    # --- all of them ---------------------------------------------------------------------

    async def run(self) -> int:
        """Run until SIGTERM/SIGINT (or a worker that cannot start); -> the exit status."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._signalled, sig)
        _log.info("supervisor.started", workers=len(self.workers), pid=os.getpid())
        watchers = [asyncio.create_task(self._watch(w)) for w in self.workers]
        try:
            await self._stopping.wait()
            await self._stop_all()
            await asyncio.gather(*watchers, return_exceptions=True)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        codes = [w.process.returncode for w in self.workers if w.process is not None]
        status = self._fatal if self._fatal is not None else int(any(c != 0 for c in codes))
        _log.info("supervisor.stopped", returncodes=codes, status=status)
        return status

    def _signalled(self, sig: int) -> None:
        if not self._stopping.is_set():
            _log.info("supervisor.stopping", signal=signal.Signals(sig).name)
        self._stopping.set()

    async def _stop_all(self) -> None:
        """SIGTERM to every live worker; SIGKILL to those still running after the stop
        timeout."""
        processes = [w.process for w in self.workers if w.process is not None]
        live = [p for p in processes if p.returncode is None]
        for process in live:
            process.send_signal(signal.SIGTERM)
        if not live:
            return
        waiting = [asyncio.create_task(p.wait()) for p in live]
        _, pending = await asyncio.wait(waiting, timeout=self.stop_timeout)
        for process in live:
            if process.returncode is None:
                _log.warning("supervisor.worker_killed", pid=process.pid, after_s=self.stop_timeout)
                process.kill()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)


#: prctl(2) option: the signal a process gets when its parent dies
_PR_SET_PDEATHSIG = 1


def _die_with(parent: int) -> Callable[[], None]:
    """A worker's `preexec_fn` (Linux): SIGTERM to the worker when the supervisor dies,
    even by SIGKILL, so no worker outlives it and goes on consuming unsupervised."""

    def arrange() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # it died before the prctl: stop now
            os.kill(os.getpid(), signal.SIGTERM)

    return arrange


def supervise(
    run_args: Sequence[str], workers: int, *, http: str | None, shutdown_timeout: float
) -> int:
    """Run the supervisor on an event loop of its own; -> its exit status."""
    return asyncio.run(
        Supervisor(run_args, workers, http=http, shutdown_timeout=shutdown_timeout).run()
    )
