"""Benchmark: bulk verification jobs (docs/bulk-verification.md).

A roll of `--records` lines (2 % unknown NINs) against a register of `--people`, end to end through the
public API: create, upload (streamed, with its checksum), run, completed. Two gateway processes on one
database, as a deployment runs them: one serving interactive calls (`GATEWAY_BULK_WORKERS=0`), one
running jobs (`GATEWAY_BULK_WORKERS=1`, at `nice 10`, so the interactive process keeps its share of the
cores). Figures: records a second end to end and while running; both processes' peak RSS; interactive
`/v1/verify` p99 at `--rate` requests a second without the job, with it, and without it again (the two
baselines interleave the measurement). Every record's access-log event is durable before its chunk
counts as done, so `processed` counts durable events.

Loopback only, bounded in count and time. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from gateway.bulk.client import JobsClient
from gateway.connectors.population import seed_register
from loadtests.harness import drive_at_rate, in_scratch_dir, report
from tests.support.keys import jwks_of, new_key, token_form
from tests.support.realm import build_realm
from tests.support.servers import GatewayProcess

# How the job processes are started: they take the CPU the interactive process leaves.
PRIORITY = {"idle": ["chrt", "--idle", "0"], "nice": ["nice", "-n", "10"], "normal": []}
PURPOSE = {
    "legal_basis": "Loi électorale",
    "consent": "not_required",
    "operations": ["verify"],
    "claims": ["family_name"],
    "predicates": ["alive"],
}


def rss_kib(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def write_roll(register: Path, path: Path, records: int) -> None:
    with sqlite3.connect(register) as db, open(path, "w", encoding="utf-8") as out:
        out.write("ref,nin,family_name\n")
        written = 0
        while written < records:
            for nin, name in db.execute("SELECT nin, family_name FROM people"):
                if written >= records:
                    break
                if written % 50 == 0:
                    nin = f"9{written:014d}"  # unknown to the register
                out.write(f"r{written},{nin},{name}\n")
                written += 1


def family(pid: int) -> list[int]:
    """The process and its children (uvicorn's workers)."""
    children: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                children += [int(child) for child in (task / "children").read_text().split()]
    return [pid, *children]


class Peak(threading.Thread):
    """The largest RSS any one process of each server reached (a supervisor and its workers apart)."""

    def __init__(self, pids: list[int]) -> None:
        super().__init__(daemon=True)
        self.pids, self.peak, self.stopped = pids, dict.fromkeys(pids, 0), threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(0.25):
            for pid in self.pids:
                self.peak[pid] = max(self.peak[pid], *(rss_kib(p) for p in family(pid)))


def measure(argv: list[str] | None = None) -> dict[str, Any]:
    return in_scratch_dir("jamu-bench-bulk-", lambda root: _measure(root, argv))


def _measure(root: Path, argv: list[str] | None) -> dict[str, Any]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--people", type=int, default=1_000_000)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--rate", type=float, default=100.0, help="interactive /v1/verify requests a second")
    parser.add_argument("--probe-requests", type=int, default=3000)
    parser.add_argument("--chunk", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2, help="chunks each job process runs at once")
    parser.add_argument("--processes", type=int, default=2, help="job processes")
    parser.add_argument(
        "--priority",
        choices=sorted(PRIORITY),
        default="idle",
        help="the job processes' CPU scheduling: idle (SCHED_IDLE), nice (nice 10) or normal",
    )
    args = parser.parse_args(argv)
    realm = build_realm(root)
    result: dict[str, Any] = {
        "bench": "bulk",
        "people": args.people,
        "records": args.records,
        "job_processes": args.processes,
        "chunks_at_once": args.workers,
        "job_priority": args.priority,
    }
    realm.keys["ceni-roll"] = new_key()
    (realm.policies_dir / "ceni.yaml").write_text(
        yaml.safe_dump(
            {
                "id": "ceni",
                "name": "CENI",
                "purposes": {"roll_revision": PURPOSE},
                "rate_limits": [{"name": "burst", "limit": 1_000_000, "window": "1s"}],
                "clients": [
                    {
                        "client_id": "ceni-roll",
                        "auth": "private_key_jwt",
                        "jwks": jwks_of(realm.keys["ceni-roll"]),
                        "scopes": ["identity:verify"],
                    }
                ],
            },
            allow_unicode=True,
        )
    )
    started = time.perf_counter()
    seed_register(realm.data_dir / "register.db", args.people, 1)
    roll = root / "roll.csv"
    write_roll(realm.data_dir / "register.db", roll, args.records)
    result["setup_s"] = round(time.perf_counter() - started, 1)
    common = {"GATEWAY_BULK_CHUNK_RECORDS": str(args.chunk), "GATEWAY_AUDIT_SEAL_INTERVAL_S": "1"}
    interactive = GatewayProcess(realm.env(GATEWAY_BULK_WORKERS="0", **common), factory="gateway.cli:app_from_env")
    interactive.start(root / "interactive.log")
    jobs = GatewayProcess(
        realm.env(GATEWAY_BULK_WORKERS=str(args.workers), GATEWAY_WORKERS=str(args.processes + 1), **common),
        factory="gateway.cli:app_from_env",
        extra_args=["--workers", str(args.processes)] if args.processes > 1 else [],
        prefix=PRIORITY[args.priority],
    )
    try:
        jobs.start(root / "jobs.log")
        result.update(_run(interactive, jobs, realm, roll, args))
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        jobs.stop()
        interactive.stop()
    return result


def _run(interactive: GatewayProcess, jobs: GatewayProcess, realm: Any, roll: Path, args: Any) -> dict[str, Any]:
    base = interactive.base_url
    form = token_form("ceni-roll", realm.keys["ceni-roll"], f"{base}/oauth2/token")
    token = httpx.post(f"{base}/oauth2/token", data=form, timeout=10).json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    with sqlite3.connect(realm.data_dir / "register.db") as db:
        nin, name = db.execute("SELECT nin, family_name FROM people LIMIT 1 OFFSET 1000").fetchone()
    body = {"nin": nin, "purpose": "roll_revision", "claims": {"family_name": name}, "predicates": [{"name": "alive"}]}

    def probe() -> Any:
        return asyncio.run(drive_at_rate(f"{base}/v1/verify", headers, args.rate, args.probe_requests, body))

    probe()  # warm-up
    before = probe()
    client = JobsClient(base, lambda: token)
    peak = Peak([interactive.proc.pid, jobs.proc.pid])
    peak.start()
    submitted = time.perf_counter()
    job = client.submit(
        roll,
        {"purpose": "roll_revision", "claims": ["family_name"], "predicates": [{"name": "alive"}], "format": "csv"},
    )
    uploaded = time.perf_counter()
    while client.status(job["id"])["status"] == "queued":
        time.sleep(0.1)
    during = probe()
    status = client.follow(job["id"], out=None, every_s=0.25)
    finished = time.perf_counter()
    peak.stopped.set()
    peak.join()
    after = probe()
    client.close()
    if status["status"] != "completed" or status["processed"] != args.records:
        raise RuntimeError(f"the job ended {status['status']} with {status['processed']} records")
    baseline = (before.percentile(0.99) + after.percentile(0.99)) / 2
    end_to_end = finished - submitted
    return {
        "end_to_end_s": round(end_to_end, 1),
        "upload_s": round(uploaded - submitted, 1),
        "records_per_s": round(args.records / end_to_end),
        "running_records_per_s": round(args.records / max(finished - uploaded, 1e-3)),
        "interactive_rss_mib": round(peak.peak[interactive.proc.pid] / 1024),
        "jobs_rss_mib": round(peak.peak[jobs.proc.pid] / 1024),
        "verify_rate": args.rate,
        "verify_p99_ms_before": round(before.percentile(0.99), 2),
        "verify_p99_ms_during": round(during.percentile(0.99), 2),
        "verify_p99_ms_after": round(after.percentile(0.99), 2),
        "verify_p99_during_over_without": round(during.percentile(0.99) / baseline, 2),
        "verify_not_200_during": sum(n for s, n in during.statuses.items() if s != 200),
    }


def main(argv: list[str] | None = None) -> int:
    return report(measure(argv if argv is not None else sys.argv[1:]))


if __name__ == "__main__":
    sys.exit(main())
