"""Alert rules over the access log: pure functions of the events, fed in log order.

Each rule counts what it watches per key (a client, a source address, a channel) over a sliding window
cut into ten buckets, and reports a `Finding` when a threshold is crossed, again at most every
`REPEAT_S` while it stays crossed (the store folds repeats into one open alert). The rules and their
thresholds come from `GATEWAY_ALERTS_FILE` (YAML, validated like the policy files), else the defaults
below (docs/console.md).

Events are read as the index holds them (`WatchedEvent`): only the fields the rules use.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.policy.catalogue import UNAUTHENTICATED

REPEAT_S = 60.0  # a crossed threshold is reported again at most this often (figures and events updated)
SAMPLE = 50  # the events an alert names: the latest of those that count towards it
MAX_PERSONS = 100_000  # distinct persons counted per client and hour (64 bits each): memory stays bounded
UNKNOWN = frozenset({"subject_not_found", "subject_suspended"})
CHECKS = frozenset({"verify", "lookup", "verify.bulk"})
PREDICATE_CHECKS = frozenset({"verify", "verify.bulk"})
CONSENT_REFUSALS = frozenset({"consent_required", "consent_invalid"})


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = True


class Enumeration(_Rule):
    """A client's share of unknown or suspended NINs among its checks."""

    window_s: int = Field(600, ge=10, le=86400)
    min_checks: int = Field(50, ge=1)
    max_unknown_share: float = Field(0.3, gt=0, le=1)


class Scraping(_Rule):
    """Distinct persons a client asked about in an hour, against its own hourly baseline."""

    min_persons: int = Field(500, ge=1)
    baseline_factor: float = Field(5.0, ge=1)
    baseline_hours: int = Field(24, ge=1, le=24 * 30)


class PredicateProbing(_Rule):
    """Checks that ask predicates only (no claim), in bulk."""

    window_s: int = Field(600, ge=10, le=86400)
    max_checks: int = Field(1000, ge=1)


class TokenFailures(_Rule):
    """Refused token requests (and refusals counted without a token) from one source address."""

    window_s: int = Field(60, ge=1, le=86400)
    max_failures: int = Field(30, ge=1)


class ConsentRefusals(_Rule):
    """A client's calls refused for a missing or invalid consent."""

    window_s: int = Field(600, ge=10, le=86400)
    max_refusals: int = Field(20, ge=1)


class HistoryQuota(_Rule):
    """A channel's access-history reads refused over its daily quota."""

    window_s: int = Field(86400, ge=60, le=7 * 86400)
    max_refusals: int = Field(1, ge=1)


class AlertRules(BaseModel):
    """`GATEWAY_ALERTS_FILE`: every rule optional (its defaults apply), unknown keys refused."""

    model_config = ConfigDict(extra="forbid")
    enumeration: Enumeration = Enumeration()
    scraping: Scraping = Scraping()
    predicate_probing: PredicateProbing = PredicateProbing()
    token_failures: TokenFailures = TokenFailures()
    consent_refusals: ConsentRefusals = ConsentRefusals()
    history_quota: HistoryQuota = HistoryQuota()


RULES = tuple(AlertRules.model_fields)


def load_alert_rules(path: Path | None) -> AlertRules:
    """The rules of a file (ValueError naming the file and the field when it is not valid), or the defaults."""
    if path is None:
        return AlertRules()
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: cannot be read as YAML: {exc}") from None
    try:
        return AlertRules.model_validate(data or {})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(file)'}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"{path}: {problems}") from None


class WatchedEvent(NamedTuple):
    """An event as the rules read it (a row of the index: lists as JSON text)."""

    id: str
    time: str
    administration: str | None
    client_id: str | None
    operation: str | None
    decision: str
    reason: str | None
    subject_hash: str | None
    attributes_requested: str
    count: int | None  # type: ignore[assignment]  # the event's field; tuple.count is never called
    source: str | None


@dataclass(frozen=True)
class Finding:
    rule: str
    key: str
    administration: str | None
    figures: dict[str, Any]
    events: list[str]
    first_seen: str
    last_seen: str


def _person_key(subject_hash: str) -> int:
    """64 bits of a subject hash (a keyed SHA-256 in hex): a person in an hour's set at a fifth of the memory."""
    try:
        return int(subject_hash[-16:], 16)
    except ValueError:
        return hash(subject_hash)


def epoch(moment: str) -> float:
    """An event's time (RFC 3339, as the log writes it) in seconds."""
    return datetime.fromisoformat(moment).timestamp()


@dataclass
class _Window:
    """Counts over a sliding window of ten buckets, and the latest events that counted."""

    buckets: dict[int, list[int]] = field(default_factory=dict)
    sample: deque[str] = field(default_factory=lambda: deque(maxlen=SAMPLE))
    first_seen: str = ""
    reported_at: float = float("-inf")

    def add(self, bucket: int, values: tuple[int, ...]) -> list[int]:
        counts = self.buckets.get(bucket)
        if counts is None:
            counts = self.buckets[bucket] = [0] * len(values)
            if len(self.buckets) > 10:
                for old in [b for b in self.buckets if b <= bucket - 10]:
                    del self.buckets[old]
        for i, value in enumerate(values):
            counts[i] += value
        totals = [0] * len(values)
        for b, counts in self.buckets.items():
            if b > bucket - 10:
                for i, value in enumerate(counts):
                    totals[i] += value
        return totals


class _Windowed:
    """One rule's windows by key; keys idle for two windows are forgotten (memory stays bounded by the
    keys active within a window)."""

    def __init__(self, rule: str, window_s: int) -> None:
        self.rule = rule
        self.step = window_s / 10
        self.windows: dict[str, _Window] = {}
        self._swept = 0

    def add(
        self, key: str, at: float, values: tuple[int, ...], event: WatchedEvent | None
    ) -> tuple[_Window, list[int]]:
        bucket = int(at // self.step)
        window = self.windows.get(key)
        if window is None:
            window = self.windows[key] = _Window()
        if bucket - self._swept >= 20:
            self._sweep(bucket)
        totals = window.add(bucket, values)
        if event is not None:
            if not window.sample or not window.first_seen:
                window.first_seen = event.time
            window.sample.append(event.id)
        return window, totals

    def _sweep(self, bucket: int) -> None:
        self._swept = bucket
        for key in [k for k, w in self.windows.items() if max(w.buckets, default=bucket) <= bucket - 20]:
            del self.windows[key]

    def due(self, window: _Window, at: float) -> bool:
        if at - window.reported_at < REPEAT_S:
            return False
        window.reported_at = at
        return True


class Evaluator:
    """Every enabled rule over one stream of events. `feed` returns the findings the events raised."""

    def __init__(self, rules: AlertRules) -> None:
        self.rules = rules
        self._enumeration = _Windowed("enumeration", rules.enumeration.window_s)
        self._probing = _Windowed("predicate_probing", rules.predicate_probing.window_s)
        self._tokens = _Windowed("token_failures", rules.token_failures.window_s)
        self._consent = _Windowed("consent_refusals", rules.consent_refusals.window_s)
        self._history = _Windowed("history_quota", rules.history_quota.window_s)
        self._hour: dict[str, tuple[int, set[int], deque[str], str]] = {}  # client: (hour, persons, sample, first)
        self._hourly: dict[str, deque[int]] = {}  # client: distinct persons in its past hours (the baseline)
        self._scrape_reported: dict[str, float] = {}
        self._closed: dict[str, int] = {}  # client: the last hour that joined its baseline
        self.baseline_version = 0  # moves when a client's hour joins its baseline (worth saving)

    def baseline(self) -> dict[str, Any]:
        """Each client's distinct persons in its past hours, and the last hour counted: what a watcher
        taking over needs and cannot replay (it replays one hour of events, not a day)."""
        return {"hours": {client: list(hours) for client, hours in self._hourly.items()}, "closed": dict(self._closed)}

    def restore_baseline(self, saved: dict[str, Any]) -> None:
        hours = self.rules.scraping.baseline_hours
        closed: dict[str, Any] = saved["closed"] if isinstance(saved.get("closed"), dict) else {}
        counted: dict[str, Any] = saved["hours"] if isinstance(saved.get("hours"), dict) else {}
        for client, counts in counted.items():
            if (
                isinstance(client, str)
                and isinstance(counts, list)
                and all(type(c) is int for c in counts)
                and type(closed.get(client)) is int
            ):
                self._hourly[client] = deque(counts[-hours:], maxlen=hours)
                self._closed[client] = closed[client]

    def feed(self, events: Iterable[WatchedEvent]) -> list[Finding]:
        found: list[Finding] = []
        r = self.rules
        for event in events:
            operation = event.operation
            at = epoch(event.time)
            client = event.client_id
            if operation in CHECKS and client is not None:
                n = event.count or 1
                if r.enumeration.enabled:
                    unknown = n if event.reason in UNKNOWN else 0
                    window, (checks, misses) = self._enumeration.add(
                        client, at, (n, unknown), event if unknown else None
                    )
                    rule = r.enumeration
                    if (
                        checks >= rule.min_checks
                        and misses >= rule.max_unknown_share * checks
                        and self._enumeration.due(window, at)
                    ):
                        found.append(
                            self._finding(
                                "enumeration",
                                client,
                                event,
                                window,
                                {
                                    "checks": checks,
                                    "unknown": misses,
                                    "share": round(misses / checks, 3),
                                    "window_s": rule.window_s,
                                    "threshold": rule.max_unknown_share,
                                },
                            )
                        )
                if (
                    r.predicate_probing.enabled
                    and operation in PREDICATE_CHECKS
                    and event.attributes_requested == "[]"
                    and event.decision == "permit"
                ):
                    window, (probes,) = self._probing.add(client, at, (n,), event)
                    if probes > r.predicate_probing.max_checks and self._probing.due(window, at):
                        found.append(
                            self._finding(
                                "predicate_probing",
                                client,
                                event,
                                window,
                                {
                                    "predicate_only_checks": probes,
                                    "window_s": r.predicate_probing.window_s,
                                    "threshold": r.predicate_probing.max_checks,
                                },
                            )
                        )
                if r.scraping.enabled and event.subject_hash is not None and operation != "verify.bulk":
                    finding = self._scraping(client, event, at)
                    if finding is not None:
                        found.append(finding)
            if r.consent_refusals.enabled and event.reason in CONSENT_REFUSALS and client is not None:
                window, (refusals,) = self._consent.add(client, at, (1,), event)
                if refusals >= r.consent_refusals.max_refusals and self._consent.due(window, at):
                    found.append(
                        self._finding(
                            "consent_refusals",
                            client,
                            event,
                            window,
                            {
                                "refusals": refusals,
                                "window_s": r.consent_refusals.window_s,
                                "threshold": r.consent_refusals.max_refusals,
                            },
                        )
                    )
            if (
                r.token_failures.enabled
                and event.source is not None
                and event.decision == "deny"
                and (operation == "token" or operation == UNAUTHENTICATED)
            ):
                window, (failures,) = self._tokens.add(event.source, at, (event.count or 1,), event)
                if failures >= r.token_failures.max_failures and self._tokens.due(window, at):
                    found.append(
                        self._finding(
                            "token_failures",
                            event.source,
                            event,
                            window,
                            {
                                "failures": failures,
                                "window_s": r.token_failures.window_s,
                                "threshold": r.token_failures.max_failures,
                            },
                        )
                    )
            if (
                r.history_quota.enabled
                and operation == "subject.history"
                and event.reason == "rate_limited"
                and event.administration is not None
            ):
                window, (refused,) = self._history.add(event.administration, at, (1,), event)
                if refused >= r.history_quota.max_refusals and self._history.due(window, at):
                    found.append(
                        self._finding(
                            "history_quota",
                            event.administration,
                            event,
                            window,
                            {
                                "refused_reads": refused,
                                "window_s": r.history_quota.window_s,
                                "threshold": r.history_quota.max_refusals,
                            },
                        )
                    )
        return found

    def _scraping(self, client: str, event: WatchedEvent, at: float) -> Finding | None:
        rule = self.rules.scraping
        hour = int(at // 3600)
        current = self._hour.get(client)
        if current is None or current[0] != hour:
            closed = self._closed.get(client)
            if current is not None and (closed is None or current[0] > closed):
                # The past hour joins the baseline (and hours with nobody asked); an hour counted before a
                # take-over (and replayed in part since) is not counted again.
                past = self._hourly.setdefault(client, deque(maxlen=rule.baseline_hours))
                since = current[0] - 1 if closed is None else closed
                past.extend([0] * min(rule.baseline_hours, max(0, current[0] - since - 1)))
                past.append(len(current[1]))
                self._closed[client] = current[0]
                self.baseline_version += 1
            current = (hour, set(), deque(maxlen=SAMPLE), event.time)
            self._hour[client] = current
        persons = current[1]
        person = _person_key(event.subject_hash)  # type: ignore[arg-type]
        if person in persons or len(persons) >= MAX_PERSONS:
            return None
        persons.add(person)
        current[2].append(event.id)
        distinct = len(persons)
        if distinct < rule.min_persons:
            return None
        hours = self._hourly.get(client)
        baseline = sum(hours) / len(hours) if hours else 0.0
        if distinct <= rule.baseline_factor * baseline:
            return None
        if at - self._scrape_reported.get(client, float("-inf")) < REPEAT_S:
            return None
        self._scrape_reported[client] = at
        return Finding(
            "scraping",
            client,
            event.administration,
            {
                "distinct_persons": distinct,
                "baseline_per_hour": round(baseline, 1),
                "baseline_hours": len(hours or ()),
                "factor": rule.baseline_factor,
                "min_persons": rule.min_persons,
            },
            list(current[2]),
            current[3],
            event.time,
        )

    @staticmethod
    def _finding(rule: str, key: str, event: WatchedEvent, window: _Window, figures: dict[str, Any]) -> Finding:
        return Finding(
            rule, key, event.administration, figures, list(window.sample), window.first_seen or event.time, event.time
        )
