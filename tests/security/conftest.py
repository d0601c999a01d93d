"""Fixtures of the TLS and SASL tests: the test PKI (made with openssl, kept in
${EVENTBUS_CACHE:-~/.cache/eventbus}/test-pki and reused while valid, with the users'
random passwords), the TLS RabbitMQ nodes and the SASL_SSL Kafka broker started by their
scripts (once per session, as CI would on a fresh machine: the scripts leave running nodes
alone when the material is unchanged), and `secrets_watch`, which captures every line that
could leak a secret.

A broker that cannot be started fails the tests (never skips them).
"""

from __future__ import annotations

import logging
import os
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .pki import Pki, cached_pki
from .watch import SecretsWatch

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def run_script(name: str, *args: str, timeout: float = 600) -> str:
    """Run `scripts/<name> args...`; a failure fails the test with the script's output."""
    try:
        done = subprocess.run(
            ["bash", str(SCRIPTS / name), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"scripts/{name} {' '.join(args)} did not finish in {timeout}s", pytrace=False)
    if done.returncode != 0:
        pytest.fail(
            f"scripts/{name} {' '.join(args)} failed (exit {done.returncode}):\n"
            f"{done.stdout[-2000:]}\n{done.stderr[-4000:]}",
            pytrace=False,
        )
    return done.stdout


CACHE = Path(os.environ.get("EVENTBUS_CACHE") or Path.home() / ".cache" / "eventbus")


@pytest.fixture(scope="session")
def pki() -> Pki:
    """A CA, server and client certificates (see `pki.py`)."""
    return cached_pki(CACHE / "test-pki")


def user_password(pki: Pki, users: str, name: str, prefix: str) -> str:
    """The password of `name` in the PKI's users file `users` ("name password" lines),
    made (random, distinctive) when the file does not exist yet."""
    path = pki.folder / users
    if not path.exists():
        path.write_text(f"{name} {prefix}-{secrets.token_hex(12)}\n")
        path.chmod(0o600)
    found = dict(line.split(" ", 1) for line in path.read_text().splitlines() if line)
    return found[name]


@dataclass(frozen=True)
class TlsRabbit:
    """The TLS RabbitMQ nodes of scripts/rabbitmq-tls.sh, their user and the PKI."""

    pki: Pki
    username: str
    password: str = field(repr=False)

    def url(self, host: str = "localhost", port: int = 5671) -> str:
        """5671: client certificate optional (verified when presented); 5676: required.
        Host 127.0.0.2 reaches the 5671 node on an address its certificate does not name."""
        return f"amqps://{self.username}:{self.password}@{host}:{port}/"


@pytest.fixture(scope="session")
def tls_rabbit(pki: Pki) -> TlsRabbit:
    password = user_password(pki, "amqp-users", "eventbus-app", "AmqpPw")
    run_script("rabbitmq-tls.sh", "start", str(pki.folder))
    return TlsRabbit(pki, "eventbus-app", password)


@dataclass(frozen=True)
class SecureKafka:
    """The SASL_SSL broker of scripts/kafka-secure.sh, its SCRAM user and the PKI."""

    pki: Pki
    username: str
    password: str = field(repr=False)
    url: str = "kafka://127.0.0.1:19092"

    def options(self, **changes: Any) -> dict[str, Any]:
        """EventBus options for SASL_SSL with SCRAM-SHA-512 as this user (`changes` win)."""
        return {
            "security_protocol": "sasl_ssl",
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_username": self.username,
            "sasl_password": self.password,
            "ssl_ca_location": str(self.pki.ca),
            **changes,
        }


@pytest.fixture(scope="session")
def secure_kafka(pki: Pki) -> SecureKafka:
    password = user_password(pki, "scram-users", "eventbus-app", "ScramPw")
    run_script("kafka-secure.sh", "start", str(pki.folder))
    return SecureKafka(pki, "eventbus-app", password)


@pytest.fixture
def secrets_watch(
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> Iterator[SecretsWatch]:
    """Everything a test could leak a secret through: structlog lines (rendered by
    eventbus's own processors, DEBUG and up), stdlib logging records, and whatever reaches
    the process's stdout and stderr (librdkafka logs there itself)."""
    caplog.set_level(logging.DEBUG)
    with SecretsWatch.capturing(capfd, caplog) as watch:
        yield watch
