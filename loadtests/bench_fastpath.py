"""Whether the identity routes' lean handler (`GuardedBodyRoute`, gateway/api/routes.py) still earns its
keep: the same gateway, durable log and all, served twice — once as built, once with FastAPI's own
handler on those routes (`loadtests.apps:create_durable_plain_routes`) — and `POST /v1/verify` driven by
wrk at 64 and 8 connections in interleaved rounds. `fastpath_rps_ratio_*` is lean over plain throughput
and `fastpath_cpu_saved_us_*` the gateway's CPU a verification the lean handler saves (medians of the
rounds). Loopback only, bounded in time, stops by itself.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from gateway.connectors.population import seed_register
from loadtests.bench_hardening import _measured
from loadtests.bench_identity import Gateway, _bodies
from loadtests.bench_log import post_script
from loadtests.harness import in_scratch_dir, report

FACTORIES = {"lean": "loadtests.apps:create_durable", "plain": "loadtests.apps:create_durable_plain_routes"}


def measure(argv: list[str] | None = None) -> dict[str, Any]:
    if shutil.which("wrk") is None:
        return {"bench": "fastpath", "error": "wrk is not on PATH (Debian package wrk)"}
    return in_scratch_dir("jamu-bench-fastpath-", lambda root: _measure(root, argv))


def _measure(root: Path, argv: list[str] | None) -> dict[str, Any]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--people", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=6, help="interleaved rounds at each concurrency")
    parser.add_argument("--seconds", type=int, default=3, help="each wrk run")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    register = root / "register.db"
    seed_register(register, args.people, 1)
    bodies = _bodies(register, 500)
    gateways: dict[str, Gateway] = {}
    result: dict[str, Any] = {"bench": "fastpath"}
    try:
        for name, factory in FACTORIES.items():
            gateways[name] = Gateway(root / name, register, factory=factory)
        scripts = {
            name: post_script(root / f"{name}.lua", "/v1/verify", gateway.headers, bodies)
            for name, gateway in gateways.items()
        }
        for name, gateway in gateways.items():
            _measured(gateway, scripts[name], 64, 2)  # warm-up
        for connections in (64, 8):
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name in gateways}
            for index in range(args.rounds):
                order = list(gateways) if index % 2 == 0 else list(reversed(gateways))
                for name in order:
                    runs[name].append(_measured(gateways[name], scripts[name], connections, args.seconds))
            pairs = list(zip(runs["lean"], runs["plain"], strict=True))
            result[f"lean_rps_{connections}c"] = round(statistics.median(r["rps"] for r in runs["lean"]))
            result[f"plain_rps_{connections}c"] = round(statistics.median(r["rps"] for r in runs["plain"]))
            result[f"fastpath_rps_ratio_{connections}c"] = round(
                statistics.median(a["rps"] / b["rps"] for a, b in pairs), 3
            )
            result[f"fastpath_rps_ratios_{connections}c"] = [round(a["rps"] / b["rps"], 3) for a, b in pairs]
            result[f"fastpath_cpu_saved_us_{connections}c"] = round(
                statistics.median(b["gateway_cpu_us"] - a["gateway_cpu_us"] for a, b in pairs), 1
            )
            result[f"lean_cpu_us_{connections}c"] = round(
                statistics.median(r["gateway_cpu_us"] for r in runs["lean"]), 1
            )
    finally:
        for gateway in gateways.values():
            gateway.stop()
    result["bench_seconds"] = round(time.perf_counter() - started, 1)
    return result


if __name__ == "__main__":
    sys.exit(report(measure(sys.argv[1:])))
