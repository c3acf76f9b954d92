"""`make bench`: every benchmark in one run, one JSON line.

The gateway's headline figures are at the top level (`bare_rps`, `verify_rps`, `lookup_rps`,
`verify_ratio`, `lookup_ratio`, `*_p50_ms`, `*_p99_ms`: the gateway with everything on against a bare
endpoint on the same server, driven by the same load generator); each benchmark's full result is under
its name. Loopback only, bounded in count and time.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from loadtests import (
    bench_audit,
    bench_bulk,
    bench_console,
    bench_events,
    bench_fastpath,
    bench_hardening,
    bench_identity,
    bench_log,
    bench_ratelimit,
    bench_tlog,
)

HEADLINE = (
    "bare_rps",
    "verify_rps",
    "lookup_rps",
    "verify_ratio",
    "verify_ratios",
    "lookup_ratio",
    "bare_p50_ms",
    "bare_p99_ms",
    "verify_p50_ms",
    "verify_p99_ms",
    "lookup_p50_ms",
    "lookup_p99_ms",
    "half_load_rps",
    "verify_half_utilisation",
    "bare_half_p99_ms",
    "verify_half_p99_ms",
    "verify_half_p99_over_bare",
    "verify_half_p99_ratios",
    "bare_gateway_cpu_us",
    "verify_gateway_cpu_us",
    "lookup_gateway_cpu_us",
    "verify_cpu_ratio",
    "logged_bare_rps",
    "logged_bare_ratio",
    "logged_bare_gateway_cpu_us",
    "logged_bare_log_cpu_us",
)
# The access log's figures (wrk, one worker): named for what they measure, beside the identity
# benchmark's closed-loop figures above.
LOG_HEADLINE = (
    "logged_bare_ratio_wrk",
    "verify_ratio_wrk",
    "logged_bare_ratio_8c",
    "verify_ratio_8c",
    "verify_p99_over_bare",
    "verify_p99_over_bare_8c",
    "log_cpu_us",
    "log_cpu_us_8c",
    "workers_2_ratio",
    "soak_rss_growth",
)
HARDENING_HEADLINE = (
    "unknown_known_throughput_ratio",
    "unknown_known_cpu_ratio",
    "known_known_throughput_ratio",
    "known_known_cpu_ratio",
    "unknown_known_throughput_ratio_8c",
    "unknown_known_cpu_ratio_8c",
    "flood_verify_ratio",
    "flood_verify_not_200",
)


def main() -> int:
    identity = bench_identity.measure([])
    result: dict[str, Any] = {key: identity[key] for key in HEADLINE if key in identity}
    result["identity"] = identity
    result["ratelimit"] = bench_ratelimit.measure([])
    result["audit"] = bench_audit.measure([])
    result["tlog"] = bench_tlog.measure([])
    result["bulk"] = bench_bulk.measure([])
    result["events"] = bench_events.measure([])
    result["console"] = bench_console.measure([])
    log = bench_log.measure(["--soak-seconds", "600"])
    result.update({key: log[key] for key in LOG_HEADLINE if key in log})
    result["log"] = log
    result["fastpath"] = bench_fastpath.measure([])
    hardening = bench_hardening.measure([])
    result.update({key: hardening[key] for key in HARDENING_HEADLINE if key in hardening})
    result["hardening"] = hardening
    print(json.dumps(result))
    return (
        1
        if any(
            "error" in part
            for part in (
                result["ratelimit"],
                result["audit"],
                result["tlog"],
                result["bulk"],
                result["events"],
                result["console"],
                result["fastpath"],
                log,
                hardening,
            )
        )
        else 0
    )


if __name__ == "__main__":
    sys.exit(main())
