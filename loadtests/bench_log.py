"""What the durable access log costs a served gateway, driven by wrk (not the bottleneck), one worker:

- `POST /bare` (a verification's body parsed into a pydantic model, not logged: the baseline on the same
  uvicorn stack), `POST /v1/bare` (the same, logged: the log alone) and `POST /v1/verify` (everything
  on), in interleaved rounds at 64 connections and at 8: `logged_bare_ratio` and `verify_ratio` (medians
  of per-round ratios to the bare throughput), p99 of each, and the gateway process's CPU a request,
  whose difference between logged and bare is the log's whole cost an event (the request's wait, the
  writer, the segment write and sync, the index follower): `log_cpu_us`;
- `--workers 2` (with Redis) against one worker, both served by `jamu serve`'s stack: `workers_2_ratio`;
- with `--soak-seconds`, the gateway's resident memory over a long verify run: `soak_rss_growth`.

`python -m loadtests.bench_log --help`. Needs wrk (Debian package) and, for the workers figure, Redis
(`JAMU_BENCH_REDIS_URL`, `JAMU_TEST_REDIS_URL`, or 127.0.0.1:6379 when it answers). Loopback only, bounded
in time, stops by itself.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from gateway.connectors.population import seed_register
from loadtests.bench_hardening import _lua_string, _measured, pin_gateway, wrk
from loadtests.bench_identity import Gateway, _bodies, _rss_mb
from loadtests.harness import in_scratch_dir, report

ROUTES = {"bare": "/bare", "logged_bare": "/v1/bare", "verify": "/v1/verify"}


def post_script(path: Path, route: str, headers: dict[str, str], bodies: list[dict[str, Any]]) -> Path:
    """A wrk script that posts `bodies` in turn to `route`."""
    lines = [
        "local bodies = {",
        *(f"  {_lua_string(orjson.dumps(b).decode())}," for b in bodies),
        "}",
        "wrk.method = 'POST'",
        "wrk.headers['Content-Type'] = 'application/json'",
        *(f"wrk.headers[ {_lua_string(k)} ] = {_lua_string(v)}" for k, v in headers.items()),
        "local i = 0",
        "request = function()",
        "  i = i % #bodies + 1",
        f"  return wrk.format(nil, {_lua_string(route)}, nil, bodies[i])",
        "end",
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def _redis_url() -> str | None:
    url = os.environ.get("JAMU_BENCH_REDIS_URL") or os.environ.get("JAMU_TEST_REDIS_URL")
    if url:
        return url
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return "redis://127.0.0.1:6379/0" if probe.connect_ex(("127.0.0.1", 6379)) == 0 else None


def measure(argv: list[str] | None = None) -> dict[str, Any]:
    if shutil.which("wrk") is None:
        return {"bench": "log", "error": "wrk is not on PATH (Debian package wrk)"}
    return in_scratch_dir("jamu-bench-log-", lambda root: _measure(root, argv))


def _ratios(runs: dict[str, list[dict[str, Any]]], name: str, key: str) -> float:
    return round(statistics.median(r[key] / b[key] for r, b in zip(runs[name], runs["bare"], strict=True)), 3)


def _measure(root: Path, argv: list[str] | None) -> dict[str, Any]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--people", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=8, help="interleaved rounds at each concurrency")
    parser.add_argument("--seconds", type=int, default=3, help="each wrk run")
    parser.add_argument("--worker-rounds", type=int, default=3)
    parser.add_argument("--soak-seconds", type=int, default=0, help="a long verify run, RSS sampled")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    result: dict[str, Any] = {"bench": "log"}
    register = root / "register.db"
    seed_register(register, args.people, 1)
    bodies = _bodies(register, 500)

    gateway = Gateway(root / "gw", register)
    try:
        scripts = {
            name: post_script(root / f"{name}.lua", route, gateway.headers if name == "verify" else {}, bodies)
            for name, route in ROUTES.items()
        }
        for name in ROUTES:
            _measured(gateway, scripts[name], 64, 2)  # warm-up
        pin_gateway(gateway.server.proc.pid)  # type: ignore[union-attr]
        orders = [
            ("bare", "logged_bare", "verify"),
            ("logged_bare", "verify", "bare"),
            ("verify", "bare", "logged_bare"),
        ]
        for connections in (64, 8):
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name in ROUTES}
            for index in range(args.rounds):
                for name in orders[index % 3]:
                    runs[name].append(_measured(gateway, scripts[name], connections, args.seconds))
            suffix = "" if connections == 64 else f"_{connections}c"
            for name in ("logged_bare", "verify"):
                result[f"{name}_ratio{suffix}"] = _ratios(runs, name, "rps")
                if connections == 64:
                    result[f"{name}_ratio_wrk"] = result[f"{name}_ratio"]
                result[f"{name}_ratios{suffix}"] = [
                    round(r["rps"] / b["rps"], 3) for r, b in zip(runs[name], runs["bare"], strict=True)
                ]
                result[f"{name}_p99_over_bare{suffix}"] = _ratios(runs, name, "p99_ms")
            for name in ROUTES:
                result[f"{name}_rps{suffix}"] = round(statistics.median(r["rps"] for r in runs[name]))
                result[f"{name}_p99_ms{suffix}"] = round(statistics.median(r["p99_ms"] for r in runs[name]), 2)
                result[f"{name}_cpu_us{suffix}"] = round(statistics.median(r["cpu_us"] for r in runs[name]), 1)
            result[f"log_cpu_us{suffix}"] = round(
                statistics.median(
                    lb["cpu_us"] - b["cpu_us"] for lb, b in zip(runs["logged_bare"], runs["bare"], strict=True)
                ),
                1,
            )
        if args.soak_seconds:
            result.update(_soak(gateway, scripts["verify"], args.soak_seconds))
    finally:
        gateway.stop()

    redis = _redis_url()
    if redis is None:
        result["workers"] = "skipped: no Redis (set JAMU_BENCH_REDIS_URL)"
    else:
        result.update(_workers(root, register, bodies, redis, args.worker_rounds, args.seconds))
    result["bench_seconds"] = round(time.perf_counter() - started, 1)
    return result


def _soak(gateway: Gateway, script: Path, seconds: int) -> dict[str, Any]:
    """Verify at 8 connections for `seconds`, the gateway's RSS read every 30 s; growth is judged from the
    first sample (after a minute's warm-up of caches and pools) to the last."""
    pid: int = gateway.server.proc.pid  # type: ignore[union-attr]
    samples = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        wrk(gateway.url("/"), script, 8, max(1, min(30, int(deadline - time.monotonic()))))
        samples.append(_rss_mb(pid))
    first = samples[min(2, len(samples) - 1)]
    return {
        "soak_seconds": seconds,
        "soak_rss_mb": samples,
        "soak_rss_growth": round((samples[-1] - first) / first, 3) if first else None,
    }


def _workers(
    root: Path, register: Path, bodies: list[dict[str, Any]], redis: str, rounds: int, seconds: int
) -> dict[str, Any]:
    """One worker against two, each `jamu serve`-like (uvicorn's own worker processes), same Redis."""
    rps: dict[int, list[float]] = {1: [], 2: []}
    gateways: dict[int, Gateway] = {}
    try:
        for workers in (1, 2):
            gateways[workers] = Gateway(
                root / f"w{workers}",
                register,
                extra_args=["--workers", str(workers)],
                GATEWAY_REDIS_URL=redis,
                GATEWAY_WORKERS=str(workers),
                GATEWAY_REDIS_KEY_PREFIX=f"jamu-bench-{os.getpid()}-{workers}:",
            )
        scripts = {
            w: post_script(root / f"verify-{w}.lua", ROUTES["verify"], g.headers, bodies) for w, g in gateways.items()
        }
        for workers, gateway in gateways.items():
            wrk(gateway.url("/"), scripts[workers], 64, 2)  # warm-up
        for _ in range(rounds):
            for workers, gateway in gateways.items():
                rps[workers].append(wrk(gateway.url("/"), scripts[workers], 64, seconds)["rps"])
    finally:
        for gateway in gateways.values():
            gateway.stop()
    return {
        "workers_1_rps": round(statistics.median(rps[1])),
        "workers_2_rps": round(statistics.median(rps[2])),
        "workers_2_ratio": round(statistics.median(b / a for a, b in zip(rps[1], rps[2], strict=True)), 3),
    }


if __name__ == "__main__":
    sys.exit(report(measure()))
