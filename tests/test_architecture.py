"""The import-linter contracts name every kernel module: a module added to the kernel and
forgotten in pyproject.toml would escape the architecture checks of CI."""

import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _kernel_modules() -> set[str]:
    package = ROOT / "eventbus"
    modules = {f"eventbus.{p.stem}" for p in package.glob("*.py") if p.stem != "__init__"}
    modules |= {
        f"eventbus.{p.name}"
        for p in package.iterdir()
        if p.is_dir() and p.name != "adapters" and (p / "__init__.py").exists()
    }
    return modules


def _contract(name: str) -> dict[str, Any]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    contracts: list[dict[str, Any]] = config["tool"]["importlinter"]["contracts"]
    [contract] = [c for c in contracts if c["name"] == name]
    return contract


def test_every_kernel_module_is_forbidden_to_import_adapters() -> None:
    listed = set(_contract("The kernel imports no adapter")["source_modules"])
    assert listed == _kernel_modules()


def test_adapters_may_import_no_kernel_module_but_the_toolkit() -> None:
    contract = _contract("Adapters use the kernel only through eventbus.toolkit")
    assert set(contract["forbidden_modules"]) == _kernel_modules() - {"eventbus.toolkit"}
