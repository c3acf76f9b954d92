"""The policies in force (`GATEWAY_POLICIES_DIR`), refused at start when any file is bad, and their
reloader (file changes, `SIGHUP`), which keeps the old set when a new one is bad."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.lifecycle import Component, started
from gateway.metrics import Metrics
from gateway.policy.loader import load_policies
from gateway.policy.reload import PolicyReloader
from gateway.policy.store import PolicyStore
from gateway.settings import Settings


@dataclass
class Policies:
    store: PolicyStore
    component: Component


def build_policies(settings: Settings, metrics: Metrics) -> Policies:
    store = PolicyStore(load_policies(settings.policies_dir))
    reloader = PolicyReloader(store, settings.policies_dir, metrics, settings.policy_reload_interval_s)
    return Policies(store, Component("policy reloader", started(reloader.start), reloader.stop))
