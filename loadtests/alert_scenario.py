"""Load scenario: abuse among ordinary traffic, and the console's alerts that must find it.

A served gateway (a seeded register, its own policy set, the alert thresholds below) receives, at the
same time and for `--seconds`:

- ordinary traffic: two clients of the electoral commission verifying a few hundred known voters
  again and again (a few unknown NINs among them, as typing errors make);
- an **enumeration**: a client verifying NINs that mostly do not exist;
- a **scraper**: a client verifying a different known person at every call;
- a **token-failure storm**: token requests with a wrong secret from one address.

Then it reads the alerts the console raised (as an officer would, through `/console/alerts`) and
checks that each abuse raised its alert and that the ordinary clients raised none. It prints one JSON
line; the exit code is 1 when an expectation failed.

`python -m loadtests.alert_scenario --help`. Loopback only, bounded in count and time.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from gateway.connectors.population import population, seed_register
from loadtests.harness import in_scratch_dir, report
from tests.support.console import ConsoleClient, add_officer
from tests.support.keys import jwks_of, new_key, token_form
from tests.support.realm import Realm
from tests.support.servers import GatewayProcess

ALERTS = {
    "enumeration": {"window_s": 120, "min_checks": 40, "max_unknown_share": 0.3},
    "scraping": {"min_persons": 300, "baseline_factor": 5},
    "token_failures": {"window_s": 60, "max_failures": 50},
    "predicate_probing": {"window_s": 600, "max_checks": 100_000},
}
ORDINARY = ("roll-a", "roll-b")
ABUSERS = {"enumerator": "enumeration", "scraper": "scraping"}
PEOPLE = 3000


def _realm(root: Path) -> Realm:
    policies = root / "policies"
    policies.mkdir(parents=True)
    realm = Realm(policies_dir=policies, data_dir=root / "var")
    clients = []
    for client_id in (*ORDINARY, *ABUSERS):
        realm.keys[client_id] = new_key("Ed25519")
        clients.append(
            {
                "client_id": client_id,
                "auth": "private_key_jwt",
                "jwks": jwks_of(realm.keys[client_id]),
                "scopes": ["identity:verify"],
            }
        )
    secret = "storm-secret-not-this-one"  # noqa: S105 (the storm never knows it)
    clients.append(
        {
            "client_id": "storm",
            "auth": "client_secret_basic",
            "secret_hash": "sha256:" + hashlib.sha256(secret.encode()).hexdigest(),
            "scopes": ["identity:verify"],
        }
    )
    (policies / "elections.yaml").write_text(
        yaml.safe_dump(
            {
                "id": "elections",
                "name": "Commission électorale",
                "clients": clients,
                "purposes": {
                    "voter_roll": {
                        "legal_basis": "Loi électorale",
                        "consent": "not_required",
                        "operations": ["verify"],
                        "claims": ["family_name"],
                        "predicates": ["alive"],
                    }
                },
                "rate_limits": [{"name": "burst", "limit": 10_000, "window": "1s"}],
            },
            allow_unicode=True,
        )
    )
    return realm


def _actor(
    gateway: GatewayProcess,
    realm: Realm,
    client_id: str,
    nins: list[str],
    stop: float,
    counts: dict[str, int],
    pause_s: float,
) -> None:
    with httpx.Client(base_url=gateway.base_url, timeout=10) as http:
        token = http.post(
            "/oauth2/token", data=token_form(client_id, realm.keys[client_id], f"{gateway.base_url}/oauth2/token")
        ).json()["access_token"]
        n = 0
        while time.monotonic() < stop:
            response = http.post(
                "/v1/verify",
                headers={"Authorization": f"Bearer {token}"},
                json={"nin": nins[n % len(nins)], "purpose": "voter_roll", "claims": {"family_name": "Traoré"}},
            )
            counts[client_id] = counts.get(client_id, 0) + (response.status_code == 200)
            n += 1
            time.sleep(pause_s)


def _storm(gateway: GatewayProcess, stop: float, counts: dict[str, int]) -> None:
    with httpx.Client(base_url=gateway.base_url, timeout=10) as http:
        while time.monotonic() < stop:
            response = http.post("/oauth2/token", data={"grant_type": "client_credentials"}, auth=("storm", "wrong"))
            counts["storm"] = counts.get("storm", 0) + (response.status_code == 401)
            time.sleep(0.01)


def play(root: Path, seconds: float) -> dict[str, Any]:
    realm = _realm(root)
    seed_register(realm.data_dir / "register.db", PEOPLE, 17)
    known = [p["nin"] for p in population(PEOPLE, 17)]
    rng = random.Random(9)  # noqa: S311 - synthetic traffic
    alerts_file = root / "alerts.yaml"
    alerts_file.write_text(yaml.safe_dump(ALERTS))
    env = realm.env(
        GATEWAY_ALERTS_FILE=str(alerts_file),
        GATEWAY_CONSOLE_ALERT_POLL_S="0.5",
        GATEWAY_UNAUTHENTICATED_RATE_LIMITS="burst:200/1s",
    )
    gateway = GatewayProcess(env, factory="gateway.cli:app_from_env")
    officer = add_officer(gateway.env, "scenario-officer", "officer")
    gateway.start(root / "gateway.log")
    try:
        stop = time.monotonic() + seconds
        counts: dict[str, int] = {}
        voters = known[:200]
        ordinary = [
            voters[i % len(voters)] if rng.random() > 0.03 else f"9{rng.randrange(10**14):014d}" for i in range(400)
        ]
        unknown = [f"8{rng.randrange(10**14):014d}" if rng.random() < 0.7 else rng.choice(voters) for _ in range(2000)]
        actors = [
            threading.Thread(target=_actor, args=(gateway, realm, "roll-a", ordinary, stop, counts, 0.02)),
            threading.Thread(target=_actor, args=(gateway, realm, "roll-b", ordinary[::-1], stop, counts, 0.02)),
            threading.Thread(target=_actor, args=(gateway, realm, "enumerator", unknown, stop, counts, 0.02)),
            threading.Thread(target=_actor, args=(gateway, realm, "scraper", known[200:], stop, counts, 0.005)),
            threading.Thread(target=_storm, args=(gateway, stop, counts)),
        ]
        for actor in actors:
            actor.start()
        for actor in actors:
            actor.join()
        console = ConsoleClient(gateway.base_url).signed_in(officer)
        raised: dict[str, set[str]] = {}
        deadline = time.monotonic() + 20
        expected = {"enumeration": {"enumerator"}, "scraping": {"scraper"}, "token_failures": {"127.0.0.1"}}
        while time.monotonic() < deadline:
            page = console.get("/console/alerts").text
            raised = {}
            for rule, key in re.findall(r'<tr data-rule="([a-z_]+)"><td>.*?</td><td>([^<]*)</td>', page):
                raised.setdefault(rule, set()).add(key)
            if all(keys <= raised.get(rule, set()) for rule, keys in expected.items()):
                break
            time.sleep(0.5)
        missing = {
            rule: sorted(keys - raised.get(rule, set()))
            for rule, keys in expected.items()
            if keys - raised.get(rule, set())
        }
        ordinary_alerts = sorted(f"{rule}:{key}" for rule, keys in raised.items() for key in keys if key in ORDINARY)
        result: dict[str, Any] = {
            "seconds": seconds,
            "requests": counts,
            "raised": {rule: sorted(keys) for rule, keys in raised.items()},
            "missing": missing,
            "ordinary_alerts": ordinary_alerts,
        }
        if missing or ordinary_alerts:
            result["error"] = "the alerts do not match the abuse played"
        return result
    finally:
        gateway.stop()


def measure(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="alert_scenario", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="how long the traffic plays")
    args = parser.parse_args(argv)
    return in_scratch_dir("jamu-bench-alerts-", lambda root: play(root, args.seconds))


def main() -> int:
    return report(measure(sys.argv[1:]))


if __name__ == "__main__":
    sys.exit(main())
