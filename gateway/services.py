"""The services one app instance runs with; built by `create_app`, reached through `request.app.state`."""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from opentelemetry import trace
from starlette.requests import Request

from gateway.audit.index import AuditIndex, IndexTask
from gateway.audit.log import AccessLog
from gateway.audit.proofs import LogViews
from gateway.audit.segment_store import SegmentStore
from gateway.audit.witness import WitnessClient, WitnessesFile
from gateway.auth.bearer import BearerValidator
from gateway.auth.keys import SigningKeys
from gateway.auth.server import TokenService
from gateway.bulk.files import JobFiles
from gateway.bulk.runner import ChunkQueue
from gateway.bulk.store import JobStore
from gateway.connectors.router import ConnectorRouter
from gateway.consent.store import ConsentStore
from gateway.console import Console
from gateway.events.delivery import Deliveries, WebhookSigner
from gateway.events.feed import EventFeed
from gateway.events.register import RegisterWriter
from gateway.identity.pseudonyms import SubjectHasher, SubjectRefs
from gateway.lifecycle import ReadinessCheck
from gateway.metrics import Metrics
from gateway.policy.store import PolicyStore
from gateway.ratelimit.limiter import RateLimits
from gateway.settings import Settings


@dataclass
class Services:
    settings: Settings
    policies: PolicyStore
    signing_keys: SigningKeys
    tokens: TokenService
    bearer: BearerValidator
    access_log: AccessLog
    audit: AuditIndex
    index: IndexTask
    checkpoint_keys: dict[str, Ed25519PublicKey]
    subjects: SubjectHasher
    subject_refs: SubjectRefs
    connectors: ConnectorRouter
    consents: ConsentStore
    tracer: trace.Tracer
    metrics: Metrics
    rate_limits: RateLimits
    jobs: JobStore
    job_files: JobFiles
    chunk_queue: ChunkQueue
    register: RegisterWriter | None  # declarations: only with the embedded register
    feed: EventFeed
    deliveries: Deliveries
    webhook_signer: WebhookSigner
    events_source: str  # the CloudEvents `source` of every life event
    readiness: dict[str, ReadinessCheck] = field(default_factory=dict)
    log_views: LogViews | None = None  # proofs and receipts over the local logs
    log_store: SegmentStore | None = None  # this process's own log
    witnesses: WitnessesFile | None = None
    witness_client: WitnessClient | None = None
    console: Console | None = None  # the officers' console


def services(request: Request) -> Services:
    app_services: Services = request.app.state.services
    return app_services
