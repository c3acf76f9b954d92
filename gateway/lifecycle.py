"""How the gateway's parts run. Each package builds its part from settings (`build_*` in its
`component.py`) and hands back a `Component`: how to start it, how to close it, how to tell it is ready.
`create_app` adds the components in the order they depend on each other; `Lifecycle` starts them in
that order and closes them in reverse, every close attempted even when an earlier one fails."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

# A check answers True/"ok", "degraded" (still serving safely) or False/"failing", or a dict with a
# `status` of those and details (docs/contract.md §12, `/readyz`).
ReadinessCheck = Callable[[], Awaitable[bool | str | dict[str, Any]]]


class ConfigurationError(Exception):
    """The settings cannot make a safe gateway; the message says which and why."""


async def _nothing() -> None:
    return None


def started(start: Callable[[], object]) -> Callable[[], Awaitable[None]]:
    """A part whose start only schedules its tasks (synchronous), as a component's `start`."""

    async def run() -> None:
        start()

    return run


@dataclass(frozen=True)
class Component:
    name: str
    start: Callable[[], Awaitable[None]] = _nothing
    close: Callable[[], Awaitable[None]] = _nothing
    readiness: Mapping[str, ReadinessCheck] = field(default_factory=dict)


class Lifecycle:
    def __init__(self) -> None:
        self._components: list[Component] = []
        self._started: list[Component] = []

    def add(self, *components: Component) -> None:
        for component in components:
            taken = set(self.readiness) & set(component.readiness)
            if taken:
                raise ValueError(f"readiness check {sorted(taken)} given twice")
            self._components.append(component)

    @property
    def readiness(self) -> dict[str, ReadinessCheck]:
        return {name: check for c in self._components for name, check in c.readiness.items()}

    async def start(self) -> None:
        """In order; a start that fails leaves the ones before it started, for `close` to stop."""
        for component in self._components:
            await component.start()
            self._started.append(component)

    async def close(self) -> None:
        while self._started:
            component = self._started.pop()
            try:
                await component.close()
            except Exception:
                log.exception("closing %s failed; closing the rest", component.name)
