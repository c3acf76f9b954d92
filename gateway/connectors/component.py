"""The connectors `GATEWAY_CONNECTORS_FILE` names (the embedded register by default), behind the router
that asks each the attributes it holds."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import httpx
from opentelemetry import trace

from gateway.connectors.base import Connector
from gateway.connectors.router import ConnectorRouter, build_connectors, load_connectors_file
from gateway.lifecycle import Component, ConfigurationError
from gateway.metrics import Metrics
from gateway.settings import Settings


@dataclass
class Connectors:
    router: ConnectorRouter
    component: Component


def build_connectors_router(
    settings: Settings,
    http: httpx.AsyncClient,
    metrics: Metrics,
    tracer: trace.Tracer,
    connectors: Sequence[Connector] | None = None,
) -> Connectors:
    """`connectors`: stand-ins for the configured ones (each meets the `Connector` protocol)."""
    if connectors is None:
        try:
            config = load_connectors_file(settings.connectors_file)
        except ValueError as exc:
            raise ConfigurationError(f"GATEWAY_CONNECTORS_FILE: {exc}") from None
        connectors = build_connectors(config, settings.data_dir, http)
    router = ConnectorRouter(list(connectors), metrics, tracer)

    async def connectors_ready() -> bool:
        return all((await router.health()).values())

    return Connectors(router, Component("connectors", close=router.close, readiness={"connectors": connectors_ready}))
