"""Benchmark: life events (docs/life-events.md), on one served gateway with everything on.

- **Declarations**: deaths posted by wrk (a C load generator), each a different person and key, at 64
  and at 8 connections: declarations a second, each with its register change, its version and its
  outbox row, committed before its answer. Interleaved with the bare baseline (a FastAPI `POST` parsing
  a verification-like body on the same stack): `declare_ratio`.
- **Pull**: wrk fetching pages of 1,000 events from the death feed, at 8 connections: events a second,
  each with its own access-log event (`events.read`), durable before the answer.
- **Push**: a backlog held while the subscriber is down, then drained to a loopback receiver (a bare
  ASGI app under uvicorn that answers 204): events a second, and the gateway's RSS while it drains.
- **Backlog**: `--backlog` events written straight into the register's feed (as a long outage would
  leave them), then drained for up to `--backlog-seconds`: the gateway's RSS sampled each second, its
  growth from the first samples to the last, and the drain rate.

`python -m loadtests.bench_events --help`. Needs wrk on PATH. Loopback only, bounded in count and time.
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
import yaml

from gateway.connectors.population import seed_register
from loadtests.bench_bulk import rss_kib
from loadtests.bench_hardening import _lua_string, wrk
from loadtests.harness import cpu_seconds, in_scratch_dir, report
from tests.support.keys import jwks_of, new_key, token_form
from tests.support.realm import build_realm
from tests.support.servers import GatewayProcess, free_port

ROLL = {"legal_basis": "Loi électorale", "consent": "not_required", "operations": ["verify"]}


def declare_script(path: Path, headers: dict[str, str], nins: list[str], prefix: str) -> Path:
    """Deaths of `nins` in turn, each with its own Idempotency-Key."""
    lines = [
        "local nins = {",
        *(f"  '{n}'," for n in nins),
        "}",
        "wrk.method = 'POST'",
        "wrk.headers['Content-Type'] = 'application/json'",
        *(f"wrk.headers[ {_lua_string(k)} ] = {_lua_string(v)}" for k, v in headers.items()),
        "local i = 0",
        "request = function()",
        "  i = i + 1",
        "  local nin = nins[(i - 1) % #nins + 1]",
        f"  wrk.headers['Idempotency-Key'] = '{prefix}' .. i",
        "  return wrk.format(nil, '/v1/declarations', nil,",
        '    \'{"type":"death","nin":"\' .. nin .. \'","data":{"death_date":"2026-11-01"}}\')',
        "end",
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def bare_script(path: Path) -> Path:
    body = orjson.dumps(
        {
            "nin": "120394857602914",
            "purpose": "voter_roll",
            "claims": {"family_name": "Traoré", "given_names": "Aminata"},
            "predicates": [{"name": "alive"}],
        }
    ).decode()
    path.write_text(
        "\n".join(
            [
                "wrk.method = 'POST'",
                "wrk.headers['Content-Type'] = 'application/json'",
                f"wrk.body = {_lua_string(body)}",
                "request = function() return wrk.format(nil, '/bare') end",
            ]
        )
        + "\n"
    )
    return path


def pull_script(path: Path, headers: dict[str, str], cursors: list[str]) -> Path:
    lines = [
        "local cursors = {",
        *(f"  '{c}'," for c in cursors),
        "}",
        *(f"wrk.headers[ {_lua_string(k)} ] = {_lua_string(v)}" for k, v in headers.items()),
        "local i = 0",
        "request = function()",
        "  i = i % #cursors + 1",
        "  return wrk.format('GET', '/v1/events?subscription=deaths&limit=1000&after=' .. cursors[i])",
        "end",
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


class World:
    def __init__(self, root: Path, people: int, sink_port: int) -> None:
        self.root = root
        self.realm = build_realm(root)
        keys = {"centre-app": new_key(), "electoral-app": new_key()}
        self.realm.keys.update(keys)
        (self.realm.policies_dir / "centre.yaml").write_text(
            yaml.safe_dump(
                {
                    "id": "centre",
                    "name": "Centre",
                    "clients": [
                        {
                            "client_id": "centre-app",
                            "auth": "private_key_jwt",
                            "jwks": jwks_of(keys["centre-app"]),
                            "scopes": ["register:declare"],
                        }
                    ],
                }
            )
        )
        (self.realm.policies_dir / "electoral.yaml").write_text(
            yaml.safe_dump(
                {
                    "id": "electoral",
                    "name": "Electoral",
                    "clients": [
                        {
                            "client_id": "electoral-app",
                            "auth": "private_key_jwt",
                            "jwks": jwks_of(keys["electoral-app"]),
                            "scopes": ["events:read"],
                        }
                    ],
                    "purposes": {"roll": ROLL},
                    "subscriptions": {
                        "deaths": {"purpose": "roll", "events": ["death"], "attributes": ["nin", "death_date"]},
                        "deaths_push": {
                            "purpose": "roll",
                            "events": ["death"],
                            "attributes": ["nin", "death_date"],
                            "endpoint": f"http://127.0.0.1:{sink_port}/hooks",
                            "endpoint_internal": True,
                        },
                    },
                }
            )
        )
        self.register = self.realm.data_dir / "register.db"
        seed_register(self.register, people, 5)
        self.gateway: GatewayProcess | None = None
        self.sink_port = sink_port
        self.sink: GatewayProcess | None = None

    def start(self, log: str) -> GatewayProcess:
        self.gateway = GatewayProcess(
            self.realm.env(GATEWAY_EVENTS_RETRY_BACKOFF_S="3600", GATEWAY_AUDIT_SEAL_INTERVAL_S="1"),
            factory="loadtests.apps:create_durable",
        ).start(self.root / log)
        return self.gateway

    def headers(self, client_id: str) -> dict[str, str]:
        assert self.gateway is not None
        url = self.gateway.base_url
        form = token_form(client_id, self.realm.keys[client_id], f"{url}/oauth2/token")
        token = httpx.post(f"{url}/oauth2/token", data=form, timeout=10).json()["access_token"]
        return {"Authorization": f"Bearer {token}"}

    def start_sink(self) -> None:
        self.sink = GatewayProcess({}, factory="loadtests.apps:create_webhook_sink", port=self.sink_port)
        self.sink.start(self.root / "sink.log")  # its GET answers 200, /healthz included

    def stop(self) -> None:
        for process in (self.gateway, self.sink):
            if process is not None:
                process.stop()


def _alive(register: Path, count: int) -> list[str]:
    with sqlite3.connect(register) as db:
        return [
            n
            for (n,) in db.execute(
                "SELECT nin FROM people WHERE record_status = 'active' AND death_date IS NULL ORDER BY nin LIMIT ?",
                (count,),
            )
        ]


def _push_status(world: World, headers: dict[str, str]) -> dict[str, Any]:
    """The push state; a token that ran out during a long drain is replaced."""
    assert world.gateway is not None
    url = f"{world.gateway.base_url}/v1/events/subscriptions/deaths_push"
    response = httpx.get(url, headers=headers, timeout=30)
    if response.status_code == 401:
        headers.update(world.headers("electoral-app"))
        response = httpx.get(url, headers=headers, timeout=30)
    response.raise_for_status()
    return response.json()["push"]


def _drain(world: World, headers: dict[str, str], limit_s: float) -> dict[str, Any]:
    """Start the receiver, replay from the start, and follow until the backlog is gone or time is up."""
    assert world.gateway is not None and world.gateway.proc is not None
    pid = world.gateway.proc.pid
    world.start_sink()
    httpx.post(
        f"{world.gateway.base_url}/v1/events/subscriptions/deaths_push/replay", json={}, headers=headers, timeout=30
    ).raise_for_status()
    started = time.perf_counter()
    backlog = _push_status(world, headers)["backlog"]
    samples: list[int] = []
    cpu_before = cpu_seconds(pid)
    left = backlog
    while time.perf_counter() - started < limit_s:
        time.sleep(1.0)
        samples.append(rss_kib(pid))
        left = _push_status(world, headers)["backlog"]
        if left == 0:
            break
    seconds = time.perf_counter() - started
    cpu_after = cpu_seconds(pid)
    delivered = backlog - left
    assert world.sink is not None
    received = int(httpx.get(f"{world.sink.base_url}/count", timeout=10).text)
    head = samples[: max(1, len(samples) // 10)]
    tail = samples[-max(1, len(samples) // 10) :]
    return {
        "backlog": backlog,
        "delivered": delivered,
        "received": received,
        "seconds": round(seconds, 1),
        "events_per_s": round(delivered / seconds),
        "drained": left == 0,
        "rss_mib_first": round(statistics.median(head) / 1024, 1),
        "rss_mib_last": round(statistics.median(tail) / 1024, 1),
        "rss_mib_max": round(max(samples) / 1024, 1),
        "cpu_us_per_event": round(
            (cpu_after[0] - cpu_before[0] + cpu_after[1] - cpu_before[1]) / max(delivered, 1) * 1e6
        ),
    }


def _fill_backlog(register: Path, count: int) -> None:
    """`count` deaths as a long outage would leave them in the feed, written straight into the register
    file while the gateway is stopped (the declarations path's own rate is measured above)."""
    with sqlite3.connect(register) as db:
        db.execute("PRAGMA journal_mode=OFF")
        db.execute("PRAGMA synchronous=OFF")
        position = db.execute("SELECT coalesce(max(position), 0) FROM declarations").fetchone()[0]
        sequence = db.execute(
            "SELECT coalesce(max(sequence), 0) FROM feed WHERE subscription = 'electoral/deaths_push'"
        ).fetchone()[0]
        nins = _alive(register, 50_000)
        batch = 50_000
        for start in range(0, count, batch):
            rows, feed = [], []
            for i in range(start, min(count, start + batch)):
                position += 1
                sequence += 1
                nin = nins[i % len(nins)]
                record = orjson.dumps({"nin": nin, "death_date": "2026-11-01", "record_status": "deceased"})
                rows.append((position, str(uuid.uuid4()), nin, record))
                feed.append(("electoral/deaths_push", sequence, position))
            db.executemany(
                "INSERT INTO declarations (position, event_id, type, event_type, nin, version, data, "
                "record, before, changed, declared_at, administration, client_id) VALUES (?, ?, 'death', "
                "'death', ?, 2, '{}', ?, '{}', '{}', '2026-11-01T00:00:00.000000Z', 'centre', 'centre-app')",
                rows,
            )
            db.executemany("INSERT INTO feed VALUES (?, ?, ?)", feed)
            db.commit()


def measure(argv: list[str] | None = None) -> dict[str, Any]:
    if shutil.which("wrk") is None:
        return {"bench": "events", "error": "wrk is not on PATH (Debian package wrk)"}
    return in_scratch_dir("jamu-bench-events-", lambda root: _measure(root, argv))


def _measure(root: Path, argv: list[str] | None) -> dict[str, Any]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--people", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of bare and declarations at each concurrency")
    parser.add_argument("--seconds", type=int, default=5, help="each wrk run")
    parser.add_argument("--pull-seconds", type=int, default=5)
    parser.add_argument("--drain-seconds", type=float, default=120.0)
    parser.add_argument("--backlog", type=int, default=1_000_000)
    parser.add_argument("--backlog-seconds", type=float, default=1500.0, help="at most this long draining it")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    result: dict[str, Any] = {"bench": "events", "people": args.people}
    world = World(root, args.people, free_port())
    try:
        gateway = world.start("gateway.log")
        centre = world.headers("centre-app")
        electoral = world.headers("electoral-app")
        nins = _alive(world.register, args.people)
        wrk(gateway.base_url, declare_script(root / "warm.lua", centre, nins[:500], "warm-"), 8, 1)
        nins = nins[500:]
        bare = bare_script(root / "bare.lua")
        slice_size = len(nins) // (2 * args.rounds)
        for connections in (64, 8):
            bares, declares = [], []
            for index in range(args.rounds):
                offset = (0 if connections == 64 else args.rounds) + index
                script = declare_script(
                    root / f"d{connections}-{index}.lua",
                    centre,
                    nins[offset * slice_size : (offset + 1) * slice_size],
                    f"c{connections}-{index}-",
                )
                bares.append(wrk(gateway.base_url, bare, connections, args.seconds))
                declares.append(wrk(gateway.base_url, script, connections, args.seconds))
                if declares[-1]["requests"] > slice_size:
                    raise RuntimeError("the run declared more deaths than it had people: raise --people")
            suffix = "" if connections == 64 else "_8c"
            good = [d["rps"] * (1 - d["non_2xx"] / max(d["requests"], 1)) for d in declares]
            result[f"declarations_per_s{suffix}"] = round(statistics.median(good))
            result[f"bare_rps{suffix}"] = round(statistics.median(b["rps"] for b in bares))
            result[f"declare_ratio{suffix}"] = round(
                statistics.median(g / b["rps"] for g, b in zip(good, bares, strict=True)), 3
            )
            result[f"declare_p99_ms{suffix}"] = statistics.median(d["p99_ms"] for d in declares)
            result[f"declare_refused{suffix}"] = sum(d["non_2xx"] for d in declares)

        feed = httpx.get(
            f"{gateway.base_url}/v1/events",
            params={"subscription": "deaths", "limit": 1000},
            headers=electoral,
            timeout=60,
        ).json()
        cursors = []
        cursor = None
        while True:  # every page's cursor, so wrk reads full pages from all over the feed
            params: dict[str, Any] = {"subscription": "deaths", "limit": 1000, **({"after": cursor} if cursor else {})}
            feed = httpx.get(f"{gateway.base_url}/v1/events", params=params, headers=electoral, timeout=60).json()
            if len(feed["events"]) < 1000:
                break
            cursors.append(cursor or "")
            cursor = feed["next_cursor"]
        result["feed_events"] = int(feed["events"][-1]["sequence"]) if feed["events"] else len(cursors) * 1000
        cursors = cursors[:200] or [""]  # a feed shorter than a page: its start, read again and again
        pull = wrk(gateway.base_url, pull_script(root / "pull.lua", electoral, cursors), 8, args.pull_seconds)
        result["pull_events_per_s_8c"] = round(pull["rps"] * 1000)
        result["pull_page_p99_ms_8c"] = pull["p99_ms"]
        pull1 = wrk(gateway.base_url, pull_script(root / "pull.lua", electoral, cursors), 1, args.pull_seconds)
        result["pull_events_per_s_1c"] = round(pull1["rps"] * 1000)

        result["push"] = _drain(world, electoral, args.drain_seconds)
        world.stop()

        _fill_backlog(world.register, args.backlog)
        world.start("backlog.log")
        result["backlog"] = _drain(world, world.headers("electoral-app"), args.backlog_seconds)
    finally:
        world.stop()
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


if __name__ == "__main__":
    sys.exit(report(measure(sys.argv[1:])))
