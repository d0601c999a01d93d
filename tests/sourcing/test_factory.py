"""`open_store` and the platform: the store abstraction imports no backend, and eventbus
works where `fcntl` does not exist (the SQLite relay lease then covers one process)."""

import subprocess
import sys
import textwrap
from pathlib import Path

from eventbus.sourcing import MemoryEventStore, SqliteEventStore, open_store


def test_open_store_by_url(tmp_path: Path) -> None:
    assert isinstance(open_store("memory://"), MemoryEventStore)
    assert isinstance(open_store(f"sqlite:///{tmp_path}/e.db"), SqliteEventStore)


def test_eventbus_works_without_fcntl(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import asyncio, sys
        sys.modules["fcntl"] = None  # as on Windows: importing it fails
        import eventbus
        from eventbus.sourcing import SqliteEventStore

        async def main():
            store = SqliteEventStore({str(tmp_path / "e.db")!r})
            await store.open()
            first, second = await store.try_acquire_relay(), await store.try_acquire_relay()
            await store.close()
            print(first, second)

        asyncio.run(main())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1].split() == ["True", "False"]
    assert "relay lease covers one process" in done.stdout + done.stderr
