"""Benchmark: what the rate limiter costs on a protected route, and how many Redis commands it sends.

One gateway serves the same protected route to two administrations: one's policy declares rate limits
(checked in Redis, two windows), the other's declares none, so the only difference is the limiter.
Both are driven alternately, open loop at a fixed rate below saturation (a closed loop on 2 cores
measures the load generator's own queueing), bounded in count. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import httpx
import redis as redis_sync
import yaml

from loadtests.harness import Run, drive_at_rate, in_scratch_dir, merge, report
from tests.support.keys import jwks_of, new_key, token_form
from tests.support.realm import build_realm
from tests.support.servers import GatewayProcess, RedisProcess


def _commands(client: redis_sync.Redis) -> dict[str, int]:
    return {name: stats["calls"] for name, stats in client.info("commandstats").items()}


def measure(argv: list[str] | None = None) -> dict[str, Any]:
    return in_scratch_dir("jamu-bench-", lambda root: _measure(root, argv))


def _measure(root: Path, argv: list[str] | None) -> dict[str, Any]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rate", type=float, default=300.0, help="requests per second, below saturation")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)

    redis_server = None
    redis_url = os.environ.get("JAMU_BENCH_REDIS_URL") or os.environ.get("JAMU_TEST_REDIS_URL")
    if not redis_url:
        redis_server = RedisProcess(root).start()
        redis_url = redis_server.url
    realm = build_realm(root)
    for admin, limits in {
        "limited": [
            {"name": "burst", "limit": 1_000_000, "window": "1s"},
            {"name": "daily", "limit": 1_000_000_000, "window": "1d"},
        ],
        "unlimited": [],
    }.items():
        realm.keys[admin] = new_key()
        (realm.policies_dir / f"{admin}.yaml").write_text(
            yaml.safe_dump(
                {
                    "id": admin,
                    "name": admin,
                    "rate_limits": limits,
                    "clients": [
                        {
                            "client_id": admin,
                            "auth": "private_key_jwt",
                            "jwks": jwks_of(realm.keys[admin]),
                            "scopes": ["identity:verify"],
                        }
                    ],
                }
            )
        )
    gateway = GatewayProcess(realm.env(GATEWAY_REDIS_URL=redis_url, GATEWAY_REDIS_KEY_PREFIX="jamu-bench:"))
    gateway.start(root / "gateway.log")
    counter = redis_sync.Redis.from_url(redis_url)
    try:
        headers = {}
        for admin in ("limited", "unlimited"):
            form = token_form(admin, realm.keys[admin], f"{gateway.base_url}/oauth2/token")
            token = httpx.post(f"{gateway.base_url}/oauth2/token", data=form).json()["access_token"]
            headers[admin] = {"Authorization": f"Bearer {token}"}
        url = f"{gateway.base_url}/v1/probe/verify"
        asyncio.run(drive_at_rate(url, headers["limited"], args.rate, 300))  # warm up both paths
        asyncio.run(drive_at_rate(url, headers["unlimited"], args.rate, 300))
        runs: dict[str, list[Run]] = {"limited": [], "unlimited": []}
        commands_sent = 0
        evalsha_sent = 0
        for _ in range(args.rounds):
            before = _commands(counter)
            runs["limited"].append(asyncio.run(drive_at_rate(url, headers["limited"], args.rate, args.requests)))
            after = _commands(counter)
            # Commands a script runs inside Redis (TIME, GET, SET) are counted by commandstats but never
            # cross the network; what the gateway sends is everything else.
            inside = ("cmdstat_time", "cmdstat_get", "cmdstat_set")
            commands_sent += sum(after[k] - before.get(k, 0) for k in after if k not in inside) - 1  # our INFO
            evalsha_sent += after.get("cmdstat_evalsha", 0) - before.get("cmdstat_evalsha", 0)
            runs["unlimited"].append(asyncio.run(drive_at_rate(url, headers["unlimited"], args.rate, args.requests)))
    finally:
        counter.close()
        gateway.stop()
        if redis_server:
            redis_server.stop()

    limited, unlimited = merge(runs["limited"]), merge(runs["unlimited"])
    failed = {name: merge(parts).statuses for name, parts in runs.items() if set(merge(parts).statuses) != {200}}
    if failed:
        return {"bench": "ratelimit", "error": "non-200 answers", "statuses": failed}
    result = {
        "bench": "ratelimit",
        "requests_per_side": limited.requests,
        "rate_rps": args.rate,
        "redis_commands_per_request": round(commands_sent / limited.requests, 3),
        "evalsha_per_request": round(evalsha_sent / limited.requests, 3),
        "with_limiter_rps": round(limited.rps, 1),
        "without_limiter_rps": round(unlimited.rps, 1),
        "with_limiter_p50_ms": round(limited.percentile(0.50), 3),
        "with_limiter_p99_ms": round(limited.percentile(0.99), 3),
        "without_limiter_p50_ms": round(unlimited.percentile(0.50), 3),
        "without_limiter_p99_ms": round(unlimited.percentile(0.99), 3),
    }
    result["added_p50_ms"] = round(result["with_limiter_p50_ms"] - result["without_limiter_p50_ms"], 3)
    result["added_p99_ms"] = round(result["with_limiter_p99_ms"] - result["without_limiter_p99_ms"], 3)
    return result


if __name__ == "__main__":
    sys.exit(report(measure()))
