"""The verifiable access log end to end (docs/contract.md §13): a gateway and two reference witnesses as real
processes on loopback. Receipts checked offline with public keys only; proofs checked with the client
side of RFC 9162; witnesses down and back; history rewritten three ways, each caught; keys rotated."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.audit import merkle, notes
from gateway.audit.chain import link
from gateway.audit.segment_store import entry_bytes
from gateway.audit.segments import SegmentLog, frame
from tests.support.keys import token_form
from tests.support.realm import Realm, build_realm
from tests.support.servers import REPO, GatewayProcess, free_port, wait_until

pytestmark = pytest.mark.e2e
JAMU = [sys.executable, "-m", "gateway.cli"]
DURABLE = "tests.support.probe_app:create_durable"
ORIGIN = "gw.example/access-log"
AMINATA = "120394857602914"


@dataclass
class Witness:
    name: str
    state: Path
    vkey: str
    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, logs: list[str]) -> Witness:
        args = [a for vkey in logs for a in ("--log", vkey)]
        with open(self.state.parent / f"{self.name}.log", "ab") as out:
            self.proc = subprocess.Popen(
                [*JAMU, "witness", "serve", "--state", str(self.state), "--port", str(self.port), *args],
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_until(
            lambda: httpx.post(f"{self.url}/add-checkpoint", content="x", timeout=1).status_code == 400,
            20,
            f"witness {self.name}",
        )
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None


def jamu(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*JAMU, *args], env={**os.environ, **env}, capture_output=True, text=True, timeout=120)


def new_witness(tmp: Path, name: str) -> Witness:
    state = tmp / name
    made = jamu({}, "witness", "init", "--state", str(state), "--name", f"{name}.example")
    assert made.returncode == 0, made.stderr
    return Witness(name, state, made.stdout.strip(), free_port())


def token(gateway: GatewayProcess, realm: Realm, client_id: str) -> dict[str, str]:
    form = token_form(client_id, realm.keys[client_id], f"{gateway.base_url}/oauth2/token")
    response = httpx.post(f"{gateway.base_url}/oauth2/token", data=form, timeout=10)
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def person(gateway: GatewayProcess, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(f"{gateway.base_url}/v1/probe/person", json={"nin": AMINATA}, headers=headers, timeout=10)


def get(gateway: GatewayProcess, path: str, headers: dict[str, str], **params: Any) -> httpx.Response:
    return httpx.get(f"{gateway.base_url}{path}", params=params, headers=headers, timeout=10)


def receipt_of(
    gateway: GatewayProcess, headers: dict[str, str], transaction_id: str, *, quorum: bool, timeout: float = 20
) -> dict[str, Any]:
    """Poll for a receipt (409 with Retry-After until a checkpoint covers it) until it has the quorum asked."""
    deadline = time.monotonic() + timeout
    while True:
        answer = get(gateway, f"/v1/receipts/{transaction_id}", headers)
        if answer.status_code == 200 and answer.json()["quorum"] == quorum:
            return answer.json()
        assert answer.status_code in (200, 409), answer.text
        if answer.status_code == 409:
            assert answer.headers["retry-after"] == "1"
        assert time.monotonic() < deadline, f"no receipt with quorum={quorum}: {answer.text}"
        time.sleep(0.3)


def checkpoint_of(note: str) -> notes.Checkpoint:
    return notes.Checkpoint.parse(notes.parse(note)[0])


@pytest.fixture(scope="module")
def realm(tmp_path_factory: pytest.TempPathFactory) -> Realm:
    return build_realm(tmp_path_factory.mktemp("tlog"))


def origin_vkey(env: dict[str, str]) -> str:
    """What a witness is told before the gateway first starts: `jamu audit origins` (the key made now)."""
    shown = jamu({**env, "GATEWAY_LOG_ORIGIN": ORIGIN}, "audit", "origins")
    assert shown.returncode == 0, shown.stderr
    origin, vkey = shown.stdout.strip().split(" ")
    assert origin == ORIGIN and notes.Verifier.parse(vkey).name == ORIGIN
    return vkey


def start_witnesses(where: Path, log_vkey: str) -> list[Witness]:
    made = [new_witness(where, name) for name in ("dpa", "court")]
    for witness in made:
        witness.start([f"{ORIGIN}={log_vkey}"])
    return made


@pytest.fixture(scope="module")
def log_vkey(realm: Realm) -> str:
    return origin_vkey(realm.env())


@pytest.fixture(scope="module")
def witnesses(realm: Realm, log_vkey: str) -> Iterator[list[Witness]]:
    made = start_witnesses(realm.data_dir.parent, log_vkey)
    yield made
    for witness in made:
        witness.stop()


def witnesses_file(path: Path, witnesses: list[Witness], quorum: int) -> Path:
    path.write_text(
        json.dumps(
            {
                "quorum": quorum,
                "witnesses": [{"name": w.vkey.split("+")[0], "url": w.url, "vkey": w.vkey} for w in witnesses],
            }
        )
    )
    return path


def serve(realm: Realm, log: Path, witnesses: list[Witness], port: int | None = None, **env: str) -> GatewayProcess:
    settings = {
        "GATEWAY_DATABASE_TIMEOUT_S": "1",
        "GATEWAY_LOG_ORIGIN": ORIGIN,
        "GATEWAY_WITNESS_RETRY_S": "1",
        "GATEWAY_WITNESS_MAX_LAG_S": "3",
        **env,
    }
    if witnesses:
        settings["GATEWAY_WITNESSES_FILE"] = str(witnesses_file(log.with_suffix(".witnesses.json"), witnesses, 2))
    return GatewayProcess(realm.env(**settings), factory=DURABLE, port=port).start(log)


METRICS_PORT = free_port()


@pytest.fixture(scope="module")
def gateway(realm: Realm, witnesses: list[Witness]) -> Iterator[GatewayProcess]:
    server = serve(realm, realm.data_dir.parent / "gateway.log", witnesses, GATEWAY_METRICS_PORT=str(METRICS_PORT))
    yield server
    server.stop()


def test_a_receipt_proves_a_transaction_offline_with_public_keys_only(
    gateway: GatewayProcess, realm: Realm, witnesses: list[Witness], log_vkey: str, tmp_path: Path
) -> None:
    elections = token(gateway, realm, "elections-app")
    answered = person(gateway, elections)
    assert answered.status_code == 200
    transaction = answered.json()["transaction_id"]
    origin, seq = answered.headers["audit-log-position"].rsplit(" ", 1)
    receipt = receipt_of(gateway, elections, transaction, quorum=True)
    assert receipt["origin"] == origin == ORIGIN and receipt["seq"] == int(seq)
    assert json.loads(receipt["entry"])["id"] == transaction
    assert receipt["proof"].startswith("c2sp.org/tlog-proof@v1\nindex " + seq + "\n")

    path = tmp_path / "receipt.json"
    path.write_text(json.dumps(receipt))
    keys = ["--vkey", log_vkey, *[a for w in witnesses for a in ("--witness-vkey", w.vkey)]]
    checked = jamu({}, "audit", "verify-proof", str(path), *keys, "--quorum", "2")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"{ORIGIN} seq {seq} is in the tree" in checked.stdout
    assert "cosigned by court.example, dpa.example" in checked.stdout

    altered = {**receipt, "entry": receipt["entry"].replace('"permit"', '"deny"')}
    path.write_text(json.dumps(altered))
    refused = jamu({}, "audit", "verify-proof", str(path), *keys)
    assert refused.returncode == 1 and "NOT VERIFIED: the entry is not in the checkpointed tree" in refused.stdout
    path.write_text(json.dumps(receipt))
    other_key = notes.Signer(ORIGIN, Ed25519PrivateKey.generate()).verifier.vkey()
    assert jamu({}, "audit", "verify-proof", str(path), "--vkey", other_key).returncode == 1
    unwitnessed = jamu(
        {},
        "audit",
        "verify-proof",
        str(path),
        "--vkey",
        log_vkey,
        "--witness-vkey",
        new_witness(tmp_path, "stranger").vkey,
    )
    assert unwitnessed.returncode == 1 and "0 witness(es) cosigned" in unwitnessed.stdout

    # Only the caller's own administration's transactions; unknown ids alike.
    officer = token(gateway, realm, "oversight-app")
    assert get(gateway, f"/v1/receipts/{transaction}", officer).status_code == 404
    assert get(gateway, "/v1/receipts/00000000-0000-4000-8000-000000000000", elections).status_code == 404
    assert get(gateway, "/v1/receipts/not-an-id", elections).status_code == 404
    assert get(gateway, f"/v1/receipts/{transaction}", {}).status_code == 401


def test_checkpoint_origins_and_proofs_hold_for_any_client(
    gateway: GatewayProcess, realm: Realm, witnesses: list[Witness], log_vkey: str
) -> None:
    elections, officer = token(gateway, realm, "elections-app"), token(gateway, realm, "oversight-app")
    origins = get(gateway, "/v1/audit/origins", elections)
    assert origins.status_code == 200 and {"origin": ORIGIN, "vkey": log_vkey} in origins.json()["origins"]
    assert person(gateway, elections).status_code == 200
    time.sleep(1.5)
    first = get(gateway, "/v1/audit/checkpoint", elections)
    assert first.status_code == 200 and first.headers["content-type"].startswith("text/plain")
    verifiers = [notes.Verifier.parse(log_vkey), *(notes.Verifier.parse(w.vkey) for w in witnesses)]
    text, good = notes.verified(first.text, verifiers)
    assert ORIGIN in {s.name for s in good}
    old = notes.Checkpoint.parse(text)
    for _ in range(5):
        assert person(gateway, elections).status_code == 200
    time.sleep(1.5)
    new = checkpoint_of(get(gateway, "/v1/audit/checkpoint", elections).text)
    assert new.size > old.size
    proof = get(gateway, "/v1/audit/proof/consistency", elections, old=old.size, new=new.size)
    assert proof.status_code == 200
    hashes = [base64.b64decode(h) for h in proof.json()["hashes"]]
    merkle.verify_consistency(old.size, new.size, old.root, new.root, hashes)
    with pytest.raises(merkle.InvalidProof):
        merkle.verify_consistency(old.size, new.size, old.root, new.root, hashes[::-1] if len(hashes) > 1 else [])

    # Inclusion proofs of arbitrary entries are for security officers.
    assert get(gateway, "/v1/audit/proof/inclusion", elections, seq=0, size=new.size).status_code == 403
    inclusion = get(gateway, "/v1/audit/proof/inclusion", officer, seq=new.size - 1, size=new.size, origin=ORIGIN)
    assert inclusion.status_code == 200, inclusion.text
    body = inclusion.json()
    merkle.verify_inclusion(
        new.size - 1,
        new.size,
        base64.b64decode(body["leaf_hash"]),
        [base64.b64decode(h) for h in body["hashes"]],
        new.root,
    )
    assert get(gateway, "/v1/audit/proof/inclusion", officer, seq=new.size, size=new.size).status_code == 400
    assert get(gateway, "/v1/audit/proof/inclusion", officer, seq=0, size=10**12).status_code == 409
    assert get(gateway, "/v1/audit/proof/consistency", elections, old=5, new=2).status_code == 400
    assert get(gateway, "/v1/audit/proof/consistency", elections, old=-1, new=2).status_code == 400
    assert get(gateway, "/v1/audit/checkpoint", elections, origin="nowhere.example/log").status_code == 404
    assert get(gateway, "/v1/audit/checkpoint", {}).status_code == 401

    # Each read is an access-log event of its own.
    time.sleep(2.5)
    listing = get(gateway, "/v1/audit/events", officer, operation="audit.proof", limit=1000).json()["events"]
    assert len(listing) >= 6 and {e["administration"] for e in listing} >= {"elections", "oversight"}
    assert get(gateway, "/v1/audit/events", officer, operation="receipt", limit=10).status_code == 200

    integrity = get(gateway, "/v1/audit/integrity", officer).json()
    [own] = [o for o in integrity["origins"] if o["origin"] == ORIGIN]
    assert own["tree_size"] >= new.size and own["last_checkpoint"]["size"] >= new.size
    assert {c["witness"] for c in own["cosignatures"]} == {"dpa.example", "court.example"}
    ready = httpx.get(f"{gateway.base_url}/readyz", timeout=5).json()
    assert ready["checks"]["witnesses"]["status"] == "ok"
    state = json.loads(next((witnesses[0].state / "logs").glob("*.json")).read_text())
    assert state["origin"] == ORIGIN and state["size"] >= new.size  # persisted before it answered


def test_with_a_witness_down_the_log_goes_on_and_the_quorum_returns_with_it(
    gateway: GatewayProcess, realm: Realm, witnesses: list[Witness], log_vkey: str
) -> None:
    elections = token(gateway, realm, "elections-app")
    court = witnesses[1]
    court.stop()
    try:
        answered = person(gateway, elections)
        assert answered.status_code == 200  # verification never waits for witnesses
        keys = [notes.Verifier.parse(w.vkey) for w in witnesses]
        deadline = time.monotonic() + 15
        while True:  # the receipt carries the cosignatures gathered so far: soon the one witness still up
            receipt = receipt_of(gateway, elections, answered.json()["transaction_id"], quorum=False)
            with contextlib.suppress(notes.NoteError):
                if {s.name for s in notes.verified(parse_note(receipt), keys)[1]} == {"dpa.example"}:
                    break
            assert time.monotonic() < deadline, receipt
            time.sleep(0.3)
        deadline = time.monotonic() + 15
        while (ready := httpx.get(f"{gateway.base_url}/readyz", timeout=5)).json()["checks"]["witnesses"][
            "status"
        ] != "degraded":
            assert time.monotonic() < deadline, ready.text
            time.sleep(0.5)
        assert ready.status_code == 200 and ready.json()["checks"]["witnesses"]["lag_s"] >= 3
        scraped = httpx.get(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=5).text
        lag = next(line for line in scraped.splitlines() if line.startswith("jamu_audit_witness_lag_seconds "))
        assert float(lag.split()[1]) >= 2  # the client sets it each round (every second here)
    finally:
        court.start([f"{ORIGIN}={log_vkey}"])
    receipt = receipt_of(gateway, elections, answered.json()["transaction_id"], quorum=True)
    assert receipt["quorum"] is True


def parse_note(receipt: dict[str, Any]) -> str:
    return receipt["proof"].split("\n\n", 1)[1]


# --- History rewritten -------------------------------------------------------------------------------


def _log_dir(data: Path, origin: str = ORIGIN) -> Path:
    from gateway.audit.origin import log_directory

    return log_directory(data / "log", origin)


def rewrite(log_dir: Path, change: Any) -> list[dict[str, Any]]:
    """Rewrite a stopped log as an attacker with file access would: entries changed by `change` (a list
    of events in, a list out), the chain recomputed from the first entry, every frame's CRC too."""
    events = [orjson.loads(p) for _, p in SegmentLog(log_dir, read_only=True).records(0)]
    linked = link(
        [{k: v for k, v in e.items() if k not in ("seq", "prev_hash", "hash")} for e in change(events)],
        -1,
        events[0]["prev_hash"],
    )
    for segment in log_dir.glob("*.seg"):
        segment.unlink()
    (log_dir / f"{0:020d}.seg").write_bytes(b"".join(frame(e["seq"], entry_bytes(e)) for e in linked))
    return linked


def rewrite_index(db: Path) -> None:
    """The index's copy of the history dropped with the checkpoints it held: the restarted gateway's
    follower fills it again from the rewritten segments, so it agrees with them."""
    with sqlite3.connect(db) as connection:
        connection.execute("DELETE FROM audit_index WHERE origin = ?", (ORIGIN,))
        connection.execute("DELETE FROM audit_index_checkpoints")
        connection.execute("DELETE FROM audit_index_watermarks WHERE origin = ?", (ORIGIN,))


def wait_refusing(gateway: GatewayProcess, headers: dict[str, str], reason: str) -> None:
    deadline = time.monotonic() + 20
    while True:
        ready = httpx.get(f"{gateway.base_url}/readyz", timeout=5)
        check = ready.json()["checks"]["access_log"]
        if isinstance(check, dict) and reason in check.get("reason", ""):
            break
        assert time.monotonic() < deadline, ready.text
        time.sleep(0.3)
    assert ready.status_code == 503
    answer = person(gateway, headers)  # a token from before: the log that would record a new one refuses
    assert answer.status_code == 503 and answer.json()["code"] == "audit_unavailable"  # nothing released


def test_history_rewritten_is_refused_by_the_gateway_the_witness_and_verify(realm: Realm, tmp_path: Path) -> None:
    data = tmp_path / "var"
    log_vkey = origin_vkey(realm.env(GATEWAY_DATA_DIR=str(data)))
    witnesses = start_witnesses(tmp_path, log_vkey)
    try:
        _rewrites(realm, data, witnesses, log_vkey, tmp_path)
    finally:
        for witness in witnesses:
            witness.stop()


def _rewrites(realm: Realm, data: Path, witnesses: list[Witness], log_vkey: str, tmp_path: Path) -> None:
    server = serve(realm, tmp_path / "honest.log", witnesses, GATEWAY_DATA_DIR=str(data))
    try:
        elections = token(server, realm, "elections-app")
        ids = [person(server, elections).json()["transaction_id"] for _ in range(6)]
        denied = httpx.post(
            f"{server.base_url}/v1/probe/person",
            json={"nin": AMINATA},
            headers={"Authorization": "Bearer forged"},
            timeout=10,
        )
        assert denied.status_code == 401
        receipt = receipt_of(server, elections, ids[2], quorum=True)  # before anything is rewritten
    finally:
        server.stop()
    denied_id = denied.json()["transaction_id"]
    copies = {name: tmp_path / name for name in ("segments", "tree", "everything")}
    for copy in copies.values():
        shutil.copytree(data, copy)

    def permit(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for event in events:
            if event["id"] == denied_id:
                event.update(decision="permit", status=200, reason=None)
        return events

    # 1. Entries rewritten under the tree the gateway stored: it finds the entry and names it.
    linked = rewrite(_log_dir(copies["segments"]), permit)
    bad = next(e["seq"] for e in linked if e["id"] == denied_id)
    rewrite_index(copies["segments"] / "jamu.db")
    # The same address, so tokens issued before the rewrite are still meant for it.
    restarted = serve(
        realm, tmp_path / "segments.log", witnesses, server.port, GATEWAY_DATA_DIR=str(copies["segments"])
    )
    try:
        wait_refusing(restarted, elections, f"entry seq {bad} is not the entry the signed tree holds")
    finally:
        restarted.stop()
    env = realm.env(GATEWAY_DATA_DIR=str(copies["segments"]), GATEWAY_LOG_ORIGIN=ORIGIN)
    verified = jamu(env, "audit", "verify")
    assert verified.returncode == 1, verified.stdout + verified.stderr
    # The first bad seq is named; how depends on where checkpoints fell (the stored tree's leaf, or a chain
    # checkpoint sealed right after the entry), which is a matter of timing.
    assert f"BROKEN at {ORIGIN} seq {bad}: " in verified.stdout and "rewritten" in verified.stdout

    # 2. The tree recomputed too: its root is no longer the last signed checkpoint's; nothing is signed.
    rewrite(_log_dir(copies["tree"]), permit)
    shutil.rmtree(_log_dir(copies["tree"]) / "tree")
    rewrite_index(copies["tree"] / "jamu.db")
    before = (_log_dir(copies["tree"]) / "checkpoints.jsonl").read_bytes()
    restarted = serve(realm, tmp_path / "tree.log", witnesses, server.port, GATEWAY_DATA_DIR=str(copies["tree"]))
    try:
        wait_refusing(restarted, elections, "is not the one its last signed checkpoint covers")
        time.sleep(1.5)
    finally:
        restarted.stop()
    assert (_log_dir(copies["tree"]) / "checkpoints.jsonl").read_bytes() == before  # it signed nothing
    verified = jamu(realm.env(GATEWAY_DATA_DIR=str(copies["tree"])), "audit", "verify")
    assert verified.returncode == 1 and "was rewritten" in verified.stdout

    # 3. Every local trace removed (the transaction's event deleted, tree and checkpoints gone): the
    # gateway cannot know, signs the forged tree, and the witnesses refuse it; the old receipt no longer
    # verifies against the newer checkpoint, and verify fails for want of any checkpoint over the rest.
    victim = receipt["seq"]
    rewrite(_log_dir(copies["everything"]), lambda events: [e for e in events if e["seq"] != victim])
    for name in ("tree",):
        shutil.rmtree(_log_dir(copies["everything"]) / name)
    for name in ("checkpoints.jsonl", "witnessed.jsonl"):
        (_log_dir(copies["everything"]) / name).unlink()
    rewrite_index(copies["everything"] / "jamu.db")
    forged = serve(realm, tmp_path / "everything.log", witnesses, GATEWAY_DATA_DIR=str(copies["everything"]))
    try:
        elections = token(forged, realm, "elections-app")
        for _ in range(12):
            assert person(forged, elections).status_code == 200
        deadline = time.monotonic() + 20
        while True:
            # The integrity report first: once it names the witnesses' refusal, readiness has seen it too.
            integrity = get(forged, "/v1/audit/integrity", token(forged, realm, "oversight-app")).json()
            problems = [p["problem"] for o in integrity["origins"] for p in o["problems"]]
            ready = httpx.get(f"{forged.base_url}/readyz", timeout=5).json()["checks"]["witnesses"]
            if any("restored from an older copy or forked" in p for p in problems):
                break
            assert time.monotonic() < deadline, (ready, problems)
            time.sleep(0.5)
        assert ready["status"] == "degraded"
        newer = get(forged, "/v1/audit/checkpoint", elections).text
        later = checkpoint_of(newer)
        old = checkpoint_of(parse_note(receipt))
        assert later.size > old.size
        consistency = get(forged, "/v1/audit/proof/consistency", elections, old=old.size, new=later.size).json()
    finally:
        forged.stop()
    files = {"receipt.json": json.dumps(receipt), "newer.txt": newer, "consistency.json": json.dumps(consistency)}
    for name, content in files.items():
        (tmp_path / name).write_text(content)
    keys = ["--vkey", log_vkey, *[a for w in witnesses for a in ("--witness-vkey", w.vkey)]]
    alone = jamu({}, "audit", "verify-proof", str(tmp_path / "receipt.json"), *keys)
    assert alone.returncode == 0  # the receipt itself still holds: it was cosigned when it was given
    against = jamu(
        {},
        "audit",
        "verify-proof",
        str(tmp_path / "receipt.json"),
        *keys,
        "--newer",
        str(tmp_path / "newer.txt"),
        "--consistency",
        str(tmp_path / "consistency.json"),
    )
    assert against.returncode == 1 and "does not extend the receipt's" in against.stdout
    # The log itself no longer holds the checkpoint the receipt was given under.
    verified = jamu(
        realm.env(GATEWAY_DATA_DIR=str(copies["everything"])),
        "audit",
        "verify",
        "--checkpoint",
        str(tmp_path / "receipt.json"),
    )
    assert verified.returncode == 1 and "history before seq" in verified.stdout, verified.stdout
    # Two verifiers compare what they were shown: the forged checkpoint bears no witness's cosignature.
    assert notes.verified(newer, [notes.Verifier.parse(log_vkey)])
    with pytest.raises(notes.NoteError):
        notes.verified(newer, [notes.Verifier.parse(w.vkey) for w in witnesses])


def test_a_rotated_log_key_begins_a_new_origin_chained_to_the_old(realm: Realm, tmp_path: Path) -> None:
    data = tmp_path / "var"
    env = realm.env(GATEWAY_DATA_DIR=str(data), GATEWAY_LOG_ORIGIN=ORIGIN)
    first = serve(realm, tmp_path / "first.log", [], GATEWAY_DATA_DIR=str(data))
    try:
        assert person(first, token(first, realm, "elections-app")).status_code == 200
        running = jamu(env, "audit", "rotate-key")
        assert running.returncode == 2 and "stop it first" in running.stderr
    finally:
        first.stop()
    rotated = jamu(env, "audit", "rotate-key")
    assert rotated.returncode == 0, rotated.stderr
    new_origin, new_vkey = rotated.stdout.strip().split(" ")
    assert re.fullmatch(re.escape(ORIGIN) + "/k[0-9a-f]{8}", new_origin)
    assert notes.Verifier.parse(new_vkey).name == new_origin
    second = serve(realm, tmp_path / "second.log", [], GATEWAY_DATA_DIR=str(data))
    try:
        elections = token(second, realm, "elections-app")
        answered = person(second, elections)
        assert answered.headers["audit-log-position"].startswith(f"{new_origin} ")
        origins = get(second, "/v1/audit/origins", elections).json()["origins"]
        assert {"origin": new_origin, "vkey": new_vkey} in origins and len(origins) == 2
        receipt = receipt_of(second, elections, answered.json()["transaction_id"], quorum=True)
    finally:
        second.stop()
    (tmp_path / "r.json").write_text(json.dumps(receipt))
    assert jamu({}, "audit", "verify-proof", str(tmp_path / "r.json"), "--vkey", new_vkey).returncode == 0
    verified = jamu(env, "audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert f"ok: {ORIGIN}:" in verified.stdout and f"ok: {new_origin}:" in verified.stdout
    old_head = json.loads((_log_dir(data) / "retired.json").read_text())
    first_new = orjson.loads(next(SegmentLog(_log_dir(data, new_origin), read_only=True).records(0))[1])
    assert first_new["prev_hash"] == old_head["hash"] and "rotated" in old_head["reason"]
