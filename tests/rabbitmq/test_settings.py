"""RabbitMQ URL parsing: one node or several (a cluster), and what fails at start-up, and
how. No broker needed."""

from __future__ import annotations

import pytest

from eventbus import ConfigurationError
from eventbus.adapters.rabbitmq.settings import describe_address, parse_url

pytestmark = pytest.mark.rabbitmq

SECRET = "s3cr3t/Pa55"


def test_one_node_keeps_the_defaults() -> None:
    target = parse_url("amqp://h1")
    assert target.addresses == (("h1", 5672),)
    assert (target.user, target.password.get_secret_value(), target.vhost) == (
        "guest",
        "guest",
        "/",
    )
    assert parse_url("amqps://h1/").addresses == (("h1", 5671),)
    assert parse_url("amqp://").addresses == (("localhost", 5672),)
    assert parse_url("amqp://u@h:1/v%2Fx").vhost == "v/x"


def test_several_nodes_in_the_order_given() -> None:
    url = f"amqp://alice:{SECRET.replace('/', '%2F')}@n1:5681, n2 ,[::1]:5683,[fe80::1]/prod"
    target = parse_url(url)
    assert target.addresses == (("n1", 5681), ("n2", 5672), ("::1", 5683), ("fe80::1", 5672))
    assert [describe_address(a) for a in target.addresses] == [
        "n1:5681",
        "n2:5672",
        "[::1]:5683",
        "[fe80::1]:5672",
    ]
    assert (target.user, target.password.get_secret_value(), target.vhost) == (
        "alice",
        SECRET,
        "prod",
    )
    assert "%2F" not in repr(target) and SECRET not in repr(target)
    assert "Pa55" not in target.redacted and "@n1:5681, n2 ,[::1]" in target.redacted


@pytest.mark.parametrize(
    "bad",
    [
        "amqp://h:notaport/",
        "amqp://h:70000/",
        "amqp://h1:5672,,h2/",
        "amqp://h1:5672,/",
        "amqp://::1:5672/",
        "amqp://[::1/",
        "amqp://h/a/b",
    ],
)
def test_bad_urls_are_refused_without_the_password(bad: str) -> None:
    url = bad.replace("amqp://", f"amqp://u:{SECRET}@")
    with pytest.raises(ConfigurationError) as info:
        parse_url(url)
    assert "EVENTBUS_URL" in str(info.value)
    assert "Pa55" not in str(info.value)
