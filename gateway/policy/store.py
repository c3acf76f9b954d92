"""The policy set in force. Readers take `current` once per request; a reload swaps it whole."""

from __future__ import annotations

from gateway.policy.loader import PolicySet


class PolicyStore:
    def __init__(self, policies: PolicySet) -> None:
        self.current = policies
        self.generation = 0

    def replace(self, policies: PolicySet) -> None:
        """Atomic for readers: one reference assignment; caches keyed on `generation` drop stale entries."""
        self.current = policies
        self.generation += 1
