"""A third-party adapter installs like ours: an `eventbus.adapters` entry point."""

import sys
from pathlib import Path

import pytest

from eventbus import EventBus
from eventbus.registry import known_schemes


@pytest.fixture
def installed_adapter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Install a tiny package `acme_bus` whose dist-info declares scheme `acme`; its
    adapter is a renamed memory:// (the point is the discovery, not the transport)."""
    (tmp_path / "acme_bus.py").write_text(
        "from eventbus.adapters.memory import MemoryAdapter\n"
        "from eventbus.settings import Settings\n"
        "class AcmeAdapter(MemoryAdapter):\n"
        "    def create_broker(self, settings: Settings):\n"
        "        broker = super().create_broker(settings)\n"
        "        broker.acme = True\n"
        "        return broker\n"
        "adapter = AcmeAdapter()\n"
    )
    dist = tmp_path / "acme_bus-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-bus\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[eventbus.adapters]\nacme = acme_bus:adapter\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "acme_bus", raising=False)


def test_third_party_scheme_is_found_by_entry_point(installed_adapter: None) -> None:
    assert "acme" in known_schemes()
    bus = EventBus("acme://shop")
    assert getattr(bus.broker, "acme", False) is True


def test_builtin_schemes_are_listed() -> None:
    assert {"memory", "amqp", "amqps", "kafka"} <= set(known_schemes())
