"""`make demo` and `make test` install from the lock files alone: each must name every dependency
pyproject.toml declares, and the two must agree on every version they share (`make lock`)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]


def _pins(name: str) -> dict[str, str]:
    text = (ROOT / "requirements" / name).read_text(encoding="utf-8")
    pins = {canonicalize_name(n): v for n, v in re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+)", text, re.MULTILINE)}
    assert pins, f"requirements/{name} pins nothing"
    return pins


def _declared(extra: str | None = None) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    listed = project["optional-dependencies"][extra] if extra else project["dependencies"]
    return [Requirement(line) for line in listed]


def test_the_runtime_lock_pins_every_dependency_within_its_declared_range() -> None:
    pins = _pins("runtime.txt")
    for requirement in _declared():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} is declared but not locked: run make lock"
        assert requirement.specifier.contains(pins[name], prereleases=True), (requirement, pins[name])


def test_the_dev_lock_holds_the_runtime_lock_and_the_dev_tools() -> None:
    runtime, dev = _pins("runtime.txt"), _pins("dev.txt")
    assert {name: dev.get(name) for name in runtime} == runtime
    for requirement in _declared("dev"):
        name = canonicalize_name(requirement.name)
        assert name in dev, f"{requirement.name} is declared but not locked: run make lock"
        assert requirement.specifier.contains(dev[name], prereleases=True), (requirement, dev[name])


def test_every_pin_carries_a_hash() -> None:
    for name in ("runtime.txt", "dev.txt"):
        entries = re.split(r"\n(?=[A-Za-z0-9])", (ROOT / "requirements" / name).read_text(encoding="utf-8"))
        pinned = [e for e in entries if "==" in e.split("\n", 1)[0]]
        assert pinned and all("--hash=sha256:" in e for e in pinned), name
