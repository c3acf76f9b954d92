"""Strike deceased voters from a CSV voter roll by pulling an electoral commission's death feed.

A reference consumer of Jamu's pull feed, written as a commission's own developers would: it holds only
its client key, speaks the public API, and keeps its own state beside the roll.

    python strike.py --gateway https://jamu.example.ml --client ceni-roll-sync --key ceni-roll-sync.pem \\
        --subscription deaths_for_roll --roll roll.csv [--state roll.csv.state.json]

- The roll is a CSV with at least `nin` and `status` (`listed` or `struck`); `struck_on` and
  `struck_by` are added. A death strikes the voter; its correction updates the date; its void restores
  the voter struck by it.
- The state file keeps the feed's cursor and every event id already applied: the consumer's own dedupe,
  so an event seen twice (a retry, a replay, a crash between the roll and the state) is applied once.
- Every ten seconds and at the end, the roll is written (when it changed), then the state, each
  atomically: a crash in between replays events the dedupe then skips, and a long backlog is worked
  through over as many runs as it takes.
- A death without `nin` (the subscription no longer carries it) stops the run before the cursor moves
  past it: nothing is skipped silently.
- Each event is parsed and checked as a CloudEvent 1.0 (the `cloudevents` SDK) before it is applied.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from cloudevents.core.bindings.http import HTTPMessage, from_http_event
from joserfc import jwt
from joserfc.jwk import ECKey, OKPKey

FIELDS = ("struck_on", "struck_by")


def token(gateway: str, client_id: str, key_path: Path) -> str:
    """An access token by `private_key_jwt` (RFC 7523): the only secret this consumer holds is its key."""
    pem = key_path.read_bytes()
    try:
        key: Any = OKPKey.import_key(pem)
        alg = "Ed25519"
    except Exception:
        key, alg = ECKey.import_key(pem), "ES256"
    now = int(time.time())
    endpoint = f"{gateway}/oauth2/token"
    assertion = jwt.encode(
        {"alg": alg},
        {
            "iss": client_id,
            "sub": client_id,
            "aud": endpoint,
            "iat": now,
            "exp": now + 60,
            "jti": secrets.token_urlsafe(16),
        },
        key,
        algorithms=[alg],
    )
    response = httpx.post(
        endpoint,
        data={
            "grant_type": "client_credentials",
            "scope": "events:read",
            "client_assertion": assertion,
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        },
        timeout=30,
    )
    response.raise_for_status()
    return str(response.json()["access_token"])


def write_atomically(path: Path, text: str) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(handle, "w", encoding="utf-8", newline="") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, path)


def apply(event: dict[str, Any], roll: dict[str, dict[str, str]], struck_by: dict[str, str]) -> bool:
    """One death event on the roll; whether it changed a line."""
    kind = event["type"].removeprefix("ml.etatcivil.")
    if kind == "death.voided":
        nin = struck_by.get(event["voids"])
        voter = roll.get(nin or "")
        if voter is not None and voter["status"] == "struck" and voter["struck_by"] == event["voids"]:
            voter.update(status="listed", struck_on="", struck_by="")
            return True
        return False
    nin = event["data"].get("nin")
    voter = roll.get(nin or "")
    if voter is None:
        return False
    if kind == "death" and voter["status"] == "listed":
        voter.update(status="struck", struck_on=event["data"].get("death_date") or "", struck_by=event["id"])
        return True
    if kind == "death.corrected" and voter["struck_by"] == event["corrects"]:
        voter["struck_on"] = event["data"].get("death_date") or voter["struck_on"]
        return True
    return False


class Stop(Exception):
    """The feed cannot be applied as it comes: the message says why; nothing past it was taken."""


SAVE_EVERY_S = 10.0


def _save(
    roll_path: Path | None,
    columns: list[str],
    rows: list[dict[str, str]],
    roll: dict[str, dict[str, str]],
    state_path: Path,
    state: dict[str, Any],
) -> None:
    """The roll (when it changed), then the state: a crash in between replays what the dedupe skips."""
    if roll_path is not None:
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(roll[row["nin"]] for row in rows)
        write_atomically(roll_path, out.getvalue())
    write_atomically(state_path, json.dumps(state))


def run(
    gateway: str, client_id: str, key: Path, subscription: str, roll_path: Path, state_path: Path
) -> dict[str, int]:
    fresh = {"cursor": None, "seen": [], "struck_by": {}}
    state = json.loads(state_path.read_text()) if state_path.exists() else fresh
    seen, struck_by = set(state["seen"]), dict(state["struck_by"])
    with open(roll_path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = list(reader.fieldnames or [])
        rows = list(reader)
    columns += [f for f in FIELDS if f not in columns]
    roll = {row["nin"]: {**{f: "" for f in FIELDS}, **row} for row in rows}
    http = httpx.Client(base_url=gateway, timeout=30)
    http.headers["Authorization"] = f"Bearer {token(gateway, client_id, key)}"
    counts = {"events": 0, "duplicates": 0, "changed": 0}
    cursor = state["cursor"]
    saved_at, changed_since = time.monotonic(), False
    while True:
        params = {"subscription": subscription, "limit": 500, **({"after": cursor} if cursor else {})}
        page = http.get("/v1/events", params=params)
        if page.status_code == 401:  # the token ran out during a long backlog
            http.headers["Authorization"] = f"Bearer {token(gateway, client_id, key)}"
            page = http.get("/v1/events", params=params)
        page.raise_for_status()
        doc = page.json()
        for raw in doc["events"]:
            event = from_http_event(
                HTTPMessage(headers={"content-type": "application/cloudevents+json"}, body=json.dumps(raw).encode())
            )
            if event.get_id() in seen:
                counts["duplicates"] += 1
                continue
            if raw["type"] != "ml.etatcivil.death.voided" and "nin" not in raw["data"]:
                raise Stop(f"event {raw['id']} carries no nin: the subscription must list nin")
            counts["events"] += 1
            if raw["type"] == "ml.etatcivil.death":
                struck_by[raw["id"]] = raw["data"]["nin"]
            changed = apply(raw, roll, struck_by)
            counts["changed"] += changed
            changed_since = changed_since or changed
            seen.add(event.get_id())
        cursor = doc["next_cursor"]
        # Every few seconds and at the end, not every page: a long backlog is not rewritten page after page.
        if not doc["events"] or time.monotonic() - saved_at > SAVE_EVERY_S:
            _save(
                roll_path if changed_since else None,
                columns,
                rows,
                roll,
                state_path,
                {"cursor": cursor, "seen": sorted(seen), "struck_by": struck_by},
            )
            saved_at, changed_since = time.monotonic(), False
        if not doc["events"]:
            return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gateway", required=True)
    parser.add_argument("--client", required=True)
    parser.add_argument("--key", required=True, type=Path)
    parser.add_argument("--subscription", default="deaths_for_roll")
    parser.add_argument("--roll", required=True, type=Path)
    parser.add_argument("--state", type=Path)
    args = parser.parse_args(argv)
    state = args.state or args.roll.with_name(args.roll.name + ".state.json")
    try:
        counts = run(args.gateway.rstrip("/"), args.client, args.key, args.subscription, args.roll, state)
    except Stop as exc:
        print(f"strike: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(counts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
