"""Traces and structured logs.

Tracing follows the standard `OTEL_*` variables and is off unless they ask for it
(`OTEL_TRACES_EXPORTER=otlp|console` or an `OTEL_EXPORTER_OTLP_*ENDPOINT`): then spans go to OTLP over
HTTP (or the console), sampled as `OTEL_TRACES_SAMPLER` says (default: parent-based, always on), FastAPI
and httpx are instrumented, and each stage of a request has its span. Off, nothing is instrumented and the
stages' tracer hands out one shared do-nothing context: no span objects, no context switching.

Logs are one JSON object a line with the request's trace id. No stage logs a NIN, no span attribute or
metric label carries one.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import sys
from datetime import UTC, datetime
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor

# The current request's trace id, for log lines written outside any span.
request_trace_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_trace_id", default=None)


def tracing_requested(env: dict[str, str] | os._Environ[str] = os.environ) -> bool:
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    exporters = env.get("OTEL_TRACES_EXPORTER")
    if exporters is not None:
        return exporters.strip().lower() not in ("", "none")
    return bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def tracer_provider() -> TracerProvider | None:
    """A provider per the environment, or None when tracing is off."""
    if not tracing_requested():
        return None
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "jamu-gateway")})
    provider = TracerProvider(resource=resource)
    for name in os.environ.get("OTEL_TRACES_EXPORTER", "otlp").split(","):
        name = name.strip().lower()
        if name == "console":
            provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(out=sys.stdout)))
        elif name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


_NO_SPAN = contextlib.nullcontext(trace.INVALID_SPAN)


class OffTracer(trace.NoOpTracer):
    """The tracer while tracing is off. The API's no-op tracer still builds a span and swaps the context
    for each stage (about 10 µs a stage, five stages a request); this returns one shared empty context."""

    def start_as_current_span(self, *_args: Any, **_kwargs: Any) -> Any:
        return _NO_SPAN


def tracer_for(provider: TracerProvider | None) -> trace.Tracer:
    return provider.get_tracer("jamu.gateway") if provider is not None else OffTracer()


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, trace and span ids, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            entry["trace_id"] = format(context.trace_id, "032x")
            entry["span_id"] = format(context.span_id, "016x")
        elif (trace_id := request_trace_id.get()) is not None:
            entry["trace_id"] = trace_id
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def logging_config(fmt: str = "json", level: str = "INFO") -> dict[str, Any]:
    """dictConfig for the gateway and uvicorn's own loggers alike."""
    formatter = (
        {"()": "gateway.observability.JsonFormatter"}
        if fmt == "json"
        else {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "handlers": {
            "default": {"class": "logging.StreamHandler", "formatter": "default", "stream": "ext://sys.stderr"}
        },
        "root": {"handlers": ["default"], "level": level},
        "loggers": {
            name: {"handlers": [], "propagate": True} for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
        },
    }
