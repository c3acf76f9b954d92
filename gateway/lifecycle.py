"""How the gateway's parts run. Each package builds its part from settings (`build_*` in its
`component.py`) and hands back a `Component`: how to start it, how to close it, how to tell it is ready.
`create_app` adds the components in the order they depend on each other; `Lifecycle` starts them in
that order and closes them in reverse, every close attempted even when an earlier one fails."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
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


def _nothing_held() -> None:
    return None


def started(start: Callable[[], object]) -> Callable[[], Awaitable[None]]:
    """A part whose start only schedules its tasks (synchronous), as a component's `start`."""

    async def run() -> None:
        start()

    return run


async def close_each(name: str, *steps: Callable[[], object]) -> None:
    """Every step of a component's close, in order, each tried even when one before it failed (a step
    may return an awaitable, which is awaited)."""
    for step in steps:
        try:
            done = step()
            if inspect.isawaitable(done):
                await done
        except Exception:
            log.exception("closing %s: a step failed; going on", name)


@dataclass(frozen=True)
class Component:
    name: str
    start: Callable[[], Awaitable[None]] = _nothing
    close: Callable[[], Awaitable[None]] = _nothing
    readiness: Mapping[str, ReadinessCheck] = field(default_factory=dict)
    # What a part holds from the moment it is built (a lock, a thread), let go if the app is never made.
    abandon: Callable[[], None] = _nothing_held


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
        """In order. A start that fails part way is closed as well (a close tolerates what never
        started), with the ones before it, by `close`."""
        try:
            for component in self._components:
                self._started.append(component)
                await component.start()
        except BaseException:
            _let_go(reversed(self._components[len(self._started) :]))  # never started
            raise

    def abandon(self) -> None:
        """The app will not be made (a later part's settings are refused): what the parts built so far
        hold is let go, in reverse."""
        _let_go(reversed(self._components))

    async def close(self) -> None:
        while self._started:
            component = self._started.pop()
            try:
                await component.close()
            except Exception:
                log.exception("closing %s failed; closing the rest", component.name)


def _let_go(components: Iterable[Component]) -> None:
    for component in components:
        try:
            component.abandon()
        except Exception:
            log.exception("abandoning %s failed", component.name)
