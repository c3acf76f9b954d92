"""One contract for every connector: the embedded register, and REST, FHIR and IDP backends served by
real servers on loopback, including slow, failing, malformed and dead ones."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.connectors.base import BackendError, BackendUnavailable, Connector, StandIn, TraceContext
from gateway.connectors.embedded import EmbeddedRegister
from gateway.connectors.fhir import FHIR_ATTRIBUTES, FhirConnector
from gateway.connectors.population import population, seed_register
from gateway.connectors.resilience import CircuitBreaker, ResiliencePolicy
from gateway.connectors.rest import IDP_ATTRIBUTES, IDP_MAPPING, RestConnector
from gateway.connectors.router import ConnectorRouter, ConnectorsFile, build_connectors
from gateway.metrics import Metrics
from tests.support.fake_backends import REST_ATTRIBUTES, FakeBackends
from tests.support.servers import free_port

SEED, COUNT = 11, 400
PEOPLE = list(population(COUNT, SEED))
FAST = ResiliencePolicy(
    connect_timeout_s=0.5,
    read_timeout_s=0.5,
    retries=1,
    backoff_s=0.01,
    max_concurrency=8,
    queue_timeout_s=0.2,
    failure_threshold=3,
    open_s=30,
)
TRACE = TraceContext("4bf92f3577b34da6a3ce929d0e0e4736")
UNKNOWN = "100000000000000"


@pytest.fixture(scope="module")
def backends() -> Iterator[FakeBackends]:
    server = FakeBackends(PEOPLE).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def register_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("register") / "register.db"
    seed_register(path, COUNT, SEED)
    return path


Factory = Callable[[ResiliencePolicy], Connector]


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as shared:
        yield shared


def make(kind: str, base: str, register_file: Path, client: httpx.AsyncClient, policy: ResiliencePolicy) -> Connector:
    if kind == "embedded":
        return EmbeddedRegister(register_file)
    if kind == "embedded-thread":
        return EmbeddedRegister(register_file, inline_reads=False)
    if kind == "rest":
        return RestConnector(
            name="rest",
            url=base,
            path="/people/search",
            attributes=frozenset(REST_ATTRIBUTES),
            mapping={},
            nin_field="query.nin",
            result="person",
            client=client,
            policy=policy,
        )
    if kind == "fhir":
        return FhirConnector(
            name="fhir",
            url=f"{base}/fhir",
            identifier_system="urn:ml:nina",
            attributes=FHIR_ATTRIBUTES,
            client=client,
            policy=policy,
        )
    return RestConnector(
        name="idp",
        url=base,
        path="/v1/persons/search",
        attributes=IDP_ATTRIBUTES,
        mapping=IDP_MAPPING,
        authoritative=False,
        client=client,
        policy=policy,
    )


@pytest.fixture(params=["embedded", "embedded-thread", "rest", "fhir", "idp"])
async def connector(
    request: pytest.FixtureRequest, backends: FakeBackends, register_file: Path, client: httpx.AsyncClient
) -> AsyncIterator[Connector]:
    backends.mode = "ok"
    made = make(request.param, backends.base, register_file, client, FAST)
    yield made
    await made.close()


def someone(connector: Connector) -> dict[str, Any]:
    """A person this connector knows (the IDP registry knows only displaced or returned people)."""
    return next(p for p in PEOPLE if connector.authoritative or p["displacement_status"] is not None)


async def test_a_known_person_comes_back_with_exactly_the_asked_attributes(connector: Connector) -> None:
    person = someone(connector)
    asked = frozenset(sorted(connector.attributes)[:4]) | ({"record_status"} & connector.attributes)
    answer = await connector.fetch(person["nin"], asked, TRACE)
    assert answer is not None
    assert set(answer) == asked
    assert answer == {name: person[name] for name in asked}


async def test_every_served_attribute_round_trips(connector: Connector) -> None:
    for person in [p for p in PEOPLE if connector.authoritative or p["displacement_status"]][:25]:
        answer = await connector.fetch(person["nin"], connector.attributes, TRACE)
        assert answer == {name: person[name] for name in connector.attributes}, person["nin"]


def is_unknown(answer: object) -> bool:
    """The protocol's "no such person": None, or a stand-in read in its place (another person's)."""
    return answer is None or isinstance(answer, StandIn)


async def test_an_unknown_person_is_none(connector: Connector) -> None:
    answer = await connector.fetch(UNKNOWN, connector.attributes, TRACE)
    assert is_unknown(answer)
    assert answer is None or answer.get("nin") != UNKNOWN
    assert await connector.health() is True


REMOTE = ["rest", "fhir", "idp"]


@pytest.mark.parametrize("kind", REMOTE)
async def test_the_nin_stays_out_of_urls_and_the_trace_goes_along(
    kind: str, backends: FakeBackends, register_file: Path, client: httpx.AsyncClient
) -> None:
    backends.mode = "ok"
    backends.requests.clear()
    connector = make(kind, backends.base, register_file, client, FAST)
    person = next(p for p in PEOPLE if p["displacement_status"])
    await connector.fetch(person["nin"], connector.attributes, TRACE)
    sent = backends.requests[-1]
    assert person["nin"] not in sent["url"]
    assert person["nin"].encode() in sent["body"]
    assert sent["headers"]["traceparent"].startswith(f"00-{TRACE.trace_id}-")


@pytest.mark.parametrize("kind", REMOTE)
async def test_a_slow_backend_answers_503_within_its_timeout(
    kind: str, backends: FakeBackends, register_file: Path, client: httpx.AsyncClient
) -> None:
    backends.mode = "slow"
    connector = make(kind, backends.base, register_file, client, FAST)
    started = time.monotonic()
    with pytest.raises(BackendUnavailable) as caught:
        await connector.fetch(PEOPLE[0]["nin"], connector.attributes, TRACE)
    assert caught.value.status == 503 and "timed out" in caught.value.detail
    assert time.monotonic() - started < FAST.deadline_s + 1.0


@pytest.mark.parametrize("kind", REMOTE)
async def test_a_failing_backend_is_retried_then_503(
    kind: str, backends: FakeBackends, register_file: Path, client: httpx.AsyncClient
) -> None:
    backends.mode = "fail"
    backends.requests.clear()
    connector = make(kind, backends.base, register_file, client, FAST)
    with pytest.raises(BackendUnavailable) as caught:
        await connector.fetch(PEOPLE[0]["nin"], connector.attributes, TRACE)
    assert "status 500" in caught.value.detail
    assert len(backends.requests) == FAST.retries + 1


@pytest.mark.parametrize("kind", REMOTE)
async def test_a_malformed_answer_is_502(
    kind: str, backends: FakeBackends, register_file: Path, client: httpx.AsyncClient
) -> None:
    backends.mode = "malformed"
    connector = make(kind, backends.base, register_file, client, FAST)
    with pytest.raises(BackendError) as caught:
        await connector.fetch(PEOPLE[0]["nin"], connector.attributes, TRACE)
    assert caught.value.status == 502


async def test_wrong_values_from_a_backend_are_502(
    backends: FakeBackends, register_file: Path, client: httpx.AsyncClient
) -> None:
    backends.mode = "ok"
    connector = RestConnector(
        name="rest",
        url=backends.base,
        path="/people/search",
        attributes=frozenset(REST_ATTRIBUTES),
        mapping={"sex": "birth_date"},
        nin_field="query.nin",
        result="person",
        client=client,
        policy=FAST,
    )
    with pytest.raises(BackendError) as caught:
        await connector.fetch(PEOPLE[0]["nin"], frozenset({"sex"}), TRACE)
    assert "invalid sex" in caught.value.detail


@pytest.mark.parametrize("kind", REMOTE)
async def test_a_dead_backend_is_503_and_opens_the_breaker(
    kind: str, register_file: Path, client: httpx.AsyncClient
) -> None:
    connector = make(kind, f"http://127.0.0.1:{free_port()}", register_file, client, FAST)
    for _ in range(FAST.failure_threshold):
        with pytest.raises(BackendUnavailable) as caught:
            await connector.fetch(PEOPLE[0]["nin"], connector.attributes, TRACE)
        assert "unreachable" in caught.value.detail
    started = time.monotonic()
    with pytest.raises(BackendUnavailable) as caught:
        await connector.fetch(PEOPLE[0]["nin"], connector.attributes, TRACE)
    assert "circuit open" in caught.value.detail and time.monotonic() - started < 0.1
    assert await connector.health() is False


@pytest.mark.parametrize("kind", REMOTE)
async def test_the_breaker_state_is_a_metric_read_at_scrape_time(
    kind: str, register_file: Path, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    connector = make(kind, f"http://127.0.0.1:{free_port()}", register_file, client, FAST)
    metrics = Metrics()
    ConnectorRouter([EmbeddedRegister(register_file), connector], metrics)
    line = f'jamu_connector_breaker_state{{connector="{connector.name}"}}'
    assert f"{line} 0.0" in metrics.render().decode()
    for _ in range(FAST.failure_threshold):
        with pytest.raises(BackendUnavailable):
            await connector.fetch(PEOPLE[0]["nin"], connector.attributes, TRACE)
    assert f"{line} 2.0" in metrics.render().decode()
    assert 'jamu_connector_breaker_state{connector="register"}' not in metrics.render().decode()


async def test_the_bulkhead_refuses_what_it_cannot_hold(
    backends: FakeBackends, register_file: Path, client: httpx.AsyncClient
) -> None:
    backends.mode = "slow"
    narrow = ResiliencePolicy(
        connect_timeout_s=0.5, read_timeout_s=1.0, retries=0, max_concurrency=1, queue_timeout_s=0.1
    )
    connector = make("rest", backends.base, register_file, client, narrow)
    results = await asyncio.gather(
        *(connector.fetch(PEOPLE[0]["nin"], connector.attributes, TRACE) for _ in range(3)), return_exceptions=True
    )
    details = sorted(str(r.detail) for r in results if isinstance(r, BackendUnavailable))
    assert len(details) == 3
    assert sum("too many calls in flight" in d for d in details) == 2


def test_the_breaker_half_opens_for_one_trial() -> None:
    now = [0.0]
    breaker = CircuitBreaker(failure_threshold=2, open_s=10, clock=lambda: now[0])
    breaker.failure()
    assert breaker.allow()
    breaker.failure()
    assert breaker.state == "open" and not breaker.allow()
    now[0] = 10.0
    assert breaker.allow() and not breaker.allow()  # one trial at a time
    breaker.failure()
    assert breaker.state == "open"
    now[0] = 20.0
    assert breaker.allow()
    breaker.success()
    assert breaker.state == "closed" and breaker.allow()


async def test_the_router_asks_each_connector_once_and_merges(
    backends: FakeBackends, register_file: Path, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    backends.mode = "ok"
    config = ConnectorsFile.model_validate(
        {
            "connectors": [
                {
                    "name": "register",
                    "type": "embedded",
                    "path": str(register_file),
                    "reads": "thread",
                    "attributes": [a for a in REST_ATTRIBUTES],
                },
                {"name": "idp", "type": "idp", "url": backends.base, "retries": 0},
            ]
        }
    )
    router = ConnectorRouter(build_connectors(config, tmp_path, client))
    displaced = next(p for p in PEOPLE if p["displacement_status"] == "displaced")
    settled = next(p for p in PEOPLE if p["displacement_status"] is None and p["record_status"] == "active")
    asked = frozenset({"family_name", "displacement_status", "displacement_site"})
    backends.requests.clear()
    answer = await router.fetch(displaced["nin"], asked, TRACE)
    assert answer == {k: displaced[k] for k in asked | {"record_status"}}
    assert len(backends.requests) == 1
    assert (await router.fetch(settled["nin"], asked, TRACE))["displacement_status"] is None
    assert is_unknown(await router.fetch(UNKNOWN, asked, TRACE))
    backends.requests.clear()
    assert await router.fetch(settled["nin"], frozenset({"family_name"}), TRACE) is not None
    assert backends.requests == []  # the IDP registry is asked only for its attributes
    backends.mode = "fail"
    with pytest.raises(BackendUnavailable):
        await router.fetch(settled["nin"], asked, TRACE)
    await router.close()


@pytest.mark.parametrize(
    "connectors, fault",
    [
        ([{"name": "a", "type": "embedded"}, {"name": "b", "type": "idp", "url": "https://x"}], "served by both"),
        (
            [
                {"name": "a", "type": "embedded", "attributes": ["family_name"]},
                {"name": "b", "type": "idp", "url": "http://idp.example.ml"},
            ],
            "must be https",
        ),
        (
            [
                {"name": "a", "type": "embedded", "attributes": ["family_name"]},
                {"name": "b", "type": "fhir", "url": "http://10.0.0.5:8080/fhir", "attributes": ["sex"]},
            ],
            "must be https",
        ),
        (
            [
                {"name": "a", "type": "embedded", "attributes": ["family_name"]},
                {
                    "name": "r",
                    "type": "rest",
                    "url": "http://127.0.0.1:8080",
                    "path": "@registry.example.org/v1",
                    "attributes": ["sex"],
                },
            ],
            "String should match pattern",
        ),
        (
            [
                {"name": "a", "type": "embedded", "attributes": ["family_name"]},
                {"name": "b", "type": "idp", "url": "https://idp.example.ml", "path": "//other.example/x"},
            ],
            "String should match pattern",
        ),
        ([{"name": "a", "type": "embedded", "attributes": ["nin"]}], "no connector serves"),
        ([{"name": "a", "type": "embedded", "atributes": ["nin"]}], "Extra inputs"),
        ([{"name": "a", "type": "ftp"}], "does not match any of the expected tags"),
        ([{"name": "a", "type": "embedded", "attributes": ["nin", "shoe_size"]}], "Input should be"),
        ([{"name": "a", "type": "embedded", "reads": "sometimes"}], "'thread' or 'inline'"),
        ([{"name": "r", "type": "rest", "url": "http://x", "method": "GET", "attributes": ["nin"]}], "'POST' or 'PUT'"),
    ],
)
def test_a_bad_connectors_file_is_refused_with_its_fault(connectors: list, fault: str, tmp_path: Path) -> None:
    from gateway.connectors.router import load_connectors_file

    path = tmp_path / "connectors.yaml"
    import yaml

    path.write_text(yaml.safe_dump({"connectors": connectors}))
    with pytest.raises(ValueError) as caught:
        load_connectors_file(path)
    assert str(path) in str(caught.value) and fault in str(caught.value)
