"""The reference witness (C2SP tlog-witness) answering over HTTP (ASGI, in process): each refusal the
protocol names, cosignatures that verify, state that survives a restart and never rolls back."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.audit import merkle, notes
from gateway.witness_server import create_witness_app, init_witness, parse_log_arguments

ORIGIN = "gw.example/access-log/test-0"


def _leaves(n: int) -> list[bytes]:
    return [merkle.leaf_hash(b"entry %d" % i) for i in range(n)]


class Log:
    def __init__(self, key: Ed25519PrivateKey | None = None, origin: str = ORIGIN) -> None:
        self.signer = notes.Signer(origin, key or Ed25519PrivateKey.generate())
        self.leaves = _leaves(200)

    def checkpoint(self, size: int, leaves: list[bytes] | None = None) -> str:
        tree = (leaves or self.leaves)[:size]
        return notes.sign(notes.Checkpoint(self.signer.name, size, merkle.root(tree)).text(), self.signer)

    def body(self, old: int, size: int, *, proof: list[bytes] | None = None, leaves: list[bytes] | None = None) -> str:
        hashes = merkle.consistency_proof(old, (leaves or self.leaves)[:size]) if proof is None else proof
        return (
            f"old {old}\n"
            + "".join(base64.b64encode(h).decode() + "\n" for h in hashes)
            + "\n"
            + self.checkpoint(size, leaves)
        )


@pytest.fixture
def log() -> Log:
    return Log()


def _client(state: Path, log: Log) -> httpx.AsyncClient:
    app = create_witness_app(state, {ORIGIN: [log.signer.verifier]})
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://witness")


def test_init_prints_a_cosignature_vkey_and_rotation_keeps_the_old_key(tmp_path: Path) -> None:
    first = init_witness(tmp_path / "w", "dpa.example/witness")
    assert first.kind == notes.COSIGNATURE and first.name == "dpa.example/witness"
    assert init_witness(tmp_path / "w", "dpa.example/witness") == first  # idempotent
    second = init_witness(tmp_path / "w", "dpa.example/witness", rotate=True)
    assert second != first
    assert list((tmp_path / "w").glob("witness-key-*.retired.pem"))
    with pytest.raises(ValueError, match="not 'other'"):
        init_witness(tmp_path / "w", "other")


async def test_the_protocol_refusals_and_a_cosignature_that_verifies(tmp_path: Path, log: Log) -> None:
    witness = init_witness(tmp_path / "w", "dpa.example/witness")
    async with _client(tmp_path / "w", log) as client:
        post = lambda body: client.post("/add-checkpoint", content=body)  # noqa: E731
        unknown = Log(origin="other.example/log")
        assert (await post(unknown.body(0, 5))).status_code == 404
        forged = Log()  # right origin, another key
        assert (await post(forged.body(0, 5))).status_code == 403
        assert (await post(log.body(0, 5).replace("old 0", "old 9", 1))).status_code == 400
        assert (await post("not a request")).status_code == 400
        assert (await post(log.body(0, 20).replace("old 0\n", "old 0\n" + "A" * 43 + "=\n", 1))).status_code == 400
        ok = await post(log.body(0, 10))
        assert ok.status_code == 200, ok.text
        note = log.checkpoint(10) + ok.text
        text, good = notes.verified(note, [witness])
        assert [s.name for s in good] == ["dpa.example/witness"] and text.startswith(ORIGIN)
        stale = await post(log.body(0, 20))  # the witness holds 10 now
        assert stale.status_code == 409 and stale.text == "10\n"
        assert stale.headers["content-type"].startswith("text/x.tlog.size")
        bad_proof = await post(log.body(10, 20, proof=[bytes(32)] * 3))
        assert bad_proof.status_code == 409 and bad_proof.text == "10\n"
        fork = _leaves(200)
        fork[3] = merkle.leaf_hash(b"rewritten")
        not_extending = await post(log.body(10, 20, leaves=fork))
        assert not_extending.status_code == 409 and not_extending.text == "10\n"  # not an extension of what it holds
        assert (await post(log.body(10, 20).replace("old 10", "old \u0661\u0660", 1))).status_code == 400
        assert (await post(log.body(10, 10, leaves=fork))).status_code == 409  # same size, another root
        assert (await post(log.body(10, 20))).status_code == 200
        assert (await post(log.body(20, 20))).status_code == 200  # the same checkpoint again: cosigned again


async def test_state_survives_a_restart_and_concurrent_requests_never_roll_it_back(tmp_path: Path, log: Log) -> None:
    init_witness(tmp_path / "w", "dpa.example/witness")
    async with _client(tmp_path / "w", log) as client:
        assert (await client.post("/add-checkpoint", content=log.body(0, 50))).status_code == 200
        answers = await asyncio.gather(
            *(client.post("/add-checkpoint", content=log.body(50, size)) for size in (60, 70, 80, 90))
        )
        assert sorted(a.status_code for a in answers) == [200, 409, 409, 409]  # one wins; the rest learn its size
    async with _client(tmp_path / "w", log) as again:
        held = await again.post("/add-checkpoint", content=log.body(0, 100))
        assert held.status_code == 409 and int(held.text) in (60, 70, 80, 90)
        assert (await again.post("/add-checkpoint", content=log.body(int(held.text), 100))).status_code == 200


async def test_an_oversized_body_is_refused(tmp_path: Path, log: Log) -> None:
    init_witness(tmp_path / "w", "dpa.example/witness")
    async with _client(tmp_path / "w", log) as client:
        assert (await client.post("/add-checkpoint", content=b"x" * 70_000)).status_code == 413


def test_log_arguments_name_their_origin(log: Log) -> None:
    vkey = log.signer.verifier.vkey()
    assert parse_log_arguments([f"{ORIGIN}={vkey}"]) == {ORIGIN: [log.signer.verifier]}
    assert parse_log_arguments([vkey]) == {ORIGIN: [log.signer.verifier]}
    assert parse_log_arguments([f"{ORIGIN} {vkey}\n"]) == {ORIGIN: [log.signer.verifier]}  # `jamu audit origins`
    with pytest.raises(ValueError, match="not 'elsewhere'"):
        parse_log_arguments([f"elsewhere={vkey}"])
