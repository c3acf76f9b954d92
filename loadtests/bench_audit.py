"""Benchmark: the access log.

1. Events appended per second through the one writer, with group commit and (for reference) with one
   transaction per event, on SQLite and on PostgreSQL.
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

from connectors.population import population, seed_register
from gateway.audit.chain import CheckpointSigner
from gateway.audit.record import AccessRecord
from gateway.audit.store import AccessLogStore
from gateway.audit.writer import DurableAccessLog
from gateway.storage.database import create_engine, database_url, migrate
from gateway.telemetry import Metrics
from loadtests.harness import Run, drive_at_rate, in_scratch_dir, merge, report
from tests.support.keys import token_form
from tests.support.realm import build_realm
from tests.support.servers import GatewayProcess

SIGNER = CheckpointSigner(Ed25519PrivateKey.generate())


def _record(n: int) -> AccessRecord:
    record = AccessRecord(operation="verify", administration="ceni", client_id="ceni-voter-roll",
                          purpose="voter_roll", subject_hash=f"{n:064x}", attributes_requested=["family_name"])
    record.finish(200)
    return record


async def _appends(url: str, schema: str | None, events: int, concurrency: int, max_batch: int) -> dict[str, float]:
    engine = create_engine(url, schema=schema)
    await migrate(engine, schema)
    metrics = Metrics()
    log = DurableAccessLog(AccessLogStore(engine, SIGNER), metrics, max_batch=max_batch, seal_interval_s=3600)
    await log.start()
    remaining = events

    async def appender() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await log.append(_record(remaining))

    started = time.perf_counter()
    await asyncio.gather(*(appender() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    await log.close()
    batches = metrics.registry.get_sample_value("jamu_access_log_batch_events_count") or 1
    if schema:
        async with engine.begin() as connection:
            await connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    await engine.dispose()
    return {"per_s": round(events / elapsed, 1), "mean_batch": round(events / batches, 1)}


def _latency(root: Path, rate: float, requests: int, rounds: int) -> dict[str, float]:
    realm = build_realm(root)
    policy = realm.policies_dir / "elections.yaml"
    policy.write_text(yaml.safe_dump({**yaml.safe_load(policy.read_text()), "rate_limits": []}))  # not measured here
    people = list(population(200, 7))
    for name in ("durable", "discarding"):
        seed_register(root / name / "register.db", 200, 7)
    servers = {name: GatewayProcess(realm.env(GATEWAY_DATA_DIR=str(root / name)), factory=f"loadtests.apps:{factory}")
               for name, factory in (("durable", "create_durable"), ("discarding", "create_discarding"))}
    runs: dict[str, list[Run]] = {name: [] for name in servers}
    try:
        headers = {}
        for name, server in servers.items():
            server.start(root / f"{name}.log")
            form = token_form("elections-app", realm.keys["elections-app"], f"{server.base_url}/oauth2/token")
            token = httpx.post(f"{server.base_url}/oauth2/token", data=form, timeout=10).json()["access_token"]
            headers[name] = {"Authorization": f"Bearer {token}"}
        person = next(p for p in people if p["record_status"] == "active")
        body = {"nin": person["nin"], "purpose": "voter_roll", "claims": {"family_name": person["family_name"]},
                "predicates": [{"name": "alive"}]}
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
        "durable_p50_ms": round(durable.percentile(0.5), 3), "durable_p99_ms": round(durable.percentile(0.99), 3),
        "noop_p50_ms": round(discarding.percentile(0.5), 3), "noop_p99_ms": round(discarding.percentile(0.99), 3),
    }
    result["added_p50_ms"] = round(result["durable_p50_ms"] - result["noop_p50_ms"], 3)
    result["added_p99_ms"] = round(result["durable_p99_ms"] - result["noop_p99_ms"], 3)
    return result


async def _fill(path: Path, events: int) -> None:
    engine = create_engine(database_url(None, path))
    await migrate(engine)
    store = AccessLogStore(engine, SIGNER, seal_every=10_000)
    for start in range(0, events, 5000):
        await store.append([_record(n).event() for n in range(start, min(start + 5000, events))])
    await engine.dispose()


def _export_rss_mb(root: Path, events: int) -> float:
    data = root / f"export-{events}"
    asyncio.run(_fill(data, events))
    # VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over exec from the forking parent.
    code = ("import sys; from gateway.cli import main; rc = main(sys.argv[1:]); "
            "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0], file=sys.stderr); "
            "sys.exit(rc)")
    command = [sys.executable, "-c", code, "audit", "export", "--format", "jsonl", "--output", os.devnull]
    done = subprocess.run(command, env={**os.environ, "GATEWAY_DATA_DIR": str(data)},  # noqa: S603
                          capture_output=True, text=True, timeout=600, check=True)
    return round(int(done.stderr.strip().splitlines()[-1]) / 1024, 1)


def measure(argv: list[str] | None = None) -> dict[str, Any]:
    return in_scratch_dir("jamu-bench-audit-", lambda root: _measure(root, argv))


def _measure(root: Path, argv: list[str] | None) -> dict[str, Any]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=20_000, help="events per append measurement")
    parser.add_argument("--concurrency", type=int, default=64, help="concurrent appenders")
    parser.add_argument("--rate", type=float, default=300.0)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--export-sizes", default="20000,200000")
    args = parser.parse_args(argv)

    result: dict[str, Any] = {"bench": "audit"}
    started = time.perf_counter()
    sqlite_url = database_url(None, root / "appends")
    grouped = asyncio.run(_appends(sqlite_url, None, args.events, args.concurrency, 512))
    single = asyncio.run(_appends(database_url(None, root / "appends-single"), None, args.events // 4,
                                  args.concurrency, 1))
    result.update(sqlite_appends_per_s=grouped["per_s"], sqlite_mean_batch=grouped["mean_batch"],
                  sqlite_one_per_commit_appends_per_s=single["per_s"])
    pg = os.environ.get("JAMU_BENCH_DATABASE_URL") or os.environ.get("JAMU_TEST_DATABASE_URL")
    if pg:
        pg_url = database_url(pg, root)
        grouped = asyncio.run(_appends(pg_url, f"jamu_bench_{uuid.uuid4().hex[:8]}", args.events,
                                       args.concurrency, 512))
        single = asyncio.run(_appends(pg_url, f"jamu_bench_{uuid.uuid4().hex[:8]}", args.events // 4,
                                      args.concurrency, 1))
        result.update(postgres_appends_per_s=grouped["per_s"], postgres_mean_batch=grouped["mean_batch"],
                      postgres_one_per_commit_appends_per_s=single["per_s"])
    else:
        result["postgres"] = "skipped: set JAMU_BENCH_DATABASE_URL"
    result.update(_latency(root / "latency", args.rate, args.requests, args.rounds))
    for size in (int(s) for s in args.export_sizes.split(",")):
        result[f"export_{size}_max_rss_mb"] = _export_rss_mb(root, size)
    result["bench_seconds"] = round(time.perf_counter() - started, 1)
    return result


if __name__ == "__main__":
    sys.exit(report(measure()))
