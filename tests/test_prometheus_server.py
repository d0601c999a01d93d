"""The Prometheus server of scripts/prometheus.sh scrapes a target that a test adds.

End to end: a prometheus_client exposition server on a free loopback port, a targets
file written by tests.prometheus.scrape(), and the counter's value read back through
the server's query API.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, Counter, start_http_server

from .prometheus import query, scrape, wait_up, wait_value

pytestmark = pytest.mark.prometheus


@pytest.fixture
def exposition() -> Iterator[tuple[int, CollectorRegistry]]:
    """A /metrics server of its own registry on 127.0.0.1, on a port the OS picks."""
    registry = CollectorRegistry()
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        yield server.server_port, registry
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_scraped_counter_reaches_the_query_api(
    exposition: tuple[int, CollectorRegistry],
) -> None:
    port, registry = exposition
    counter = Counter("eventbus_test_events", "Events counted by the test.", registry=registry)
    for _ in range(7):
        counter.inc()

    with scrape(f"127.0.0.1:{port}", {"suite": "prometheus_server"}) as instance_id:
        wait_up(instance_id, timeout=30)
        promql = f'eventbus_test_events_total{{instance_id="{instance_id}"}}'
        wait_value(promql, 7, timeout=30)

        [sample] = query(promql)
        assert sample["metric"]["job"] == "eventbus"
        assert sample["metric"]["suite"] == "prometheus_server"
        assert sample["metric"]["instance"] == f"127.0.0.1:{port}"
