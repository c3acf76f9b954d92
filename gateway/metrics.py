"""Prometheus metrics, one registry per app (no module-level singletons, so tests build their own)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        # OpenTelemetry semantic-convention name, in Prometheus spelling.
        self.request_duration = Histogram(
            "http_server_request_duration_seconds",
            "Duration of HTTP server requests.",
            ["http_request_method", "http_route", "http_response_status_code"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.decisions = Counter(
            "jamu_access_decisions_total",
            "Access decisions by administration, operation and decision.",
            ["administration", "operation", "decision"],
            registry=self.registry,
        )
        self.access_log_append = Histogram(
            "jamu_access_log_append_seconds",
            "Time to append one access-log event durably.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.access_log_failures = Counter(
            "jamu_access_log_failures_total",
            "Access-log appends that failed (the response was withheld or turned into 503).",
            registry=self.registry,
        )
        self.access_log_queue_depth = Gauge(
            "jamu_access_log_queue_depth",
            "Events waiting for the access-log writer.",
            registry=self.registry,
        )
        self.audit_index_lag_events = Gauge(
            "jamu_audit_index_lag_events",
            "Durable access-log entries of this process not yet in the query index (not yet searchable).",
            registry=self.registry,
        )
        self.audit_index_lag_seconds = Gauge(
            "jamu_audit_index_lag_seconds",
            "How long the oldest entry not yet in the query index has waited.",
            registry=self.registry,
        )
        self.audit_witness_lag = Gauge(
            "jamu_audit_witness_lag_seconds",
            "Seconds since the oldest signed checkpoint that has not yet reached its witness quorum (0: none).",
            registry=self.registry,
        )
        self.audit_witness_published_size = Gauge(
            "jamu_audit_witness_published_size",
            "Tree size of the last checkpoint published (cosigned by a quorum of witnesses).",
            registry=self.registry,
        )
        self.audit_witness_failures = Counter(
            "jamu_audit_witness_failures_total",
            "Witness requests that failed (unreachable, timed out, or an unexpected status).",
            ["witness"],
            registry=self.registry,
        )
        self.audit_witness_conflicts = Counter(
            "jamu_audit_witness_conflicts_total",
            "Witness answers showing another history of the log (larger size, inconsistent tree, bad cosignature).",
            ["witness"],
            registry=self.registry,
        )
        self.audit_log_refusing = Gauge(
            "jamu_audit_log_refusing",
            "1 while the access log refuses to sign or append: its tree does not extend its last checkpoint.",
            registry=self.registry,
        )
        self.access_log_batch = Histogram(
            "jamu_access_log_batch_events",
            "Events committed together in one access-log transaction (group commit).",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=self.registry,
        )
        self.access_log_commit = Histogram(
            "jamu_access_log_commit_seconds",
            "Time of one access-log transaction, flush to disk included.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )

        self.connector_duration = Histogram(
            "jamu_connector_request_duration_seconds",
            "Time of one connector fetch (retries included), by connector and outcome code.",
            ["connector", "outcome"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.connector_errors = Counter(
            "jamu_connector_errors_total",
            "Connector fetches that failed, by connector and problem code.",
            ["connector", "code"],
            registry=self.registry,
        )
        self.connector_up = Gauge(
            "jamu_connector_up",
            "1 when the connector is healthy (for remote ones: circuit breaker not open), at the last check.",
            ["connector"],
            registry=self.registry,
        )
        self.connector_breaker_state = Gauge(
            "jamu_connector_breaker_state",
            "Circuit breaker of a remote connector, read at scrape time: 0 closed, 1 half-open, 2 open.",
            ["connector"],
            registry=self.registry,
        )
        self.policy_reload_failures = Counter(
            "jamu_policy_reload_failures_total",
            "Policy reloads refused because the new set was invalid (the previous set stayed in force).",
            registry=self.registry,
        )
        self.policy_generation = Gauge(
            "jamu_policy_generation",
            "How many times the policy set in force has been replaced since start.",
            registry=self.registry,
        )

        self.ratelimit_refusals = Counter(
            "jamu_ratelimit_refusals_total",
            "Requests refused by a rate limit, by administration ('unauthenticated' for per-address limits).",
            ["administration"],
            registry=self.registry,
        )
        self.ratelimit_degraded = Gauge(
            "jamu_ratelimit_degraded",
            "1 while the shared rate-limit backend is unreachable and limits are enforced locally.",
            registry=self.registry,
        )
        self.declarations = Counter(
            "jamu_declarations_total",
            "Declarations answered, by type and outcome (accepted, rejected).",
            ["type", "outcome"],
            registry=self.registry,
        )
        self.events_delivered = Counter(
            "jamu_events_delivered_total",
            "Life events pushed and acknowledged, by receiving administration.",
            ["administration"],
            registry=self.registry,
        )
        self.events_delivery_failures = Counter(
            "jamu_events_delivery_failures_total",
            "Failed push attempts, by receiving administration.",
            ["administration"],
            registry=self.registry,
        )
        self.events_outbox_backlog = Gauge(
            "jamu_events_outbox_backlog",
            "Life events committed but not yet pushed to their subscribers.",
            registry=self.registry,
        )
        self.events_subscriptions_failing = Gauge(
            "jamu_events_subscriptions_failing",
            "Push subscriptions retrying or disabled.",
            registry=self.registry,
        )
        self.ratelimit_backend_errors = Counter(
            "jamu_ratelimit_backend_errors_total",
            "Failed or timed-out calls to the shared rate-limit backend.",
            registry=self.registry,
        )

    def labelled(self, metric: Any, *values: str) -> Any:
        """`metric.labels(*values)`, remembered: the hot path pays one dict lookup, not the client's
        validation and lock. Label values here come from bounded sets (routes, codes, administrations)."""
        key = (id(metric), values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def render(self) -> bytes:
        return generate_latest(self.registry)
