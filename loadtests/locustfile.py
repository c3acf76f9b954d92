"""Locust scenarios, one user class per administration of the demo set, against a local gateway.

Each user gets real tokens (private_key_jwt with the demo keys from `jamu demo`) and refreshes them
before they expire. Expected refusals (the share of invalid and unauthorised calls) count as successes
when they get the refusal they should, and as failures otherwise.

Environment: JAMU_LOADTEST_KEYS (the demo private keys' directory), JAMU_LOADTEST_REGISTER (the
register file, to draw NINs from), JAMU_LOADTEST_ISSUER (defaults to the host).
"""

from __future__ import annotations

import os
import random
import secrets
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from joserfc import jwt
from joserfc.jwk import OKPKey
from locust import FastHttpUser, between, events, task

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
PEOPLE: list[dict[str, Any]] = []


@events.init.add_listener
def _load_people(environment: Any, **_: Any) -> None:
    register = os.environ.get("JAMU_LOADTEST_REGISTER")
    if not register:
        return
    with sqlite3.connect(f"file:{register}?mode=ro", uri=True) as connection:
        connection.row_factory = sqlite3.Row
        PEOPLE.extend(
            dict(r)
            for r in connection.execute("SELECT * FROM people WHERE record_status = 'active' ORDER BY nin LIMIT 5000")
        )


class GatewayUser(FastHttpUser):
    abstract = True
    client_id = ""
    wait_time = between(0.05, 0.2)

    def on_start(self) -> None:
        keys = Path(os.environ.get("JAMU_LOADTEST_KEYS", "var/demo-clients"))
        self.key = OKPKey.import_key((keys / f"{self.client_id}.pem").read_bytes())
        self.issuer = os.environ.get("JAMU_LOADTEST_ISSUER", self.host)
        self.expires_at = 0.0
        self.refresh()

    def refresh(self) -> None:
        now = int(time.time())
        assertion = jwt.encode(
            {"alg": "Ed25519", "kid": self.key.thumbprint()},
            {
                "iss": self.client_id,
                "sub": self.client_id,
                "aud": f"{self.issuer}/oauth2/token",
                "iat": now,
                "exp": now + 60,
                "jti": secrets.token_urlsafe(12),
            },
            self.key,
            algorithms=["Ed25519"],
        )
        with self.client.post(
            "/oauth2/token",
            data={
                "grant_type": "client_credentials",
                "client_assertion_type": ASSERTION_TYPE,
                "client_assertion": assertion,
            },
            name="/oauth2/token",
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                response.failure(f"token: {response.status_code}")
                return
            body = response.json()
        self.headers = {"Authorization": f"Bearer {body['access_token']}"}
        self.expires_at = time.time() + body["expires_in"] - 30

    def call(self, path: str, body: dict[str, Any], expect: int = 200, name: str | None = None) -> Any:
        """One call; a 429 is honoured as a well-behaved client would (wait Retry-After, try again)."""
        for _ in range(3):
            if time.time() > self.expires_at:
                self.refresh()
            with self.client.post(
                path, json=body, headers=self.headers, name=name or path, catch_response=True
            ) as response:
                if response.status_code == 429 and expect != 429:
                    response.success()  # the limit doing its job
                    wait = float(response.headers.get("Retry-After", "1"))
                elif response.status_code != expect:
                    response.failure(f"expected {expect}, got {response.status_code}")
                    return None
                else:
                    response.success()  # an expected refusal is a success of the gateway
                    return response.json()
            time.sleep(min(wait, 5))
        return None

    def person(self) -> dict[str, Any]:
        return random.choice(PEOPLE)  # noqa: S311


class ElectoralCommission(GatewayUser):
    """Bulk verification of a voter roll: names, birth date, age on election day, alive, residence."""

    client_id = "ceni-voter-roll"
    weight = 6

    @task(20)
    def verify_voter(self) -> None:
        p = self.person()
        self.call(
            "/v1/verify",
            {
                "nin": p["nin"],
                "purpose": "voter_roll",
                "claims": {
                    "family_name": p["family_name"],
                    "given_names": p["given_names"],
                    "birth_date": p["birth_date"],
                },
                "predicates": [
                    {"name": "age_at_least", "value": 18, "as_of": "2027-06-01"},
                    {"name": "alive"},
                    {"name": "resides_in", "value": p["residence_region"]},
                ],
            },
        )

    @task(1)
    def attribute_it_may_not_read(self) -> None:
        self.call(
            "/v1/verify",
            {"nin": self.person()["nin"], "purpose": "voter_roll", "claims": {"sex": "F"}},
            expect=403,
            name="/v1/verify (refused claim)",
        )


class HealthInsurance(GatewayUser):
    """Enrolment lookups under consent recorded by the civil-registry counter."""

    client_id = "canam-enrolment"
    weight = 3

    def on_start(self) -> None:
        super().on_start()
        ConsentCounter.host = self.host  # a User made by hand does not get the --host Locust gives spawned ones
        channel = ConsentCounter(self.environment)
        channel.on_start()
        self.consents: list[tuple[str, str]] = []
        for p in random.sample(PEOPLE, 20):
            expires = (datetime.now(UTC) + timedelta(days=30)).isoformat()
            consent = channel.call(
                "/v1/consents",
                {
                    "nin": p["nin"],
                    "grantee": "canam",
                    "purpose": "amo_enrolment",
                    "attributes": ["family_name", "given_names", "birth_date", "residence_commune"],
                    "operations": ["lookup", "verify"],
                    "expires_at": expires,
                    "evidence": {"method": "signed_form", "reference": "LT"},
                },
                expect=201,
            )
            if consent:
                self.consents.append((p["nin"], consent["id"]))

    @task(10)
    def lookup_with_consent(self) -> None:
        if not self.consents:
            return
        nin, consent_id = random.choice(self.consents)  # noqa: S311
        self.call(
            "/v1/lookup",
            {
                "nin": nin,
                "purpose": "amo_enrolment",
                "consent_id": consent_id,
                "attributes": ["family_name", "birth_date"],
            },
        )

    @task(1)
    def lookup_without_consent(self) -> None:
        self.call(
            "/v1/lookup",
            {"nin": self.person()["nin"], "purpose": "amo_enrolment", "attributes": ["family_name"]},
            expect=403,
            name="/v1/lookup (no consent)",
        )


class SocialDevelopment(GatewayUser):
    """IDP assistance: is this person already registered as displaced?"""

    client_id = "dnds-idp-assistance"
    weight = 2

    @task
    def idp_check(self) -> None:
        p = self.person()
        self.call(
            "/v1/verify",
            {
                "nin": p["nin"],
                "purpose": "idp_assistance_check",
                "claims": {"family_name": p["family_name"]},
                "predicates": [{"name": "registered_idp"}, {"name": "alive"}],
            },
        )


class ConsentCounter(GatewayUser):
    """The consent channel; HealthInsurance users record their consents through it. Not spawned."""

    abstract = True
    client_id = "cec-bamako-c3-counter"


class Intruder(FastHttpUser):
    """The share of invalid and unauthorised calls: forged tokens, malformed bodies."""

    weight = 1
    wait_time = between(0.2, 0.5)

    @task
    def forged_token(self) -> None:
        with self.client.post(
            "/v1/verify",
            json={"nin": "120394857602914", "purpose": "voter_roll"},
            headers={"Authorization": "Bearer eyJhbGciOiJub25lIn0.e30."},
            name="/v1/verify (forged token)",
            catch_response=True,
        ) as response:
            if response.status_code != 401:
                response.failure(f"expected 401, got {response.status_code}")
            else:
                response.success()
