"""A real Prometheus server (scripts/prometheus.sh) scrapes `eventbus run --http` while
events flow, and its query API reports the handled and dead-lettered counts the test
caused."""

from __future__ import annotations

import asyncio

import pytest

from ..prometheus import scrape, wait_up, wait_value
from .service import Service, wait
from .test_readiness import RABBITMQ, _publish

pytestmark = [pytest.mark.prometheus, pytest.mark.rabbitmq]


def test_prometheus_scrapes_the_counts_of_a_running_service() -> None:
    service = Service(RABBITMQ)
    try:
        wait(service.ready, 60, "/readyz 200", service)
        with scrape(service.address) as instance:
            wait_up(instance, timeout=60)
            good = [f"o-{n}" for n in range(7)]
            poison = ["poison-1", "poison-2", "poison-3"]
            asyncio.run(_publish(RABBITMQ, service.stream, *good, *poison))
            where = f'instance_id="{instance}",stream="{service.stream}",group="service"'
            wait_value(f"sum(eventbus_handled_total{{{where}}})", 7, timeout=60)
            wait_value(
                f'sum(eventbus_failed_total{{{where},outcome="dead_lettered"}})', 3, timeout=60
            )
            wait_value(f"eventbus_subscription_attached{{{where}}}", 1)
            wait_value(f'eventbus_broker_connected{{instance_id="{instance}"}}', 1)
        assert service.stop() == 0, service.log_tail()
    finally:
        service.kill()
