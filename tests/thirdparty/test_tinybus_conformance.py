"""A third-party adapter runs the shipped conformance suite in a few lines, with no edit
to anything under eventbus/ or adapters/: `tinybus` lives in `site/` (outside the
repository's adapter folders) and is found through its `eventbus.adapters` entry point."""

import itertools
from collections.abc import Mapping

import tinybus  # type: ignore[import-not-found]

from eventbus.registry import known_schemes
from eventbus.testing.conformance import AdapterTests, Harness

_names = itertools.count()


class TinyHarness(Harness):
    name = "tinybus"

    def __init__(self) -> None:
        self._url = f"tinybus://conformance{next(_names)}"

    def url(self) -> str:
        return self._url

    async def inject_raw(
        self,
        stream: str,
        event_type: str | bytes | None,
        body: bytes,
        key: str | bytes | None = None,
        *,
        headers: Mapping[str | bytes, str | bytes] | None = None,
    ) -> None:
        def text(value: str | bytes) -> str:
            return value.decode("utf-8", "replace") if isinstance(value, bytes) else value

        attributes = {"type": text(event_type)} if event_type is not None else {}
        tinybus.world(self._url).publish(
            stream, body, attributes, text(key) if key is not None else None
        )


class TestTinybus(AdapterTests):
    harness_class = TinyHarness


def test_tinybus_is_found_by_its_entry_point() -> None:
    assert "tinybus" in known_schemes()
