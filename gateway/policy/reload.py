"""Policies reloaded without a restart: on SIGHUP, and when a file in the policy directory changes
(polled by modification time and size). A valid new set replaces the old one atomically; an invalid one
is refused — the old set stays in force, the error is logged with every fault, and counted."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path

from gateway.metrics import Metrics
from gateway.policy.loader import PolicyError, load_policies
from gateway.policy.store import PolicyStore

log = logging.getLogger(__name__)

Fingerprint = tuple[tuple[str, int, int], ...]


def fingerprint(directory: Path) -> Fingerprint:
    entries = []
    for path in sorted(directory.rglob("*")):
        with contextlib.suppress(OSError):
            if path.is_file():
                stat = path.stat()
                entries.append((str(path.relative_to(directory)), stat.st_mtime_ns, stat.st_size))
    return tuple(entries)


class PolicyReloader:
    def __init__(self, store: PolicyStore, directory: Path, metrics: Metrics, interval_s: float) -> None:
        self.store = store
        self.directory = directory
        self.metrics = metrics
        self.interval_s = interval_s
        self._seen = fingerprint(directory)
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def reload(self, why: str) -> bool:
        async with self._lock:
            self._seen = await asyncio.to_thread(fingerprint, self.directory)
            try:
                policies = await asyncio.to_thread(load_policies, self.directory)
            except PolicyError as exc:
                self.metrics.policy_reload_failures.inc()
                log.error("policy reload (%s) refused, the policies in force stay: %s", why, exc)
                return False
            self.store.replace(policies)
            self.metrics.policy_generation.set(self.store.generation)
            log.info(
                "policies reloaded (%s): %d administrations, generation %d",
                why,
                len(policies.administrations),
                self.store.generation,
            )
            return True

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                current = await asyncio.to_thread(fingerprint, self.directory)
                if current != self._seen:
                    await self.reload("files changed")
            except Exception:  # a watcher that dies silently would be worse than one that logs
                log.exception("policy watch failed")

    def start(self) -> None:
        if self.interval_s > 0:
            self._task = asyncio.create_task(self._watch(), name="policy-watch")
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not the main thread
            loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self.reload("SIGHUP")))

    async def stop(self) -> None:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
