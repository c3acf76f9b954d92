"""The console's pure parts: alert rules and their file, the sign-in rules (TOTP steps, lockout, roles),
what each role may see, the overview's arithmetic, the language choice and the export's cells."""

from __future__ import annotations

import asyncio
import csv
import io
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyotp
import pytest

from gateway.audit.record import rfc3339
from gateway.audit.rows import EventFilter
from gateway.console.accounts import (
    LOCKOUT_S,
    AccountError,
    TotpSeal,
    after_failure,
    check_role,
    totp_step,
)
from gateway.console.alerts import REPEAT_S, AlertRules, Evaluator, WatchedEvent, load_alert_rules
from gateway.console.i18n import pick, translator
from gateway.console.overview import HOUR_FORMAT, rates_chart, summarise, volume_chart
from gateway.console.sessions import IDLE_S, MAX_S, Session, expired
from gateway.console.web import Refused, _export_rows, may_see, scope_of, search_filter

T0 = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
_ids = iter(range(10**9))


def event(
    seconds: float,
    *,
    client: str | None = "app",
    operation: str = "verify",
    decision: str = "permit",
    reason: str | None = None,
    subject: str | None = None,
    claims: str = '["family_name"]',
    count: int | None = None,
    source: str | None = None,
    administration: str | None = "ceni",
) -> WatchedEvent:
    return WatchedEvent(
        f"ev-{next(_ids)}",
        rfc3339(T0 + timedelta(seconds=seconds)),
        administration,
        client,
        operation,
        decision,
        reason,
        subject if subject is not None else f"s{next(_ids)}",
        claims,
        count,
        source,
    )


def rules(text: str) -> AlertRules:
    return AlertRules.model_validate(__import__("yaml").safe_load(text))


# ---- the rules file -----------------------------------------------------------------------------------------


def test_without_a_file_the_built_in_thresholds_apply() -> None:
    assert load_alert_rules(None) == AlertRules()
    assert AlertRules().enumeration.min_checks == 50


def test_a_rules_file_is_validated_like_a_policy_file(tmp_path: Path) -> None:
    good = tmp_path / "alerts.yaml"
    good.write_text("enumeration: {min_checks: 10}\nscraping: {enabled: false}\n")
    loaded = load_alert_rules(good)
    assert loaded.enumeration.min_checks == 10 and loaded.enumeration.window_s == 600
    assert not loaded.scraping.enabled
    for text, named in (
        ("enumeraton: {}\n", "enumeraton"),
        ("token_failures: {max_failures: 0}\n", "max_failures"),
        ("consent_refusals: {window_s: ten}\n", "window_s"),
        ("- a\n- b\n", "(file)"),
        ("enumeration: {min_checks: 5, extra: 1}\n", "extra"),
    ):
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        with pytest.raises(ValueError, match=named) as raised:
            load_alert_rules(bad)
        assert str(bad) in str(raised.value)
    broken = tmp_path / "broken.yaml"
    broken.write_text("enumeration: [\n")
    with pytest.raises(ValueError, match="YAML"):
        load_alert_rules(broken)


# ---- the rules ------------------------------------------------------------------------------------------------

ENUM = "enumeration: {window_s: 600, min_checks: 20, max_unknown_share: 0.3}"


def test_enumeration_is_a_clients_share_of_unknown_nins() -> None:
    evaluator = Evaluator(rules(ENUM))
    normal = [event(i, reason="subject_not_found" if i % 10 == 0 else None) for i in range(200)]
    assert evaluator.feed(normal) == []  # 10 % unknown: an ordinary day
    probing = [event(300 + i, client="prober", reason="subject_not_found" if i % 2 else None) for i in range(40)]
    found = evaluator.feed(probing)
    assert [f.rule for f in found] == ["enumeration"]
    finding = found[0]
    assert finding.key == "prober" and finding.administration == "ceni"
    assert finding.figures["checks"] == 20 and finding.figures["unknown"] == 10
    assert set(finding.events) <= {e.id for e in probing if e.reason}
    assert finding.first_seen <= finding.last_seen


def test_a_finding_repeats_at_most_once_a_minute_while_its_threshold_holds() -> None:
    evaluator = Evaluator(rules(ENUM))
    first = evaluator.feed(event(i, client="p", reason="subject_suspended") for i in range(30))
    again = evaluator.feed(event(30 + i, client="p", reason="subject_not_found") for i in range(20))
    later = evaluator.feed([event(30 + REPEAT_S + 1, client="p", reason="subject_not_found")])
    assert len(first) == 1 and again == [] and len(later) == 1
    assert later[0].figures["checks"] > first[0].figures["checks"]


def test_a_window_slides_past_old_events() -> None:
    evaluator = Evaluator(rules("token_failures: {window_s: 60, max_failures: 10}"))
    spread = [event(i * 10, operation="token", decision="deny", source="10.0.0.1", client=None) for i in range(30)]
    assert evaluator.feed(spread) == []  # 6 a minute, never 10
    burst = [event(400 + i, operation="token", decision="deny", source="10.0.0.1", client=None) for i in range(10)]
    assert [f.key for f in evaluator.feed(burst)] == ["10.0.0.1"]


def test_token_failures_count_per_source_and_counted_refusals_by_their_count() -> None:
    evaluator = Evaluator(rules("token_failures: {window_s: 60, max_failures: 50}"))
    mixed = [event(i, operation="token", decision="deny", source=f"10.0.0.{i % 5}", client=None) for i in range(40)]
    assert evaluator.feed(mixed) == []
    counted = [
        event(
            50,
            operation="unauthenticated",
            decision="deny",
            source="192.0.2.7",
            client=None,
            reason="rate_limited",
            count=60,
        )
    ]
    found = evaluator.feed(counted)
    assert [(f.rule, f.key, f.figures["failures"]) for f in found] == [("token_failures", "192.0.2.7", 60)]


def test_scraping_is_distinct_persons_far_above_the_clients_own_baseline() -> None:
    evaluator = Evaluator(rules("scraping: {min_persons: 100, baseline_factor: 5}"))
    for hour in range(6):  # 50 persons an hour, a busy client's ordinary day
        ordinary = [event(hour * 3600 + i * 60, client="busy", subject=f"h{hour}p{i}") for i in range(50)]
        assert evaluator.feed(ordinary) == []
    assert evaluator.feed(event(6 * 3600 + i, client="busy", subject=f"x{i}") for i in range(240)) == []  # 4.8x
    found = evaluator.feed(event(6 * 3600 + 300 + i, client="busy", subject=f"y{i}") for i in range(20))
    assert [f.rule for f in found] == ["scraping"]
    assert found[0].figures["baseline_per_hour"] == 50.0 and found[0].figures["distinct_persons"] == 251
    # Asking the same people again is not scraping.
    steady = Evaluator(rules("scraping: {min_persons: 100}"))
    assert steady.feed(event(i, client="c", subject=f"p{i % 80}") for i in range(2000)) == []


def test_predicate_probing_counts_checks_without_claims() -> None:
    evaluator = Evaluator(rules("predicate_probing: {window_s: 600, max_checks: 100}"))
    assert evaluator.feed(event(i, client="c") for i in range(300)) == []  # claims asked: not probing
    found = evaluator.feed(event(i, client="c", claims="[]", operation="verify.bulk") for i in range(101))
    assert [f.rule for f in found] == ["predicate_probing"]


def test_consent_refusals_and_history_reads_over_quota() -> None:
    evaluator = Evaluator(rules("consent_refusals: {window_s: 600, max_refusals: 5}"))
    found = evaluator.feed(
        [
            *(event(i, decision="deny", reason="consent_invalid") for i in range(5)),
            event(
                10,
                operation="subject.history",
                decision="deny",
                reason="rate_limited",
                administration="channel",
                client="channel-app",
            ),
        ]
    )
    assert sorted((f.rule, f.key) for f in found) == [("consent_refusals", "app"), ("history_quota", "channel")]


def test_a_disabled_rule_raises_nothing() -> None:
    evaluator = Evaluator(rules(ENUM.replace("max_unknown_share: 0.3", "max_unknown_share: 0.3, enabled: false")))
    assert evaluator.feed(event(i, reason="subject_not_found") for i in range(100)) == []


# ---- sign-in -------------------------------------------------------------------------------------------------


def test_a_totp_code_of_this_step_or_the_last_signs_in_once() -> None:
    secret = pyotp.random_base32()
    totp = pyotp.TOTP(secret)
    now = 1_800_000_015.0
    step = int(now // 30)
    assert totp_step(totp.at(now), secret, now, 0) == step
    assert totp_step(totp.at(now - 30), secret, now, 0) == step - 1
    assert totp_step(totp.at(now - 60), secret, now, 0) is None
    assert totp_step(totp.at(now + 30), secret, now, 0) is None
    assert totp_step(totp.at(now), secret, now, step) is None  # used already
    for code in ("", "12345", "1234567", "\uff11\uff12\uff13\uff14\uff15\uff16", "12345a"):
        assert totp_step(code, secret, now, 0) is None


def test_five_failures_within_fifteen_minutes_lock_for_fifteen_minutes() -> None:
    failures, first, locked = 0, None, None
    for n in range(4):
        failures, first, locked = after_failure(failures, first, 1000.0 + n)
        assert locked is None
    failures, first, locked = after_failure(failures, first, 1100.0)
    assert failures == 5 and locked == 1100.0 + LOCKOUT_S
    # Failures older than the window are forgotten.
    failures, first, locked = after_failure(4, 1000.0, 1000.0 + LOCKOUT_S + 1)
    assert failures == 1 and locked is None


def test_roles_and_administrations() -> None:
    check_role("dpo", "ceni")
    check_role("officer", None)
    for role, administration in (("dpo", None), ("officer", "ceni"), ("admin", None), ("dpo", "Bad Id")):
        with pytest.raises(AccountError):
            check_role(role, administration)


def test_a_sealed_totp_secret_opens_for_its_own_login_only() -> None:
    seal = TotpSeal(b"k" * 32)
    sealed = seal.seal("awa", "JBSWY3DPEHPK3PXP")
    assert seal.open("awa", sealed) == "JBSWY3DPEHPK3PXP"
    with pytest.raises(Exception):  # noqa: B017 (cryptography's InvalidTag)
        seal.open("bintou", sealed)


def test_sessions_end_after_15_idle_minutes_or_8_hours() -> None:
    assert not expired(0, 0, IDLE_S)
    assert expired(0, 0, IDLE_S + 1)
    assert expired(0, MAX_S, MAX_S + 1)


# ---- what each role may see ----------------------------------------------------------------------------------


def session(role: str, administration: str | None = None) -> Session:
    return Session("h", "login", role, administration, "csrf-token", 0.0, 0.0)


def test_a_dpo_is_held_to_its_administration_and_only_a_dpa_sees_officers() -> None:
    assert scope_of(session("dpo", "ceni")) == ("ceni", ("console.",))
    assert scope_of(session("dpo", "ceni"), "ceni") == ("ceni", ("console.",))
    with pytest.raises(Refused) as refused:
        scope_of(session("dpo", "ceni"), "canam")
    assert refused.value.status == 403
    assert scope_of(session("officer"), "canam") == ("canam", ("console.",))
    assert scope_of(session("dpa")) == (None, ())
    own = {"operation": "verify", "administration": "ceni"}
    officers = {"operation": "console.person", "administration": None}
    assert may_see(session("dpo", "ceni"), own) and not may_see(session("dpo", "canam"), own)
    assert not may_see(session("officer"), officers) and may_see(session("dpa"), officers)


def test_the_search_form_is_checked_and_held_to_the_role() -> None:
    where, asked = search_filter(session("dpo", "ceni"), {"decision": "deny", "since": "2026-12-01T10:00"})
    assert where == EventFilter(
        administration="ceni", decision="deny", since="2026-12-01T10:00:00.000000Z", hidden_prefixes=("console.",)
    )
    assert asked == {"decision": "deny", "since": "2026-12-01T10:00"}
    for params in (
        {"decision": "maybe"},
        {"operation": "drop table"},
        {"since": "yesterday"},
        {"client_id": "a\x00b"},
        {"until": "99999-01-01T00:00"},
    ):
        with pytest.raises(Refused):
            search_filter(session("officer"), params)
    with pytest.raises(Refused) as refused:
        search_filter(session("officer"), {"operation": "console.login"})
    assert refused.value.status == 403
    assert search_filter(session("dpa"), {"operation": "console.login"})[0].operation == "console.login"


# ---- overview, language, export ------------------------------------------------------------------------------


def test_the_overview_sums_hours_into_rates_per_administration() -> None:
    now = T0
    hour = now.strftime(HOUR_FORMAT)
    old = (now - timedelta(days=3)).strftime(HOUR_FORMAT)
    # (hour, administration, events, denied, checks, unknown), as rollup_rows sums them
    rows = [
        (hour, "ceni", 125, 25, 100, 20),
        (old, "ceni", 75, 75, 75, 0),
        ((now - timedelta(days=9)).strftime(HOUR_FORMAT), "ceni", 1000, 0, 1000, 0),
    ]
    view = summarise(rows, now)
    day, week = view.day["ceni"], view.week["ceni"]
    assert (day.events, day.denied, day.checks, day.unknown) == (125, 25, 100, 20)
    assert day.deny_rate == 0.2 and day.unknown_rate == 0.2
    assert (week.events, week.denied, week.checks) == (200, 100, 175)
    assert view.hourly["ceni"][-1] == 125 and sum(view.daily["ceni"]) == 200
    svg = volume_chart("Volumes", [h[11:] for h in view.hours], view.hourly, area=True)
    assert svg.startswith("<svg") and 'aria-label="Volumes"' in svg and "<script" not in svg
    assert "<script" not in rates_chart("Refus", view.day, view.week, "deny_rate", ("24 h", "7 j"))


def test_the_language_is_the_query_then_the_cookie_then_the_browser_then_french() -> None:
    assert pick("en", "fr", "fr") == "en"
    assert pick(None, "en", "fr") == "en"
    assert pick(None, None, "de-DE,en;q=0.8") == "en"
    assert pick("xx", None, "de") == "fr"
    assert translator("en")("overview") == "Overview" and translator("fr")("overview") == "Vue d'ensemble"
    assert translator("en")("no.such.key") == "no.such.key"


class _Index:
    def __init__(self, events: list[dict[str, Any]]) -> None:
        self._events = events

    async def latest(self, where: EventFilter, before: Any, limit: int) -> tuple[list[dict[str, Any]], Any]:
        start = 0 if before is None else before
        page = self._events[start : start + limit]
        return page, start + len(page)


def test_the_export_streams_every_page_and_neutralises_formulas() -> None:
    hostile = [
        {
            "origin": "o",
            "seq": n,
            "id": f"id-{n}",
            "time": "t",
            "client_id": '=HYPERLINK("x")' if n == 0 else "app",
            "reason": "+1" if n == 1 else None,
            "attributes_requested": ["-a"],
            "evidence": None,
        }
        for n in range(2500)
    ]

    async def collect(fmt: str) -> bytes:
        return b"".join([chunk async for chunk in _export_rows(_Index(hostile), EventFilter(), fmt)])  # type: ignore[arg-type]

    rows = list(csv.DictReader(io.StringIO(asyncio.run(collect("csv")).decode())))
    assert len(rows) == 2500
    assert rows[0]["client_id"] == '\'=HYPERLINK("x")' and rows[1]["reason"] == "'+1"
    assert rows[2]["attributes_requested"] == "'-a"
    assert len(asyncio.run(collect("jsonl")).splitlines()) == 2500


def test_exports_run_one_per_officer_and_two_in_all() -> None:
    from gateway.console import ExportSlots

    slots = ExportSlots(most=2, stale_s=60)
    first = slots.take("awa")
    assert first is not None and slots.take("awa") is None
    assert slots.take("bintou") is not None and slots.take("coumba") is None
    slots.give_back(first)
    assert slots.take("coumba") is not None
    stale = ExportSlots(most=1, stale_s=0)
    assert stale.take("awa") is not None and stale.take("bintou") is not None  # a slot its reader left expires


def test_the_integrity_walk_runs_once_at_a_time_and_is_reused() -> None:
    from gateway.console import IntegrityRuns

    async def scenario() -> list[int]:
        runs = IntegrityRuns(max_age_s=60)
        walks: list[int] = []

        async def walk() -> dict[str, Any]:
            walks.append(1)
            await asyncio.sleep(0.05)
            return {"ok": True}

        await runs.latest(walk, wait_s=0)  # started, not waited for
        assert runs.running and runs.report is None
        await runs.latest(walk, wait_s=1)  # the same walk, waited for
        await runs.latest(walk, wait_s=1)  # fresh: reused
        assert runs.report == {"ok": True} and not runs.running
        return walks

    assert asyncio.run(scenario()) == [1]


def test_a_take_over_does_not_count_an_hour_twice_in_a_baseline() -> None:
    evaluator = Evaluator(rules("scraping: {min_persons: 1000}"))
    hour = int(T0.timestamp() // 3600)
    evaluator.restore_baseline({"hours": {"app": [100, 100, 100]}, "closed": {"app": hour - 1}})
    # The replay after a take-over starts inside the hour already counted, then crosses into the next.
    evaluator.feed([event(-600, subject="a" * 64), event(-300, subject="b" * 64), event(300, subject="c" * 64)])
    assert evaluator.baseline()["hours"] == {"app": [100, 100, 100]}
    evaluator.feed([event(3600 + 1, subject="d" * 64)])  # the next hour ends the one after the replay
    assert evaluator.baseline()["hours"] == {"app": [100, 100, 100, 1]}
    assert evaluator.baseline()["closed"] == {"app": hour}


def test_every_figure_an_alert_names_has_words_in_both_languages() -> None:
    evaluator = Evaluator(
        rules("""
enumeration: {min_checks: 5, max_unknown_share: 0.5}
scraping: {min_persons: 5}
predicate_probing: {max_checks: 5}
token_failures: {max_failures: 5}
consent_refusals: {max_refusals: 5}
""")
    )
    found = evaluator.feed(
        [
            *(event(i, client="e", reason="subject_not_found") for i in range(10)),
            *(event(i, client="s") for i in range(10)),
            *(event(i, client="p", claims="[]") for i in range(10)),
            *(event(i, client=None, operation="token", decision="deny", source="10.0.0.9") for i in range(10)),
            *(event(i, client="c", decision="deny", reason="consent_required") for i in range(10)),
            event(1, operation="subject.history", decision="deny", reason="rate_limited", administration="ch"),
        ]
    )
    assert {f.rule for f in found} == set(AlertRules.model_fields)
    for lang in ("fr", "en"):
        t = translator(lang)
        for finding in found:
            assert t(f"rule.{finding.rule}") != f"rule.{finding.rule}"
            for key in finding.figures:
                assert t(f"figure.{key}") != f"figure.{key}", (lang, key)
