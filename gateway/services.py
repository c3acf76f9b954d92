"""What one app instance runs with, as the components built it (gateway/app.py), reached by a route
through `services(request)`: each part under the name of the component it comes from."""

from __future__ import annotations

from dataclasses import dataclass

from opentelemetry import trace
from starlette.requests import Request

from gateway.audit.component import AuditLog
from gateway.auth.component import Auth
from gateway.bulk.component import Bulk
from gateway.connectors.router import ConnectorRouter
from gateway.consent.store import ConsentStore
from gateway.console import Console
from gateway.events.component import LifeEvents
from gateway.identity.pseudonyms import SubjectHasher, SubjectRefs
from gateway.lifecycle import ReadinessCheck
from gateway.metrics import Metrics
from gateway.policy.store import PolicyStore
from gateway.ratelimit.admission import Network
from gateway.ratelimit.limiter import RateLimits
from gateway.settings import Settings


@dataclass
class Services:
    settings: Settings
    policies: PolicyStore
    auth: Auth  # signing keys, the token service, the bearer check
    log: AuditLog  # the access log's writer, its store, query index and follower, proofs, witnesses
    connectors: ConnectorRouter
    rate_limits: RateLimits
    trusted_proxies: tuple[Network, ...]
    consents: ConsentStore
    subjects: SubjectHasher  # `subject_hash`, the log's pseudonym of a person
    subject_refs: SubjectRefs  # `subject_ref`, an administration's pseudonym of a person
    bulk: Bulk  # jobs, their files, the chunk queue
    events: LifeEvents  # the register writer, the feed, the pushes
    console: Console
    tracer: trace.Tracer
    metrics: Metrics
    readiness: dict[str, ReadinessCheck]


def services(request: Request) -> Services:
    app_services: Services = request.app.state.services
    return app_services
