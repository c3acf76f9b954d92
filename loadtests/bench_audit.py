"""Benchmark: the access log.

1. Durable appends a second through the one writer over the segment files, with group commit and (for
   reference) one sync per event, and the process CPU an append costs.
   Index catch-up: a written log followed into an empty index, on SQLite and on PostgreSQL, events a
   second and CPU an event; once more without each index, which prices each index.
2. The log's added latency on `/v1/verify`: the same route on the same server stack, once with the
   durable log and once with a writer that discards, driven alternately open loop at a fixed rate.
3. `jamu audit export` peak memory at two log sizes (constant memory means the two are close).

Prints one JSON line. PostgreSQL is used when JAMU_BENCH_DATABASE_URL or JAMU_TEST_DATABASE_URL is set.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import text

from gateway.audit.chain import CheckpointSigner
from gateway.audit.index import IndexFollower
from gateway.audit.origin import log_directory
from gateway.audit.record import AccessRecord
from gateway.audit.segment_store import SegmentStore
from gateway.audit.writer import DurableAccessLog
from gateway.connectors.population import population, seed_register
from gateway.metrics import Metrics
from gateway.storage.database import create_engine, database_url, migrate
from loadtests.harness import Run, drive_at_rate, in_scratch_dir, merge, report
from tests.support.keys import token_form
from tests.support.realm import build_realm
from tests.support.servers import GatewayProcess

SIGNER = CheckpointSigner(Ed25519PrivateKey.generate())


def _record(n: int) -> AccessRecord:
    record = AccessRecord(
        operation="verify",
        administration="ceni",
        client_id="ceni-voter-roll",
        purpose="voter_roll",
        subject_hash=f"{n:064x}",
        attributes_requested=["family_name"],
    )
    record.finish(200)
    return record


async def _appends(directory: Path, events: int, concurrency: int, max_batch: int) -> dict[str, float]:
    """Durable appends through the one writer over the segments: events a second, and the process CPU an
    event costs (the writer's coroutine, the encoding, the write and sync threads)."""
    metrics = Metrics()
    store = SegmentStore(directory, origin="bench/access-log/a-0", signer=SIGNER)
    log = DurableAccessLog(store, metrics, max_batch=max_batch, seal_interval_s=1.0)
    await log.start()
    records = [_record(n) for n in range(events)]
    remaining = events

    async def appender() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await log.append(records[remaining])

    cpu, started = time.process_time(), time.perf_counter()
    await asyncio.gather(*(appender() for _ in range(concurrency)))
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    await log.close()
    await store.close()
    batches = metrics.registry.get_sample_value("jamu_access_log_batch_events_count") or 1
    return {
        "per_s": round(events / elapsed),
        "mean_batch": round(events / batches, 1),
        "cpu_us": round(cpu / events * 1e6, 1),
    }


async def _catch_up(log_dir: Path, url: str, schema: str | None, without: str | None = None) -> dict[str, float]:
    """The index follower over a written log, from an empty index: events indexed a second and the CPU an
    event costs this process (PostgreSQL's own work is in its server); `without` drops one index first,
    so its cost is the difference."""
    engine = create_engine(url, schema=schema)
    await migrate(engine, schema)
    if without is not None:
        async with engine.begin() as connection:
            await connection.execute(text(f"DROP INDEX {without}"))
    follower = IndexFollower(engine, log_dir, batch=4000)
    cpu, started = time.process_time(), time.perf_counter()
    added = await follower.catch_up()
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    if schema:
        async with engine.begin() as connection:
            await connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    await engine.dispose()
    return {"per_s": round(added / elapsed), "cpu_us": round(cpu / added * 1e6, 1)}


INDEXES = (
    "ix_audit_index_administration_time",
    "ix_audit_index_subject",
    "ix_audit_index_time",
    "ix_audit_index_decision_time",
    "ix_audit_index_id",
)


def _latency(root: Path, rate: float, requests: int, rounds: int) -> dict[str, float]:
    realm = build_realm(root)
    policy = realm.policies_dir / "elections.yaml"
    policy.write_text(yaml.safe_dump({**yaml.safe_load(policy.read_text()), "rate_limits": []}))  # not measured here
    people = list(population(200, 7))
    for name in ("durable", "discarding"):
        seed_register(root / name / "register.db", 200, 7)
    servers = {
        name: GatewayProcess(realm.env(GATEWAY_DATA_DIR=str(root / name)), factory=f"loadtests.apps:{factory}")
        for name, factory in (("durable", "create_durable"), ("discarding", "create_discarding"))
    }
    runs: dict[str, list[Run]] = {name: [] for name in servers}
    try:
        headers = {}
        for name, server in servers.items():
            server.start(root / f"{name}.log")
            form = token_form("elections-app", realm.keys["elections-app"], f"{server.base_url}/oauth2/token")
            token = httpx.post(f"{server.base_url}/oauth2/token", data=form, timeout=10).json()["access_token"]
            headers[name] = {"Authorization": f"Bearer {token}"}
        person = next(p for p in people if p["record_status"] == "active")
        body = {
            "nin": person["nin"],
            "purpose": "voter_roll",
            "claims": {"family_name": person["family_name"]},
            "predicates": [{"name": "alive"}],
        }
        for _ in range(rounds + 1):  # the first round warms both up and is dropped
            for name, server in servers.items():
                run = asyncio.run(drive_at_rate(f"{server.base_url}/v1/verify", headers[name], rate, requests, body))
                if set(run.statuses) != {200}:
                    raise RuntimeError(f"{name}: non-200 answers {run.statuses}")
                runs[name].append(run)
    finally:
        for server in servers.values():
            server.stop()

    durable, discarding = merge(runs["durable"][1:]), merge(runs["discarding"][1:])
    result = {
        "latency_rate_rps": rate,
        "latency_requests_per_side": durable.requests,
        "durable_p50_ms": round(durable.percentile(0.5), 3),
        "durable_p99_ms": round(durable.percentile(0.99), 3),
        "noop_p50_ms": round(discarding.percentile(0.5), 3),
        "noop_p99_ms": round(discarding.percentile(0.99), 3),
    }
    result["added_p50_ms"] = round(result["durable_p50_ms"] - result["noop_p50_ms"], 3)
    result["added_p99_ms"] = round(result["durable_p99_ms"] - result["noop_p99_ms"], 3)
    return result


async def _fill(path: Path, events: int) -> None:
    """A data dir whose log holds `events` events, indexed."""
    log_dir = log_directory(path / "log", "bench/access-log/a-0")
    await _appends(log_dir, events, 64, 512)
    engine = create_engine(database_url(None, path))
    await migrate(engine)
    await IndexFollower(engine, log_dir).catch_up()
    await engine.dispose()


def _export_rss_mb(root: Path, events: int) -> float:
    data = root / f"export-{events}"
    asyncio.run(_fill(data, events))
    # VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over exec from the forking parent.
    code = (
        "import sys; from gateway.cli import main; rc = main(sys.argv[1:]); "
        "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0], file=sys.stderr); "
        "sys.exit(rc)"
    )
    command = [sys.executable, "-c", code, "audit", "export", "--format", "jsonl", "--output", os.devnull]
    done = subprocess.run(  # noqa: S603 (our own CLI)
        command,
        env={**os.environ, "GATEWAY_DATA_DIR": str(data)},
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    return round(int(done.stderr.strip().splitlines()[-1]) / 1024, 1)


def measure(argv: list[str] | None = None) -> dict[str, Any]:
    return in_scratch_dir("jamu-bench-audit-", lambda root: _measure(root, argv))


def _measure(root: Path, argv: list[str] | None) -> dict[str, Any]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=200_000, help="events per append measurement")
    parser.add_argument("--concurrency", type=int, default=64, help="concurrent appenders")
    parser.add_argument("--rate", type=float, default=300.0)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--export-sizes", default="20000,200000")
    parser.add_argument(
        "--index-costs",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="catch up once without each index, to price it",
    )
    args = parser.parse_args(argv)

    result: dict[str, Any] = {"bench": "audit"}
    started = time.perf_counter()
    appended = asyncio.run(_appends(root / "log", args.events, args.concurrency, 512))
    result.update(
        durable_appends_per_s=appended["per_s"],
        durable_appends_mean_batch=appended["mean_batch"],
        durable_append_cpu_us=appended["cpu_us"],
    )
    single = asyncio.run(_appends(root / "log-single", args.events // 10, args.concurrency, 1))
    result["durable_one_per_sync_appends_per_s"] = single["per_s"]
    sqlite = asyncio.run(_catch_up(root / "log", database_url(None, root / "index"), None))
    result.update(sqlite_catch_up_per_s=sqlite["per_s"], sqlite_catch_up_cpu_us=sqlite["cpu_us"])
    for index in INDEXES if args.index_costs else ():
        without = asyncio.run(_catch_up(root / "log", database_url(None, root / f"index-{index}"), None, index))
        result[f"sqlite_catch_up_cpu_us_without_{index}"] = without["cpu_us"]
        result[f"sqlite_catch_up_per_s_without_{index}"] = without["per_s"]
    pg = os.environ.get("JAMU_BENCH_DATABASE_URL") or os.environ.get("JAMU_TEST_DATABASE_URL")
    if pg:
        pg_url = database_url(pg, root)
        postgres = asyncio.run(_catch_up(root / "log", pg_url, f"jamu_bench_{uuid.uuid4().hex[:8]}"))
        result.update(postgres_catch_up_per_s=postgres["per_s"], postgres_catch_up_cpu_us=postgres["cpu_us"])
    else:
        result["postgres"] = "skipped: set JAMU_BENCH_DATABASE_URL"
    result.update(_latency(root / "latency", args.rate, args.requests, args.rounds))
    for size in (int(s) for s in args.export_sizes.split(",")):
        result[f"export_{size}_max_rss_mb"] = _export_rss_mb(root, size)
    result["bench_seconds"] = round(time.perf_counter() - started, 1)
    return result


if __name__ == "__main__":
    sys.exit(report(measure()))
