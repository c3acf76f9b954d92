"""Benchmark: the register and `/v1/verify`.

- Seeding: `jamu register seed` of 1,000,000 people (target: under 60 s).
- Lookup by NIN at two register sizes (default 50,000 and 5,000,000): µs per point read, p50 and p99.
- The gateway's resident memory after the same verify load on each register size.
- `/v1/verify` throughput (everything on: token check, in-process limiter, policy, embedded register,
  durable access log) against `POST /bare` (a verification's body parsed) on the same server, closed
  loop, in interleaved rounds (with `POST /v1/bare`, the bare answer logged, which isolates what the
  durable log costs): the
  ratio is the median of each round's ratio, so a slow spell of the shared machine hits both sides; and
  p99 of both, open loop, at half the throughput target (the target being half the bare throughput: a
  quarter of it), again in interleaved rounds, each p99 against the bare p99 measured just before it.
- Verification time for known and unknown NINs, interleaved at a moderate rate (the answer must not
  reveal whether a NIN exists, by its time either).

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from gateway.connectors.population import seed_register
from loadtests.harness import Run, cpu_seconds, drive_at_rate, drive_closed, in_scratch_dir, merge, report
from tests.support.keys import token_form
from tests.support.realm import build_realm
from tests.support.servers import GatewayProcess

FILE_CHECK = {
    "legal_basis": "Loi électorale",
    "consent": "not_required",
    "operations": ["lookup"],
    "attributes": ["family_name", "given_names", "birth_date", "residence_commune"],
}
VOTER_ROLL = {
    "legal_basis": "Loi électorale",
    "consent": "not_required",
    "operations": ["verify"],
    "claims": ["family_name", "given_names", "birth_date"],
    "predicates": ["age_at_least", "alive"],
}


def _seed_seconds(root: Path, count: int) -> float:
    started = time.perf_counter()
    subprocess.run(  # noqa: S603 (our own CLI)
        [sys.executable, "-m", "gateway.cli", "register", "seed", "--count", str(count), "--seed", "1"],
        env={**os.environ, "GATEWAY_DATA_DIR": str(root)},
        check=True,
        capture_output=True,
        timeout=900,
    )
    return time.perf_counter() - started


def _nins(register: Path, count: int, seed: int) -> list[str]:
    """NINs spread over the whole key range (every k-th row)."""
    with sqlite3.connect(f"file:{register}?mode=ro", uri=True) as connection:
        total = connection.execute("SELECT count(*) FROM people").fetchone()[0]
        step = max(total // count, 1)
        rows = itertools.islice(connection.execute("SELECT nin FROM people"), 0, step * count, step)  # streamed
        nins = [r[0] for r in rows]
    random.Random(seed).shuffle(nins)  # noqa: S311
    return nins


def _lookup_us(register: Path, nins: list[str]) -> tuple[float, float]:
    connection = sqlite3.connect(f"file:{register}?mode=ro", uri=True)
    connection.execute("PRAGMA cache_size=-16384")
    timings = []
    for nin in nins:
        started = time.perf_counter()
        connection.execute("SELECT * FROM people WHERE nin = ?", (nin,)).fetchone()
        timings.append((time.perf_counter() - started) * 1e6)
    connection.close()
    timings.sort()
    return round(statistics.median(timings), 1), round(timings[int(len(timings) * 0.99)], 1)


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def _bodies(register: Path, count: int, unknown: bool = False) -> list[dict[str, Any]]:
    with sqlite3.connect(f"file:{register}?mode=ro", uri=True) as connection:
        connection.row_factory = sqlite3.Row
        rows = connection.execute("SELECT * FROM people WHERE record_status = 'active' LIMIT ?", (count,)).fetchall()
    bodies = []
    for index, row in enumerate(rows):
        nin = f"9{index:014d}" if unknown else row["nin"]
        bodies.append(
            {
                "nin": nin,
                "purpose": "voter_roll",
                "claims": {
                    "family_name": row["family_name"],
                    "given_names": row["given_names"],
                    "birth_date": row["birth_date"],
                },
                "predicates": [{"name": "age_at_least", "value": 18}, {"name": "alive"}],
            }
        )
    return bodies


class Gateway:
    """The probe gateway with everything on, an electoral client without rate limits in the way."""

    def __init__(
        self,
        root: Path,
        register: Path,
        factory: str = "loadtests.apps:create_durable",
        extra_args: list[str] | None = None,
        **env: str,
    ) -> None:
        realm = build_realm(root)
        elections = realm.policies_dir / "elections.yaml"
        policy = yaml.safe_load(elections.read_text())
        policy.update(
            rate_limits=[{"name": "burst", "limit": 1_000_000, "window": "1s"}],
            purposes={"voter_roll": VOTER_ROLL, "file_check": FILE_CHECK},
        )
        elections.write_text(yaml.safe_dump(policy, allow_unicode=True))
        data = root / "var"
        data.mkdir(exist_ok=True)
        (data / "register.db").symlink_to(register)
        self.data_dir = data
        self.server = GatewayProcess(realm.env(**env), factory=factory, extra_args=extra_args)
        self.server.start(root / "gateway.log")
        form = token_form("elections-app", realm.keys["elections-app"], f"{self.server.base_url}/oauth2/token")
        token = httpx.post(f"{self.server.base_url}/oauth2/token", data=form, timeout=10).json()["access_token"]
        self.headers = {"Authorization": f"Bearer {token}"}

    def url(self, path: str) -> str:
        return f"{self.server.base_url}{path}"

    def stop(self) -> None:
        self.server.stop()


def _checked(run: Run, what: str) -> Run:
    if set(run.statuses) != {200}:
        raise RuntimeError(f"{what}: answers {run.statuses}")
    return run


def _median_ratio(runs: list[Run], baselines: list[Run]) -> float:
    """The median of each round's ratio to the baseline measured just before it."""
    return round(statistics.median(r.rps / b.rps for r, b in zip(runs, baselines, strict=True)), 3)


def measure(argv: list[str] | None = None) -> dict[str, Any]:
    return in_scratch_dir("jamu-bench-identity-", lambda root: _measure(root, argv))


def _measure(root: Path, argv: list[str] | None) -> dict[str, Any]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed-count", type=int, default=1_000_000)
    parser.add_argument("--small", type=int, default=50_000)
    parser.add_argument("--large", type=int, default=5_000_000)
    parser.add_argument("--requests", type=int, default=20_000, help="per throughput measurement")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=4, help="interleaved bare/verify/lookup rounds")
    parser.add_argument(
        "--half-rounds",
        type=int,
        default=5,
        help="interleaved bare/verify rounds at half the target load (p99 swings from round to round)",
    )
    parser.add_argument("--half-seconds", type=float, default=5.0, help="each run at half the target load")
    parser.add_argument("--timing-requests", type=int, default=400, help="per known/unknown NIN timing run")
    args = parser.parse_args(argv)
    result: dict[str, Any] = {"bench": "identity"}
    started = time.perf_counter()

    result[f"seed_{args.seed_count}_s"] = round(_seed_seconds(root / "seed", args.seed_count), 1)
    registers = {}
    for size in (args.small, args.large):
        path = root / f"register-{size}.db"
        seed_register(path, size, 1)
        registers[size] = path
        p50, p99 = _lookup_us(path, _nins(path, 20_000, 2))
        result[f"lookup_{size}_p50_us"], result[f"lookup_{size}_p99_us"] = p50, p99

    for size, path in registers.items():
        gateway = Gateway(root / f"gw-{size}", path)
        try:
            bodies = _bodies(path, 2000)
            _checked(asyncio.run(drive_closed(gateway.url("/v1/verify"), gateway.headers, 4000, 8, bodies)), "warm")
            result[f"gateway_rss_{size}_mb"] = _rss_mb(gateway.server.proc.pid)  # type: ignore[union-attr]
            if size != args.small:
                continue
            lookups = [
                {"nin": b["nin"], "purpose": "file_check", "attributes": FILE_CHECK["attributes"]} for b in bodies
            ]
            per_round = args.requests // args.rounds
            runs: dict[str, list[Run]] = {"bare": [], "logged_bare": [], "verify": [], "lookup": []}
            cpu: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
            pid: int = gateway.server.proc.pid  # type: ignore[union-attr]
            for _ in range(args.rounds):  # interleaved, so a slow spell of the machine hits them all
                for name, route, headers, body in (
                    ("bare", "/bare", {}, bodies),
                    ("logged_bare", "/v1/bare", {}, bodies),
                    ("verify", "/v1/verify", gateway.headers, bodies),
                    ("lookup", "/v1/lookup", gateway.headers, lookups),
                ):
                    before = cpu_seconds(pid)
                    runs[name].append(
                        _checked(
                            asyncio.run(drive_closed(gateway.url(route), headers, per_round, args.connections, body)),
                            name,
                        )
                    )
                    after = cpu_seconds(pid)
                    cpu[name].append(
                        ((after[0] - before[0]) / per_round * 1e6, (after[1] - before[1]) / per_round * 1e6)
                    )
            bare, verify, lookup = (merge(runs[name]) for name in ("bare", "verify", "lookup"))
            bare_rps = statistics.median(r.rps for r in runs["bare"])
            verify_rps = statistics.median(r.rps for r in runs["verify"])
            half = bare_rps / 4  # half of the target load, which is half the bare throughput
            halves: dict[str, list[Run]] = {"bare": [], "verify": []}
            for _ in range(args.half_rounds):  # p99 is a tail: judged per round, each against its own baseline
                halves["bare"].append(
                    _checked(
                        asyncio.run(
                            drive_at_rate(gateway.url("/bare"), {}, half, int(half * args.half_seconds), bodies[0])
                        ),
                        "bare½",
                    )
                )
                halves["verify"].append(
                    asyncio.run(
                        drive_at_rate(
                            gateway.url("/v1/verify"), gateway.headers, half, int(half * args.half_seconds), bodies[0]
                        )
                    )
                )
            verify_half = merge(halves["verify"])
            half_p99_ratios = [
                round(v.percentile(0.99) / b.percentile(0.99), 2)
                for v, b in zip(halves["verify"], halves["bare"], strict=True)
            ]
            result.update(
                bare_rps=round(bare_rps),
                verify_rps=round(verify_rps),
                verify_ratio=_median_ratio(runs["verify"], runs["bare"]),
                verify_ratios=[round(v.rps / b.rps, 3) for v, b in zip(runs["verify"], runs["bare"], strict=True)],
                bare_p50_ms=round(bare.percentile(0.5), 2),
                bare_p99_ms=round(bare.percentile(0.99), 2),
                verify_p50_ms=round(verify.percentile(0.5), 2),
                verify_p99_ms=round(verify.percentile(0.99), 2),
                half_load_rps=round(half),
                verify_half_utilisation=round(half / verify_rps, 2),
                bare_half_p99_ms=round(statistics.median(r.percentile(0.99) for r in halves["bare"]), 2),
                verify_half_p99_ms=round(statistics.median(r.percentile(0.99) for r in halves["verify"]), 2),
                verify_half_p99_over_bare=statistics.median(half_p99_ratios),
                verify_half_p99_ratios=half_p99_ratios,
                verify_half_statuses={str(k): v for k, v in verify_half.statuses.items()},
                lookup_rps=round(statistics.median(r.rps for r in runs["lookup"])),
                lookup_ratio=_median_ratio(runs["lookup"], runs["bare"]),
                lookup_p50_ms=round(lookup.percentile(0.5), 2),
                lookup_p99_ms=round(lookup.percentile(0.99), 2),
                # The same bare answer, logged: what the durable access log alone leaves of the throughput.
                logged_bare_rps=round(statistics.median(r.rps for r in runs["logged_bare"])),
                logged_bare_ratio=_median_ratio(runs["logged_bare"], runs["bare"]),
                # CPU a request costs the gateway's process and the log's writer, median of the rounds.
                **{f"{name}_gateway_cpu_us": round(statistics.median(c[0] for c in cpu[name])) for name in cpu},
                # The log's whole cost an event, in the gateway's process (the request's wait, the writer,
                # the segment write and sync, the index follower): the same answer logged, minus bare.
                logged_bare_log_cpu_us=round(
                    statistics.median(lb[0] - b[0] for lb, b in zip(cpu["logged_bare"], cpu["bare"], strict=True))
                ),
                verify_cpu_ratio=round(
                    statistics.median(
                        b[0] / v[0] if v[0] else 0.0 for b, v in zip(cpu["bare"], cpu["verify"], strict=True)
                    ),
                    3,
                ),
            )
            known, unknown = _bodies(path, 1), _bodies(path, 1, unknown=True)
            timings: dict[str, list[float]] = {"known": [], "unknown": []}
            for _ in range(5):
                for name, body in (("known", known[0]), ("unknown", unknown[0])):
                    run = _checked(
                        asyncio.run(
                            drive_at_rate(gateway.url("/v1/verify"), gateway.headers, 200, args.timing_requests, body)
                        ),
                        name,
                    )
                    timings[name] += run.latencies_ms
            for name, values in timings.items():
                values.sort()
                result[f"{name}_nin_p50_ms"] = round(statistics.median(values), 3)
            result["known_minus_unknown_p50_ms"] = round(result["known_nin_p50_ms"] - result["unknown_nin_p50_ms"], 3)
        finally:
            gateway.stop()
    result["bench_seconds"] = round(time.perf_counter() - started, 1)
    return result


if __name__ == "__main__":
    sys.exit(report(measure()))
