"""Helpers of the tests that need the Prometheus server started by scripts/prometheus.sh.

That server (127.0.0.1:9090, scrape and evaluation interval 1 s) scrapes, as job
`eventbus`, every target listed in a JSON file of `TARGETS_DIR` (file_sd_configs,
re-read every second). `scrape()` adds a target by writing such a file and labels it
with a unique `instance_id`, so a test queries exactly its own series:

    with scrape(f"127.0.0.1:{port}") as instance_id:
        wait_up(instance_id, timeout=30)
        wait_value(f'my_metric_total{{instance_id="{instance_id}"}}', 7, timeout=30)

Every helper fails (AssertionError) with a message naming scripts/prometheus.sh when
the server does not answer: a test that needs Prometheus never skips.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

URL = "http://127.0.0.1:9090"
START_HINT = "start it with `bash scripts/prometheus.sh` (or scripts/brokers.sh)"
_HTTP_TIMEOUT = 5.0
_POLL = 0.1
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def targets_dir() -> Path:
    """Where the server reads its targets: the same path as scripts/prometheus.sh."""
    root = os.environ.get("EVENTBUS_CACHE") or str(Path.home() / ".cache" / "eventbus")
    return Path(root) / "prometheus" / "targets"


TARGETS_DIR = targets_dir()


def _get(path: str, params: dict[str, str] | None = None) -> httpx.Response:
    try:
        return httpx.get(URL + path, params=params, timeout=_HTTP_TIMEOUT, trust_env=False)
    except httpx.TransportError as exc:
        raise AssertionError(
            f"Prometheus does not answer on {URL}{path} ({type(exc).__name__}: {exc}): {START_HINT}"
        ) from None


def require_server() -> None:
    """Fail unless the server answers /-/ready with 200."""
    response = _get("/-/ready")
    if response.status_code != 200:
        raise AssertionError(
            f"Prometheus on {URL} is not ready (/-/ready: HTTP {response.status_code} "
            f"{response.text.strip()!r}): {START_HINT}"
        )


@contextmanager
def scrape(address: str, job_labels: dict[str, str] | None = None) -> Iterator[str]:
    """Have the server scrape `address` ("host:port", path /metrics) while inside.

    Writes a targets file (atomically: a temp file, then a rename) whose target carries
    `job_labels` and a unique `instance_id` label, yields that label's value, and
    removes the file on exit.
    """
    if "://" in address or "/" in address:
        raise ValueError(f"address must be host:port (no scheme, no path): {address!r}")
    labels = dict(job_labels or {})
    for name in labels:
        if not _LABEL_NAME.fullmatch(name) or name.startswith("__") or name == "instance_id":
            raise ValueError(f"not a label name a test may set: {name!r}")
    require_server()
    directory = targets_dir()
    if not directory.is_dir():
        raise AssertionError(
            f"{directory} does not exist, yet Prometheus answers on {URL}: it is not the "
            f"server of scripts/prometheus.sh (or EVENTBUS_CACHE differs); {START_HINT}"
        )
    instance_id = uuid.uuid4().hex
    labels["instance_id"] = instance_id
    path = directory / f"{instance_id}.json"
    tmp = directory / f".{instance_id}.tmp"  # not *.json: the server never reads it
    try:
        tmp.write_text(json.dumps([{"targets": [address], "labels": labels}]))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:
        yield instance_id
    finally:
        path.unlink(missing_ok=True)


def query(promql: str) -> list[dict[str, Any]]:
    """Evaluate `promql` now (/api/v1/query) and return `data.result`.

    An instant vector gives its samples ({"metric": {...}, "value": [ts, "v"]}); a
    scalar or string result is returned as one sample with no labels.
    """
    response = _get("/api/v1/query", {"query": promql})
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or body.get("status") != "success":
        detail = (
            f"{body.get('errorType')}: {body.get('error')}"
            if isinstance(body, dict)
            else response.text[:500]
        )
        raise AssertionError(
            f"Prometheus query {promql!r} failed (HTTP {response.status_code}): {detail}"
        )
    data = body["data"]
    if data["resultType"] in ("scalar", "string"):
        return [{"metric": {}, "value": data["result"]}]
    result: list[dict[str, Any]] = data["result"]
    return result


def value(promql: str) -> float | None:
    """The value of the single sample `promql` gives now; None if it gives none."""
    result = query(promql)
    if not result:
        return None
    if len(result) > 1:
        series = ", ".join(str(sample.get("metric")) for sample in result[:5])
        raise AssertionError(f"{promql!r} gives {len(result)} series, not one: {series}")
    if "value" not in result[0]:
        raise AssertionError(f"{promql!r} is not an instant vector: {result[0]}")
    return float(result[0]["value"][1])


def _poll(done: Callable[[], bool], timeout: float, describe: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() >= deadline:
            raise AssertionError(f"after {timeout:g}s: {describe()}")
        time.sleep(_POLL)


def target_state(instance_id: str) -> dict[str, Any] | None:
    """The server's view of the target (/api/v1/targets entry), None if it has none."""
    response = _get("/api/v1/targets", {"state": "active"})
    if response.status_code != 200:
        raise AssertionError(f"/api/v1/targets: HTTP {response.status_code} {response.text}")
    for target in response.json()["data"]["activeTargets"]:
        if target.get("labels", {}).get("instance_id") == instance_id:
            found: dict[str, Any] = target
            return found
    return None


def wait_up(instance_id: str, timeout: float = 30.0) -> None:
    """Wait until the server has scraped the target successfully: up == 1."""
    promql = f'up{{instance_id="{instance_id}"}}'

    def describe() -> str:
        target = target_state(instance_id)
        if target is None:
            return (
                f"{promql} is {value(promql)}: the server has no target with that "
                f"instance_id (targets file gone, or not read from {targets_dir()})"
            )
        return (
            f"{promql} is {value(promql)}: target {target.get('scrapeUrl')} is "
            f"{target.get('health')}, last error: {target.get('lastError') or 'none'}"
        )

    _poll(lambda: value(promql) == 1, timeout, describe)


def wait_value(promql: str, expected: float, timeout: float = 30.0) -> None:
    """Wait until `promql` gives a single sample equal to `expected`."""
    last: list[float | None] = [None]

    def done() -> bool:
        last[0] = value(promql)
        return last[0] is not None and math.isclose(last[0], expected)

    _poll(done, timeout, lambda: f"{promql} is {last[0]}, expected {expected:g}")
