"""The console's stores on SQLite and on PostgreSQL: local accounts (sign-in, lockout, reset, disable),
sessions, alerts (one open per rule and key, notes, replays dropped), the alert watcher over the index
(its lease), and the index's hourly counts."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyotp
import pytest
from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.audit.index import ROW_COLUMNS, IndexFollower, forget_origin
from gateway.audit.record import AccessRecord, rfc3339
from gateway.console.accounts import MAX_FAILURES, AccountChanges, AccountError, OfficerStore, TotpSeal
from gateway.console.alerts import AlertRules, Finding
from gateway.console.overview import rollup_rows
from gateway.console.sessions import IDLE_S, SessionStore
from gateway.console.watch import AlertStore, AlertWatcher, LeaseLost
from gateway.storage.database import WRITER
from gateway.storage.tables import (
    audit_index,
    audit_rollup,
    console_account_changes,
    console_officers,
    console_sessions,
    console_watcher,
)
from tests.contract.test_audit_index import _log

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def engine(migrated_engine: AsyncEngine) -> AsyncEngine:
    return migrated_engine


def totp(uri: str) -> pyotp.TOTP:
    return pyotp.parse_uri(uri)  # type: ignore[return-value]


async def test_accounts_sign_in_lock_reset_and_disable(engine: AsyncEngine) -> None:
    store = OfficerStore(engine, TotpSeal(b"s" * 32))
    awa = await store.add("awa", "officer")
    with pytest.raises(AccountError):
        await store.add("awa", "dpa")
    with pytest.raises(AccountError):
        await store.add("Awa Traoré", "officer")
    dpo = await store.add("dpo-ceni", "dpo", "ceni")
    now = time.time()
    ok = await store.sign_in("awa", awa.password, totp(awa.otpauth_uri).at(now), now)
    assert ok.outcome == "ok" and ok.officer is not None and ok.officer.role == "officer"
    replayed = await store.sign_in("awa", awa.password, totp(awa.otpauth_uri).at(now), now)
    assert replayed.outcome == "invalid"  # a code signs in once
    assert (await store.sign_in("nobody", "x", "123456", now)).officer is None
    code = totp(dpo.otpauth_uri).at(now)
    attempts = [await store.sign_in("dpo-ceni", "wrong", code, now + n) for n in range(MAX_FAILURES)]
    assert [a.locked_now for a in attempts] == [False] * (MAX_FAILURES - 1) + [True]
    assert (await store.sign_in("dpo-ceni", dpo.password, code, now + 10)).outcome == "locked"
    fresh = await store.reset("dpo-ceni")
    assert (
        await store.sign_in("dpo-ceni", dpo.password, totp(fresh.otpauth_uri).at(now), now + 20)
    ).outcome == "invalid"
    signed = await store.sign_in("dpo-ceni", fresh.password, totp(fresh.otpauth_uri).at(now + 30), now + 30)
    assert signed.outcome == "ok" and signed.officer is not None and signed.officer.administration == "ceni"
    await store.set_disabled("awa", True)
    assert (
        await store.sign_in("awa", awa.password, totp(awa.otpauth_uri).at(now + 60), now + 60)
    ).outcome == "disabled"
    assert [(o.login, o.disabled) for o in await store.list()] == [("awa", True), ("dpo-ceni", False)]
    with pytest.raises(AccountError):
        await store.reset("nobody")


async def test_sessions_live_idle_and_end(engine: AsyncEngine) -> None:
    store = SessionStore(engine)
    value = await store.create("awa", "officer", None)
    session = await store.get(value)
    assert session is not None and session.login == "awa" and session.search is None
    assert session.csrf_ok(session.csrf) and not session.csrf_ok("forged") and not session.csrf_ok(None)
    assert await store.get("forged-value") is None and await store.get(None) is None
    handle = await store.remember_search(session, "f" * 64, "plainte")
    again = await store.get(value)
    assert again is not None and again.search == {"handle": handle, "subject_hash": "f" * 64, "reason": "plainte"}
    assert await store.get(value, now=time.time() + IDLE_S + 5) is None  # idle too long: gone for good
    assert await store.get(value) is None
    other = await store.create("bintou", "dpa", None)
    await store.end(other)
    assert await store.get(other) is None
    async with engine.connect() as connection:
        stored = list(await connection.execute(select(console_sessions.c.id_hash)))
    assert all(row.id_hash != other for row in stored)  # only hashes are kept


def finding(last: str, rule: str = "enumeration", key: str = "app", events: tuple[str, ...] = ("e1",)) -> Finding:
    return Finding(rule, key, "ceni", {"checks": 10}, list(events), last, last)


async def test_one_open_alert_per_rule_and_key_and_notes_on_every_action(engine: AsyncEngine) -> None:
    store = AlertStore(engine)
    assert await store.record([finding("2026-12-01T10:00:00.000000Z")]) == 1
    assert await store.record([finding("2026-12-01T10:01:00.000000Z", events=("e2",))]) == 0
    [alert] = await store.list()
    assert alert.events == ["e1", "e2"] and alert.last_seen == "2026-12-01T10:01:00.000000Z"
    assert await store.count_open() == 1 and await store.count_open("canam") == 0
    assert await store.act(alert.id, "awa", "acknowledge", "vu")
    assert await store.record([finding("2026-12-01T10:02:00.000000Z")]) == 0  # still the same alert
    assert await store.act(alert.id, "awa", "close", "clos")
    assert not await store.act(alert.id, "awa", "close", "again")
    closed = await store.get(alert.id)
    assert closed is not None and closed.status == "closed"
    assert [(n["action"], n["note"], n["login"]) for n in closed.notes] == [
        ("acknowledge", "vu", "awa"),
        ("close", "clos", "awa"),
    ]
    assert await store.record([finding("2026-12-01T10:02:00.000000Z")]) == 0  # a replay of what was closed
    assert await store.record([finding("2026-12-01T11:00:00.000000Z")]) == 1  # new events: a new alert
    assert len(await store.list(statuses=("open", "acknowledged", "closed"))) == 2
    assert await store.list(administration="canam") == []


def _row(origin: str, seq: int, **fields: object) -> dict[str, object]:
    row: dict[str, object] = {name: None for name in ROW_COLUMNS}
    row.update(
        origin=origin,
        seq=seq,
        id=f"00000000-0000-4000-8000-{seq:012d}",
        time=rfc3339(datetime.now(UTC)),
        attributes_requested='["family_name"]',
        attributes_released="[]",
        decision="permit",
        status=200,
        latency_ms=1.0,
        prev_hash="0" * 64,
        hash="0" * 64,
        operation="verify",
        client_id="prober",
        administration="ceni",
        subject_hash=f"{seq:064x}",
    )
    row.update(fields)
    return row


async def test_the_watcher_follows_the_index_under_one_lease(engine: AsyncEngine) -> None:
    rules = AlertRules.model_validate({"enumeration": {"window_s": 600, "min_checks": 20, "max_unknown_share": 0.5}})
    store = AlertStore(engine)
    first = AlertWatcher(engine, rules, store, "first", batch=7)
    second = AlertWatcher(engine, rules, store, "second", batch=7)
    assert await first.step() is False  # an empty index: it takes the lease and waits
    async with engine.execution_options(**WRITER).begin() as connection:
        await connection.execute(
            insert(audit_index), [_row("o", n, reason="subject_not_found" if n % 2 else None) for n in range(30)]
        )
    while await first.step():
        pass
    assert first.evaluated == 30
    [alert] = await store.list()
    assert alert.rule == "enumeration" and alert.key == "prober" and alert.figures["checks"] >= 20
    assert await second.step() is False and second.evaluated == 0  # the lease is held
    await first.close()  # gives the lease back
    async with engine.execution_options(**WRITER).begin() as connection:
        await connection.execute(insert(audit_index), [_row("o", 30 + n) for n in range(5)])
    await second.step()
    assert second.evaluated == 5  # from where the first stopped, its last hour replayed without raising again
    assert len(await store.list()) == 1


async def test_the_index_keeps_hourly_counts_with_its_rows(engine: AsyncEngine, tmp_path: Path) -> None:
    size = await _log(tmp_path / "a", 250)
    follower = IndexFollower(engine, tmp_path / "a", batch=64)
    await follower.catch_up()
    async with engine.connect() as connection:
        expected = dict(
            (tuple(r[:2]), r[2])
            for r in await connection.execute(
                select(audit_index.c.administration, audit_index.c.decision, func.count()).group_by(
                    audit_index.c.administration, audit_index.c.decision
                )
            )
        )
    rows = await rollup_rows(engine, "2000-01-01T00", None, None)
    events: dict[str, int] = {}
    denied: dict[str, int] = {}
    for _, administration, count, deny, checks, unknown in rows:
        assert checks == count and unknown == 0  # every event a verification, none of an unknown NIN
        events[administration] = events.get(administration, 0) + count
        denied[administration] = denied.get(administration, 0) + deny
    assert events == {a: expected[(a, "permit")] + expected[(a, "deny")] for a in ("ceni", "canam")}
    assert denied == {a: expected[(a, "deny")] for a in ("ceni", "canam")} and sum(events.values()) == size
    assert {r[1] for r in await rollup_rows(engine, "2000-01-01T00", "ceni", None)} == {"ceni"}
    assert await rollup_rows(engine, "2000-01-01T00", None, "verify") == []  # an operation hidden
    assert await rollup_rows(engine, "2999-01-01T00", None, None) == []
    await forget_origin(engine, follower.origin)
    async with engine.connect() as connection:
        assert await connection.scalar(select(func.count()).select_from(audit_rollup)) == 0


async def test_the_watcher_survives_a_lease_taken_over_while_it_slept(engine: AsyncEngine) -> None:
    store = AlertStore(engine)
    watcher = AlertWatcher(engine, AlertRules(), store, "a", lease_s=0.2)
    other = AlertWatcher(engine, AlertRules(), store, "b", lease_s=30)
    await watcher.step()
    await asyncio.sleep(0.3)
    await other.step()  # the lease ran out: b holds it now
    assert await watcher.step() is False and watcher.position is None
    assert other.position is not None


async def test_a_watcher_starting_over_rebuilds_its_windows_without_counting_twice(engine: AsyncEngine) -> None:
    rules = AlertRules.model_validate({"consent_refusals": {"window_s": 600, "max_refusals": 20}})
    store = AlertStore(engine)
    watcher = AlertWatcher(engine, rules, store, "w")
    await watcher.step()
    async with engine.execution_options(**WRITER).begin() as connection:
        await connection.execute(
            insert(audit_index),
            [_row("o", n, decision="deny", reason="consent_invalid", status=403) for n in range(15)],
        )
    await watcher.step()
    assert watcher.evaluated == 15 and await store.list() == []
    watcher.position = None  # as after a failure: it starts over from its recorded place
    await watcher.step()
    async with engine.execution_options(**WRITER).begin() as connection:
        await connection.execute(
            insert(audit_index),
            [_row("o", 15 + n, decision="deny", reason="consent_invalid", status=403) for n in range(4)],
        )
    await watcher.step()
    assert await store.list() == []  # 19 refusals, not 15 + 15 + 4
    async with engine.execution_options(**WRITER).begin() as connection:
        await connection.execute(
            insert(audit_index), [_row("o", 19, decision="deny", reason="consent_invalid", status=403)]
        )
    await watcher.step()
    assert [a.rule for a in await store.list()] == ["consent_refusals"]


async def test_a_watcher_that_lost_its_lease_records_nothing(engine: AsyncEngine) -> None:
    rules = AlertRules.model_validate({"enumeration": {"window_s": 600, "min_checks": 5, "max_unknown_share": 0.5}})
    store = AlertStore(engine)
    slow = AlertWatcher(engine, rules, store, "slow")
    await slow.step()
    async with engine.execution_options(**WRITER).begin() as connection:
        await connection.execute(insert(audit_index), [_row("o", n, reason="subject_not_found") for n in range(10)])
    original = slow._read

    async def read_then_lose(after: int, limit: int) -> list[object]:
        rows = await original(after, limit)
        async with engine.execution_options(**WRITER).begin() as connection:  # the lease runs out meanwhile
            await connection.execute(update(console_watcher).values(owner="other", lease_until=time.time() + 60))
        return rows

    slow._read = read_then_lose  # type: ignore[method-assign]
    with pytest.raises(LeaseLost):
        await slow.step()
    assert await store.list() == []
    async with engine.connect() as connection:
        assert await connection.scalar(select(console_watcher.c.position)) < 9


async def test_the_clients_baselines_survive_a_take_over(engine: AsyncEngine) -> None:
    rules = AlertRules.model_validate({"scraping": {"min_persons": 5, "baseline_factor": 2}})
    store = AlertStore(engine)
    first = AlertWatcher(engine, rules, store, "first", warm_up_s=0)
    await first.step()
    hour = 3600
    base = datetime.now(UTC) - timedelta(hours=5)
    rows = [_row("o", n, time=rfc3339(base + timedelta(seconds=n)), subject_hash=f"{n % 10:064x}") for n in range(30)]
    rows += [
        _row("o", 30 + n, time=rfc3339(base + timedelta(seconds=hour + n)), subject_hash=f"{n:064x}") for n in range(3)
    ]
    async with engine.execution_options(**WRITER).begin() as connection:
        await connection.execute(insert(audit_index), rows)
    first.position = 0
    await first.step()
    assert first.evaluator.baseline()["hours"] == {"prober": [10]}
    await first.close()
    second = AlertWatcher(engine, rules, store, "second", warm_up_s=0)
    await second.step()
    assert second.evaluator.baseline()["hours"] == {"prober": [10]}  # reloaded, not replayed


async def test_a_reset_or_a_disable_ends_sessions_whenever_they_land(engine: AsyncEngine) -> None:
    officers = OfficerStore(engine, TotpSeal(b"s" * 32))
    sessions = SessionStore(engine)
    await officers.add("awa", "officer")
    await officers.add("bintou", "officer")
    early = await sessions.create("awa", "officer", None)
    await asyncio.sleep(0.01)
    await officers.reset("awa")  # (it deletes the sessions it sees; one made meanwhile must end too)
    late = await sessions.create("bintou", "officer", None)
    async with engine.execution_options(**WRITER).begin() as connection:  # a disable racing the sign-in
        await connection.execute(
            update(console_officers).where(console_officers.c.login == "bintou").values(disabled=1)
        )
    assert await sessions.get(early) is None and await sessions.get(late) is None
    oidc = await sessions.create("oidc:u-1", "dpa", None)  # no local account: nothing to revoke it
    assert await sessions.get(oidc) is not None


async def test_account_changes_are_logged_at_least_once(engine: AsyncEngine) -> None:
    officers = OfficerStore(engine, TotpSeal(b"s" * 32))
    await officers.add("awa", "dpo", "ceni")
    await officers.set_disabled("awa", True)
    logged: list[dict[str, object]] = []
    fail = True

    async def append(record: AccessRecord) -> int:
        if fail:
            raise OSError("the log refuses")
        logged.append(record.event())
        return len(logged)

    changes = AccountChanges(engine, append, reclaim_s=0)
    with pytest.raises(OSError):
        await changes.relay()
    fail = False
    assert await changes.relay() == 2 and await changes.relay() == 0  # each once, none lost
    assert [(e["evidence"]["action"], e["operation"]) for e in logged] == [
        ("add", "console.account"),
        ("disable", "console.account"),
    ]
    assert logged[0]["evidence"]["administration"] == "ceni" and str(logged[0]["client_id"]).startswith("cli:")
    await officers.reset("awa")
    async with engine.execution_options(**WRITER).begin() as connection:  # claimed by a process that died
        await connection.execute(
            update(console_account_changes).where(console_account_changes.c.logged == 0).values(logged=1)
        )
    assert await changes.relay() == 1 and logged[-1]["evidence"]["action"] == "reset"
