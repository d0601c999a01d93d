"""What `pip install .` puts in site-packages: one top-level package, `eventbus`, with the
built-in adapters as `eventbus.adapters` (found through their entry points), and no
`adapters`, `benchmarks`, `tests` or `examples` package."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_installed_distribution_holds_only_eventbus(tmp_path: Path) -> None:
    target = tmp_path / "site"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
         "--no-build-isolation", "--target", str(target), str(ROOT)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    top = {p.name for p in target.iterdir() if not p.name.endswith(".dist-info")}
    assert top - {"bin"} == {"eventbus"}, top
    assert (target / "eventbus" / "adapters" / "kafka" / "consumer.py").is_file()
    [dist] = target.glob("eventbus-*.dist-info")
    entry_points = (dist / "entry_points.txt").read_text()
    assert "kafka = eventbus.adapters.kafka:adapter" in entry_points
    # the installed copy imports, adapters included, without the client libraries loaded
    check = (
        f"import sys; sys.path.insert(0, {str(target)!r}); "
        "import eventbus, eventbus.adapters.kafka, eventbus.adapters.rabbitmq; "
        f"assert eventbus.__file__.startswith({str(target)!r}), eventbus.__file__; "
        "assert 'confluent_kafka' not in sys.modules and 'aio_pika' not in sys.modules"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, cwd=tmp_path, env=env
    )
    assert done.returncode == 0, done.stderr
