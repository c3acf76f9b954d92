"""`make loadtest`: serve a local gateway on the demo set with a seeded register, run the Locust
scenarios headless for a bounded time against it (loopback only), write CSV and HTML reports, and exit
non-zero when a stated SLO is missed.

SLOs (on the whole run): unexpected failures ≤ 0.5% of requests; p99 ≤ 500 ms. Override with
LOADTEST_USERS, LOADTEST_DURATION (e.g. 60s), LOADTEST_MAX_ERROR_RATIO, LOADTEST_MAX_P99_MS.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx

from gateway.cli import _ensure_demo_keys
from gateway.connectors.population import seed_register
from gateway.settings import Settings
from tests.support.servers import REPO, free_port, wait_until

SCENARIOS = (
    "/oauth2/token",
    "/v1/verify",
    "/v1/lookup",
    "/v1/consents",
    "/v1/verify (forged token)",
    "/v1/lookup (no consent)",
    "/v1/verify (refused claim)",
)


def main() -> int:
    users = os.environ.get("LOADTEST_USERS", "30")
    duration = os.environ.get("LOADTEST_DURATION", "60s")
    max_error_ratio = float(os.environ.get("LOADTEST_MAX_ERROR_RATIO", "0.005"))
    max_p99_ms = float(os.environ.get("LOADTEST_MAX_P99_MS", "500"))
    data = Path(os.environ.get("LOADTEST_DATA_DIR", REPO / "var" / "loadtest"))
    reports = Path(os.environ.get("LOADTEST_REPORTS", REPO / "loadtests" / "reports"))
    reports.mkdir(parents=True, exist_ok=True)
    settings = Settings(policies_dir=REPO / "policies", data_dir=data)
    _ensure_demo_keys(settings)
    register = data / "register.db"
    if not register.exists():
        seed_register(register, 50_000, 2026)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "GATEWAY_POLICIES_DIR": str(settings.policies_dir),
        "GATEWAY_DATA_DIR": str(data),
        "GATEWAY_ISSUER": base,
        "GATEWAY_UNAUTHENTICATED_RATE_LIMITS": "burst:200/1s",
    }
    serve = [sys.executable, "-m", "gateway.cli", "serve", "--port", str(port)]
    with open(reports / "gateway.log", "wb") as log:
        gateway = subprocess.Popen(serve, env=env, stdout=log, stderr=subprocess.STDOUT)  # noqa: S603
    try:
        wait_until(lambda: httpx.get(f"{base}/readyz", timeout=2).status_code == 200, 60, "gateway")
        locust = subprocess.run(  # noqa: S603 - our own interpreter and module
            [
                sys.executable,
                "-m",
                "locust",
                "-f",
                str(REPO / "loadtests" / "locustfile.py"),
                "--headless",
                "-u",
                users,
                "-r",
                "10",
                "-t",
                duration,
                "--host",
                base,
                "--csv",
                str(reports / "jamu"),
                "--html",
                str(reports / "jamu.html"),
                "--only-summary",
                "--stop-timeout",
                "5",
            ],
            env={**env, "JAMU_LOADTEST_KEYS": str(data / "demo-clients"), "JAMU_LOADTEST_REGISTER": str(register)},
            timeout=3600,
            check=False,
        )
    finally:
        gateway.terminate()
        gateway.wait(timeout=30)
    with open(reports / "jamu_stats.csv", encoding="utf-8") as stats:
        rows = {row["Name"]: row for row in csv.DictReader(stats)}
    total = rows["Aggregated"]
    # Every scenario must have run: a user that fails to start shows up only as silence.
    silent = [name for name in SCENARIOS if int(rows.get(name, {}).get("Request Count", 0)) == 0]
    requests, failures = int(total["Request Count"]), int(total["Failure Count"])
    p99 = float(total["99%"])
    summary = {
        "requests": requests,
        "failures": failures,
        "error_ratio": round(failures / max(requests, 1), 5),
        "rps": round(float(total["Requests/s"]), 1),
        "p50_ms": float(total["50%"]),
        "p99_ms": p99,
        "slo_error_ratio": max_error_ratio,
        "slo_p99_ms": max_p99_ms,
        "reports": str(reports),
    }
    missed = [
        name
        for name, bad in (
            ("error_ratio", summary["error_ratio"] > max_error_ratio),
            ("p99", p99 > max_p99_ms),
            ("requests", requests == 0),
            ("locust", locust.returncode not in (0, 1)),
            (f"scenarios without requests: {', '.join(silent)}", bool(silent)),
        )
        if bad
    ]
    summary["slo_missed"] = missed
    print(json.dumps(summary))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
