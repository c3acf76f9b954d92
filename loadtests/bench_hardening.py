"""What the gateway's defences cost and whether they hold under load, driven by wrk (a C load generator
that is not the bottleneck), in interleaved rounds on one served gateway with everything on.

- Existence by timing: `/v1/verify` with known NINs against the same bodies with unknown NINs, at
  saturation (64 connections) and at 8: `unknown_known_throughput_ratio` and
  `unknown_known_cpu_ratio` (the gateway's and the log writer's CPU per request), medians of per-round
  ratios over short rounds in rotating order, so a drift of the machine hits every side alike. Beside
  them the same ratios for two sets of *known* NINs (`known_known_*`): the noise floor of this machine,
  against which the unknown/known figures are read.
- An anonymous flood: `/v1/verify`'s throughput with an anonymous flood running beside it (unknown paths,
  wrong methods, malformed bodies, at `--flood-rate` requests/s from one address) over its throughput
  without: `flood_verify_ratio`; every verification must still be answered 200 (never
  `audit_unavailable`), and the flood costs the log one counting event a second, not one a request.

`python -m loadtests.bench_hardening --help`. Needs `wrk` on PATH (Debian package `wrk`; `make bench`
installs it where it runs as root). Loopback only, bounded in time, stops by itself.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from gateway.audit.origin import local_logs
from gateway.audit.segments import SegmentLog
from gateway.connectors.population import nin_for, seed_register
from loadtests.bench_identity import Gateway, _bodies
from loadtests.harness import cpu_seconds, in_scratch_dir, report

_RPS = re.compile(r"Requests/sec:\s+([0-9.]+)")
_REQUESTS = re.compile(r"(\d+) requests in")
_NON_2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_P99 = re.compile(r"^\s+99%\s+([0-9.]+)(us|ms|s)\s*$", re.MULTILINE)
_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _lua_string(text: str) -> str:
    return f"[==[{text}]==]"


def verify_script(path: Path, headers: dict[str, str], bodies: list[dict[str, Any]]) -> Path:
    """A wrk script that posts `bodies` in turn to /v1/verify."""
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
        "  return wrk.format(nil, '/v1/verify', nil, bodies[i])",
        "end",
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def flood_script(path: Path, rate_per_connection: float) -> Path:
    """Anonymous requests wrk paces with `delay()`: an unknown path, a wrong method, a malformed body."""
    path.write_text(
        "\n".join(
            [
                "local kinds = {",
                "  {'GET', '/v1/no-such-thing', nil},",
                "  {'DELETE', '/v1/verify', nil},",
                "  {'POST', '/v1/verify', '{\"nin\": '},",
                "  {'POST', '/oauth2/token', 'grant_type=client_credentials'},",
                "}",
                "local i = 0",
                "request = function()",
                "  i = i % #kinds + 1",
                "  local k = kinds[i]",
                "  return wrk.format(k[1], k[2], {['Content-Type'] = 'application/json'}, k[3])",
                "end",
                f"delay = function() return {1000.0 / rate_per_connection:.3f} end",
            ]
        )
        + "\n"
    )
    return path


def _wrk_path() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise RuntimeError("wrk is not on PATH")
    return path


def _pinned(command: list[str]) -> list[str]:
    """Load generators on the second core, the gateway alone on the first (`pin_gateway`): the machine's
    scheduler otherwise moves them about and the rounds swing by ±20 %."""
    taskset = shutil.which("taskset")
    return [taskset, "-c", "1", *command] if taskset and (os.cpu_count() or 1) >= 2 else command


def pin_gateway(pid: int) -> None:
    """Every thread of the gateway's process on core 0, its children (the log writer) on core 1."""
    if (os.cpu_count() or 1) < 2 or not hasattr(os, "sched_setaffinity"):
        return
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(task.name), {0})
            for child in (task / "children").read_text().split():
                for child_task in Path(f"/proc/{child}/task").iterdir():
                    os.sched_setaffinity(int(child_task.name), {1})


def wrk(url: str, script: Path, connections: int, seconds: int) -> dict[str, Any]:
    command = [_wrk_path(), "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url]
    done = subprocess.run(_pinned(command), capture_output=True, text=True, timeout=seconds + 60, check=True)  # noqa: S603
    out = done.stdout
    rps, requests = _RPS.search(out), _REQUESTS.search(out)
    if rps is None or requests is None:
        raise RuntimeError(f"wrk said: {out[-500:]} {done.stderr[-500:]}")
    p99 = _P99.search(out)
    non_2xx = _NON_2XX.search(out)
    return {
        "rps": float(rps.group(1)),
        "requests": int(requests.group(1)),
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
        "p99_ms": float(p99.group(1)) * _UNIT_MS[p99.group(2)] if p99 else None,
    }


def _measured(gateway: Gateway, script: Path, connections: int, seconds: int, *, strict: bool = True) -> dict[str, Any]:
    """A wrk run and the CPU the gateway and its log writer spent on each request of it; `strict`: any
    answer but 200 stops the benchmark."""
    pid: int = gateway.server.proc.pid  # type: ignore[union-attr]
    before = cpu_seconds(pid)
    run = wrk(gateway.url("/"), script, connections, seconds)
    after = cpu_seconds(pid)
    run["cpu_us"] = (after[0] - before[0] + after[1] - before[1]) / max(run["requests"], 1) * 1e6
    run["gateway_cpu_us"] = (after[0] - before[0]) / max(run["requests"], 1) * 1e6
    if strict and run["non_2xx"]:
        raise RuntimeError(f"{run['non_2xx']} verifications were not answered 200")
    return run


def _anonymous_events(data_dir: Path) -> int:
    """Events without an administration in the gateway's logs, read from the segments (the durable point,
    never behind)."""
    count = 0
    for directory in local_logs(data_dir / "log"):
        for _, payload in SegmentLog(directory, read_only=True).records(0):
            count += orjson.loads(payload)["administration"] is None
    return count


def measure(argv: list[str] | None = None) -> dict[str, Any]:
    if shutil.which("wrk") is None:
        return {"bench": "hardening", "error": "wrk is not on PATH (Debian package wrk)"}
    return in_scratch_dir("jamu-bench-hardening-", lambda root: _measure(root, argv))


def _measure(root: Path, argv: list[str] | None) -> dict[str, Any]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--people", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=12, help="rounds of known, unknown and control at 64 connections")
    parser.add_argument("--seconds", type=int, default=2, help="each wrk run")
    parser.add_argument("--flood-seconds", type=int, default=5, help="each run with and without the flood")
    parser.add_argument("--flood-rate", type=float, default=500.0, help="anonymous requests/s during the flood")
    parser.add_argument("--flood-rounds", type=int, default=5)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    result: dict[str, Any] = {"bench": "hardening"}
    register = root / "register.db"
    seed_register(register, args.people, 1)
    # The default per-source limits: the flood is refused as an attacker's would be.
    gateway = Gateway(root / "gw", register, GATEWAY_UNAUTHENTICATED_RATE_LIMITS="burst:20/1s,hourly:1200/1h")
    try:
        people = _bodies(register, 400)
        known, control = people[:200], people[200:]
        # NINs of the register's own form (region, birth year, serial, check digit) that it does not hold:
        # what an attacker probing for existence would send.
        unknown = [
            {**body, "nin": nin_for(args.people + 1 + index, 1960 + index % 40, index % 9)}
            for index, body in enumerate(known)
        ]
        scripts = {
            "known": verify_script(root / "known.lua", gateway.headers, known),
            "control": verify_script(root / "control.lua", gateway.headers, control),
            "unknown": verify_script(root / "unknown.lua", gateway.headers, unknown),
        }
        _measured(gateway, scripts["known"], 64, 2)  # warm-up; the log writer runs from here on
        pin_gateway(gateway.server.proc.pid)  # type: ignore[union-attr]
        orders = [("known", "unknown", "control"), ("unknown", "control", "known"), ("control", "known", "unknown")]
        for connections, rounds in ((64, args.rounds), (8, args.rounds)):
            runs: dict[str, list[dict[str, Any]]] = {"known": [], "unknown": [], "control": []}
            for index in range(rounds):  # short rounds, rotating order: a drift of the machine hits all three
                for name in orders[index % 3]:
                    runs[name].append(_measured(gateway, scripts[name], connections, args.seconds))
            suffix = "" if connections == 64 else f"_{connections}c"
            for other, label in (("unknown", "unknown_known"), ("control", "known_known")):
                pairs = list(zip(runs[other], runs["known"], strict=True))
                result[f"{label}_throughput_ratio{suffix}"] = round(
                    statistics.median(o["rps"] / k["rps"] for o, k in pairs), 3
                )
                result[f"{label}_cpu_ratio{suffix}"] = round(
                    statistics.median(o["cpu_us"] / k["cpu_us"] for o, k in pairs), 3
                )
                result[f"{label}_gateway_cpu_ratio{suffix}"] = round(
                    statistics.median(o["gateway_cpu_us"] / k["gateway_cpu_us"] for o, k in pairs), 3
                )
            result[f"unknown_known_throughput_ratios{suffix}"] = [
                round(u["rps"] / k["rps"], 3) for u, k in zip(runs["unknown"], runs["known"], strict=True)
            ]
            for name in ("known", "unknown"):
                result[f"{name}_rps{suffix}"] = round(statistics.median(r["rps"] for r in runs[name]))
                result[f"{name}_cpu_us{suffix}"] = round(statistics.median(r["cpu_us"] for r in runs[name]))

        flood = flood_script(root / "flood.lua", args.flood_rate / 4)
        alone: list[float] = []
        flooded: list[float] = []
        flood_requests = refused = 0
        events_before = _anonymous_events(gateway.data_dir)
        for _ in range(args.flood_rounds):
            alone.append(_measured(gateway, scripts["known"], 64, args.flood_seconds)["rps"])
            flooder = subprocess.Popen(  # noqa: S603 (our own wrk, our own loopback URL)
                _pinned(
                    [_wrk_path(), "-t1", "-c4", f"-d{args.flood_seconds + 1}s", "-s", str(flood), gateway.url("/")]
                ),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            try:
                time.sleep(0.5)
                run = _measured(gateway, scripts["known"], 64, args.flood_seconds, strict=False)
                flooded.append(run["rps"])
                refused += run["non_2xx"]
            finally:
                out, _ = flooder.communicate(timeout=args.flood_seconds + 60)
            match = _REQUESTS.search(out)
            flood_requests += int(match.group(1)) if match else 0
        time.sleep(1.5)  # the last second's counting event
        # What one refused anonymous request costs the gateway: the flood alone, unpaced, for a while.
        unpaced = flood_script(root / "unpaced.lua", 1_000_000)
        pid: int = gateway.server.proc.pid  # type: ignore[union-attr]
        before = cpu_seconds(pid)
        alone_flood = wrk(gateway.url("/"), unpaced, 8, args.flood_seconds)
        after = cpu_seconds(pid)
        refusal_cpu_us = (after[0] - before[0]) / max(alone_flood["requests"], 1) * 1e6
        result.update(
            flood_rate=args.flood_rate,
            flood_verify_ratio=round(statistics.median(f / a for f, a in zip(flooded, alone, strict=True)), 3),
            flood_verify_rps=round(statistics.median(flooded)),
            verify_alone_rps=round(statistics.median(alone)),
            flood_requests=flood_requests,
            flood_events_logged=_anonymous_events(gateway.data_dir) - events_before,
            flood_verify_not_200=refused,  # must be 0: no audit_unavailable, no rate_limited
            flood_refusal_gateway_cpu_us=round(refusal_cpu_us, 1),
            flood_refusals_rps_alone=round(alone_flood["rps"]),
        )
        if refused:
            result["error"] = f"{refused} verifications were not answered 200 during the flood"
    finally:
        gateway.stop()
    result["bench_seconds"] = round(time.perf_counter() - started, 1)
    return result


if __name__ == "__main__":
    sys.exit(report(measure()))
