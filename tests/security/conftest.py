"""Fixtures of the TLS and SASL tests: a fresh PKI per session, the TLS RabbitMQ nodes and
the SASL_SSL Kafka broker started by their scripts (once per session, as CI would on a
fresh machine), and `secrets_watch`, which captures every line that could leak a secret.

A broker that cannot be started fails the tests (never skips them).
"""

from __future__ import annotations

import logging
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .pki import Pki, make_pki
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


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA, server and client certificates for this session (see `pki.py`)."""
    return make_pki(tmp_path_factory.mktemp("pki"))


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
    password = f"AmqpPw-{secrets.token_hex(12)}"
    users = pki.folder / "amqp-users"
    users.write_text(f"eventbus-app {password}\n")
    users.chmod(0o600)
    run_script("rabbitmq-tls.sh", "start", str(pki.folder))
    return TlsRabbit(pki, "eventbus-app", password)


@dataclass(frozen=True)
class SecureKafka:
    """The SASL_SSL broker of scripts/kafka-secure.sh, its SCRAM user and the PKI."""

    pki: Pki
    username: str
    password: str = field(repr=False)
    url: str = "kafka://127.0.0.1:39092"

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
    password = f"ScramPw-{secrets.token_hex(12)}"
    users = pki.folder / "scram-users"
    users.write_text(f"eventbus-app {password}\n")
    users.chmod(0o600)
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
