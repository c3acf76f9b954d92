"""The segment store as a transparency log: C2SP checkpoints over its tree, a tree that resumes after a
restart, and the refusal to sign or append once the tree no longer extends the last checkpoint; the
witnesses' client against a reference witness over HTTP (ASGI); receipts checked with public keys."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import httpx
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.audit import merkle, notes
from gateway.audit.chain import CheckpointSigner, link
from gateway.audit.proofs import LogView, parse_proof, proof_text, receipt_proof
from gateway.audit.receipts import ReceiptInvalid, check_receipt
from gateway.audit.record import AccessRecord
from gateway.audit.segment_store import (
    LogMismatch,
    NotAnExtension,
    SegmentStore,
    entry_bytes,
    read_checkpoints,
    read_retired,
)
from gateway.audit.segments import EntryLocator, SegmentLog, frame
from gateway.audit.witness import WitnessClient, WitnessesFile
from gateway.metrics import Metrics
from gateway.witness_server import create_witness_app, init_witness

ORIGIN = "gw.example/access-log/unit-0"


def events(n: int, start: int = 0) -> list[dict[str, object]]:
    made = []
    for i in range(start, start + n):
        record = AccessRecord(operation="verify", administration="ceni", client_id="ceni-app", subject_hash=f"{i:064x}")
        record.finish(200)
        made.append(record.event())
    return made


def store_at(directory: Path, signer: CheckpointSigner, origin: str = ORIGIN) -> SegmentStore:
    return SegmentStore(directory, origin=origin, signer=signer, segment_bytes=8192, seal_every=10_000)


async def fill(directory: Path, signer: CheckpointSigner, batches: list[int]) -> SegmentStore:
    store = store_at(directory, signer)
    done = 0
    for size in batches:
        await store.append(events(size, done))
        done += size
        await store.seal()
    return store


@pytest.fixture
def signer() -> CheckpointSigner:
    return CheckpointSigner(Ed25519PrivateKey.generate())


def test_checkpoints_are_c2sp_notes_over_the_tree_of_the_entries(tmp_path: Path, signer: CheckpointSigner) -> None:
    async def run() -> None:
        store = await fill(tmp_path, signer, [3, 1, 7])
        assert store.verifier is not None
        text, _ = notes.verified(store.latest_note or "", [store.verifier])
        checkpoint = notes.Checkpoint.parse(text)
        leaves = [merkle.leaf_hash(p) for _, p in SegmentLog(tmp_path, read_only=True).records(0)]
        assert (checkpoint.origin, checkpoint.size, checkpoint.root) == (ORIGIN, 11, merkle.root(leaves))
        assert [c.seq for c in read_checkpoints(tmp_path)] == [2, 3, 10]
        assert (tmp_path / "vkey").read_text().strip() == store.verifier.vkey()
        await store.close()
        # A restart resumes the tree: the next checkpoint extends the last.
        again = store_at(tmp_path, signer)
        await again.append(events(5, 11))
        await again.seal()
        later = notes.Checkpoint.parse(notes.verified(again.latest_note or "", [store.verifier])[0])
        leaves += [merkle.leaf_hash(entry_bytes(e)) for e in again.entries(11)]
        assert later.size == 16 and later.root == merkle.root(leaves)
        merkle.verify_consistency(11, 16, checkpoint.root, later.root, again.tree.consistency(11, 16))
        await again.close()

    asyncio.run(run())


def _forge(directory: Path) -> None:
    """Entry 2 rewritten, the chain and every CRC recomputed: one segment written anew."""
    records = [orjson.loads(p) for _, p in SegmentLog(directory, read_only=True).records(0)]
    records[2]["decision"] = "deny"
    forged = link(
        [{k: v for k, v in e.items() if k not in ("seq", "prev_hash", "hash")} for e in records],
        -1,
        records[0]["prev_hash"],
    )
    for path in directory.glob("*.seg"):
        path.unlink()
    (directory / f"{0:020d}.seg").write_bytes(b"".join(frame(e["seq"], entry_bytes(e)) for e in forged))


def _drop_segments(directory: Path) -> int:
    for path in directory.glob("*.seg"):
        path.unlink()
    return (directory / "tree" / "level-0").stat().st_size


def test_a_tree_rewritten_with_the_entries_is_refused_at_start(tmp_path: Path, signer: CheckpointSigner) -> None:
    async def run() -> None:
        await (await fill(tmp_path, signer, [6])).close()
        _forge(tmp_path)

        # The tree left as it was: the start passes, the check of every entry finds seq 2.
        store = store_at(tmp_path, signer)
        await store.probe()
        assert store.scrub() == (
            "entry seq 2 is not the entry the signed tree holds: it was rewritten after it was logged"
        )
        with pytest.raises(NotAnExtension):
            await store.append(events(1, 6))
        assert await store.seal() is False
        await store.close()

        # The tree recomputed from the forged entries: its root is not the last checkpoint's.
        shutil.rmtree(tmp_path / "tree")
        before = read_checkpoints(tmp_path)
        store = store_at(tmp_path, signer)
        with pytest.raises(NotAnExtension, match="is not the one its last signed checkpoint covers"):
            await store.probe()
        assert read_checkpoints(tmp_path) == before
        await store.close()

    asyncio.run(run())


def test_a_log_cut_short_of_its_checkpoint_is_refused_and_its_tree_kept(
    tmp_path: Path, signer: CheckpointSigner
) -> None:
    async def run() -> None:
        await (await fill(tmp_path, signer, [40])).close()
        size = _drop_segments(tmp_path)
        store = store_at(tmp_path, signer)
        with pytest.raises(NotAnExtension, match="entries were deleted"):
            await store.probe()
        assert (tmp_path / "tree" / "level-0").stat().st_size == size  # the evidence stays
        await store.close()

    asyncio.run(run())


def test_a_successor_continues_a_retired_log_and_the_retired_one_is_never_opened(
    tmp_path: Path, signer: CheckpointSigner
) -> None:
    async def run() -> None:
        directory = tmp_path / "log" / "a"
        store = await fill(directory, signer, [4])
        head = store._head
        successor = await store.begin_successor("the log key was rotated", "k0123abcd")
        assert successor == f"{ORIGIN}/k0123abcd" and store.origin == successor
        retired = read_retired(directory)
        assert retired is not None and (retired["origin"], retired["seq"], retired["hash"]) == (ORIGIN, *head)
        await store.append(events(2, 4))
        first = next(store.entries(0))
        assert first["prev_hash"] == head[1]
        await store.close()
        with pytest.raises(LogMismatch, match="retired"):
            await store_at(directory, signer).probe()

    asyncio.run(run())


def test_a_new_key_on_an_old_log_is_seen_before_anything_is_signed(tmp_path: Path, signer: CheckpointSigner) -> None:
    async def run() -> None:
        await (await fill(tmp_path, signer, [2])).close()
        rotated = store_at(tmp_path, CheckpointSigner(Ed25519PrivateKey.generate()))
        assert rotated.key_changed()
        with pytest.raises(LogMismatch, match="a new key begins a new origin"):
            await rotated.probe()
        assert not store_at(tmp_path, signer).key_changed()

    asyncio.run(run())


def test_entries_are_found_by_seq_as_the_log_grows(tmp_path: Path) -> None:
    log = SegmentLog(tmp_path, segment_bytes=4096)
    log.open()
    locator = EntryLocator(tmp_path)
    payloads = [b'{"n":%d,"pad":"%s"}' % (i, b"x" * (i % 50)) for i in range(700)]
    for start in range(0, 300, 7):
        log.append(payloads[start : min(start + 7, 300)])
    assert locator.read(299) == payloads[299] and locator.read(300) is None
    log.append(payloads[300:])  # the log grows past what the locator mapped
    for seq in (300, 0, 1, 127, 128, 129, 255, 256, 511, 699):
        assert locator.read(seq) == payloads[seq]
    assert locator.read(700) is None
    assert list(locator.scan(297, 5)) == [(seq, payloads[seq]) for seq in range(297, 302)]
    assert EntryLocator(tmp_path).read(5) == payloads[5]  # a fresh reader maps the old segments
    log.close()


def test_a_receipt_holds_and_each_alteration_is_refused(tmp_path: Path, signer: CheckpointSigner) -> None:
    async def run() -> None:
        await (await fill(tmp_path, signer, [9])).close()

    asyncio.run(run())
    view = LogView(tmp_path)
    head = view.signed()
    assert head is not None and head.size == 9
    entry, proof = receipt_proof(view, 4, head)
    receipt = {"origin": ORIGIN, "seq": 4, "entry": entry.decode(), "proof": proof, "quorum": True}
    assert view.verifier is not None
    keys = [view.verifier]
    assert "seq 4 is in the tree of 9 entries" in check_receipt(receipt, keys, [])
    parsed = parse_proof(proof)
    assert parsed.index == 4 and len(parsed.hashes) == 4
    bad = [
        {**receipt, "entry": entry.decode().replace("permit", "denyyy")},
        {**receipt, "seq": 5},
        {**receipt, "origin": "other.example/log"},
        {**receipt, "proof": proof_text(4, parsed.hashes[:-1], parsed.note)},
        {**receipt, "proof": proof.replace("index 4", "index 04")},
        {**receipt, "proof": "c2sp.org/tlog-proof@v2" + proof[len("c2sp.org/tlog-proof@v1") :]},
        {"origin": ORIGIN},
    ]
    for altered in bad:
        with pytest.raises(ReceiptInvalid):
            check_receipt(altered, keys, [])
    with pytest.raises(ReceiptInvalid, match="the checkpoint"):
        check_receipt(receipt, [CheckpointSigner(Ed25519PrivateKey.generate()).note_signer(ORIGIN).verifier], [])
    view.close()


async def _witnessed(
    tmp_path: Path, signer: CheckpointSigner, quorum: int
) -> tuple[SegmentStore, WitnessClient, list[notes.Verifier]]:
    store = store_at(tmp_path / "log", signer)
    await store.probe()
    assert store.verifier is not None
    witnesses, entries = [], []
    for name in ("dpa", "court"):
        verifier = init_witness(tmp_path / name, f"{name}.example")
        app = create_witness_app(tmp_path / name, {ORIGIN: [store.verifier]})
        witnesses.append(verifier)
        entries.append({"name": verifier.name, "url": f"http://{name}", "vkey": verifier.vkey()})
    transports = {
        f"{n}": httpx.ASGITransport(app=create_witness_app(tmp_path / n, {ORIGIN: [store.verifier]}))
        for n in ("dpa", "court")
    }
    del app

    class Router(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            return await transports[request.url.host].handle_async_request(request)

    config = WitnessesFile.model_validate({"quorum": quorum, "witnesses": entries})
    client = WitnessClient(
        config, ORIGIN, store.tree.consistency, store.record_witnessed, httpx.AsyncClient(transport=Router()), Metrics()
    )
    store.on_checkpoint = client.checkpoint_signed
    return store, client, witnesses


def test_the_witnesses_cosign_each_checkpoint_and_a_quorum_publishes_it(
    tmp_path: Path, signer: CheckpointSigner
) -> None:
    async def run() -> None:
        store, client, witnesses = await _witnessed(tmp_path, signer, 2)
        for n in range(3):
            await store.append(events(5, 5 * n))
            await store.seal()
            await client.round()
            assert client.published is not None and client.published.size == 5 * (n + 1)
        _, good = notes.verified(client.published.note, witnesses)
        assert {s.name for s in good} == {"dpa.example", "court.example"} and client.lag() == 0
        lines = (tmp_path / "log" / "witnessed.jsonl").read_bytes().splitlines()
        assert json.loads(lines[-1])["size"] == 15
        # A witness that lost its state (it holds 0) is asked again from the size it names.
        client._state[0].size = 3
        await store.append(events(2, 15))
        await store.seal()
        await client.round()
        assert client.published.size == 17 and not client.problems()
        await store.close()

    asyncio.run(run())


def test_a_witness_holding_another_history_is_alarmed_and_nothing_published(
    tmp_path: Path, signer: CheckpointSigner
) -> None:
    async def run() -> None:
        store, client, _ = await _witnessed(tmp_path, signer, 1)
        await store.append(events(8))
        await store.seal()
        await client.round()
        assert client.published is not None and client.published.size == 8
        await store.close()
        # The log goes back to an older copy of itself and grows another way.
        for path in (tmp_path / "log").iterdir():
            if path.name not in ("origin", "vkey"):
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        store, client, _ = await _witnessed_again(tmp_path, signer, client)
        await store.append(events(12, 100))
        await store.seal()
        await client.round()
        assert client.published is None
        problems = client.problems()
        assert len(problems) == 2 and all("restored from an older copy or forked" in p for p in problems)
        await store.close()

    asyncio.run(run())


async def _witnessed_again(
    tmp_path: Path, signer: CheckpointSigner, old: WitnessClient
) -> tuple[SegmentStore, WitnessClient, None]:
    store = store_at(tmp_path / "log", signer)
    await store.probe()
    client = WitnessClient(old.witnesses, ORIGIN, store.tree.consistency, store.record_witnessed, old.http, Metrics())
    store.on_checkpoint = client.checkpoint_signed
    return store, client, None


def test_an_unreachable_witness_is_a_lag_not_a_conflict(tmp_path: Path, signer: CheckpointSigner) -> None:
    async def run() -> None:
        store = store_at(tmp_path, signer)
        await store.probe()
        verifier = init_witness(tmp_path / "w", "dpa.example")

        def refuse(request: httpx.Request) -> httpx.Response:
            raise httpx.ConnectError("down", request=request)

        config = WitnessesFile.model_validate(
            {"quorum": 1, "witnesses": [{"name": "dpa.example", "url": "http://dpa", "vkey": verifier.vkey()}]}
        )
        client = WitnessClient(
            config,
            ORIGIN,
            store.tree.consistency,
            store.record_witnessed,
            httpx.AsyncClient(transport=httpx.MockTransport(refuse)),
            Metrics(),
        )
        store.on_checkpoint = client.checkpoint_signed
        await store.append(events(3))
        await store.seal()
        await client.round()
        await asyncio.sleep(0.05)
        assert client.published is None and client.problems() == [] and client.lag() > 0
        assert client.status()[0]["problem"] == "unreachable (ConnectError)"
        await store.close()

    asyncio.run(run())


def test_the_witnesses_file_is_validated() -> None:
    vkey = notes.Cosigner("dpa.example", Ed25519PrivateKey.generate()).verifier.vkey()
    ok = {"quorum": 1, "witnesses": [{"name": "dpa.example", "url": "https://w.example", "vkey": vkey}]}
    assert WitnessesFile.model_validate(ok).quorum == 1
    for bad in (
        {**ok, "quorum": 2},
        {**ok, "quorum": 0},
        {"quorum": 1, "witnesses": [{"name": "other", "url": "https://w", "vkey": vkey}]},
        {"quorum": 1, "witnesses": [{"name": "dpa.example", "url": "ftp://w", "vkey": vkey}]},
        {"quorum": 1, "witnesses": [{"name": "dpa.example", "url": "https://w", "vkey": "x+y+z"}]},
        {"quorum": 1, "witnesses": [ok["witnesses"][0], ok["witnesses"][0]]},
        {**ok, "extra": True},
    ):
        with pytest.raises(ValueError):
            WitnessesFile.model_validate(bad)
    log_vkey = notes.Signer("dpa.example", Ed25519PrivateKey.generate()).verifier.vkey()
    with pytest.raises(ValueError, match="cosignature key"):
        WitnessesFile.model_validate(
            {"quorum": 1, "witnesses": [{"name": "dpa.example", "url": "https://w", "vkey": log_vkey}]}
        )


def test_witnesses_holding_a_larger_tree_show_the_log_was_restored(tmp_path: Path, signer: CheckpointSigner) -> None:
    async def run() -> None:
        store, client, _ = await _witnessed(tmp_path, signer, 2)
        await store.append(events(5))
        await store.seal()
        await client.round()
        await store.close()
        backup = tmp_path / "backup"
        shutil.copytree(tmp_path / "log", backup)
        store, client, _ = await _witnessed_again(tmp_path, signer, client)
        await store.append(events(5, 5))
        await store.seal()
        await client.round()
        assert client.published is not None and client.published.size == 10
        await store.close()
        shutil.rmtree(tmp_path / "log")
        shutil.copytree(backup, tmp_path / "log")
        store, client, _ = await _witnessed_again(tmp_path, signer, client)
        await store.append(events(2, 100))  # entries after the last checkpoint, as a live backup has
        assert store.signed_size == 5 and store.next_seq == 7
        reason = await client.ahead_of(store.latest_note or "", store.signed_size)
        assert reason is not None and "witnesses hold more" in reason and "at 10" in reason
        # One witness's unsigned word is not enough when it is not a majority.
        client._state[1].entry = client._state[1].entry.model_copy(update={"url": "http://nowhere"})
        assert await client.ahead_of(store.latest_note or "", store.signed_size) is None
        await store.close()

    asyncio.run(run())


def test_a_witness_answer_that_is_compressed_or_oversized_is_not_read(tmp_path: Path, signer: CheckpointSigner) -> None:
    async def run() -> None:
        store = store_at(tmp_path, signer)
        await store.probe()
        verifier = init_witness(tmp_path / "w", "dpa.example")
        answers = iter(
            [
                httpx.Response(200, stream=httpx.ByteStream(b"x"), headers={"content-encoding": "br"}),
                httpx.Response(200, stream=httpx.ByteStream("\u2014 x\n".encode() * 20_000)),
            ]
        )

        def witness(request: httpx.Request) -> httpx.Response:
            assert request.headers["accept-encoding"] == "identity"
            return next(answers)

        config = WitnessesFile.model_validate(
            {"quorum": 1, "witnesses": [{"name": "dpa.example", "url": "http://dpa", "vkey": verifier.vkey()}]}
        )
        client = WitnessClient(
            config,
            ORIGIN,
            store.consistency,
            store.record_witnessed,
            httpx.AsyncClient(transport=httpx.MockTransport(witness)),
            Metrics(),
        )
        store.on_checkpoint = client.checkpoint_signed
        for n in range(2):
            await store.append(events(1, n))
            await store.seal()
            await client.round()
            assert client.status()[0]["problem"] == "unreachable (DecodingError)" and client.published is None
        await store.close()

    asyncio.run(run())


def test_at_start_a_log_cut_short_of_its_checkpoint_is_continued_under_a_new_origin(
    tmp_path: Path, signer: CheckpointSigner
) -> None:
    from gateway.audit.component import settle_log
    from gateway.audit.index import IndexFollower
    from gateway.storage.database import create_engine, database_url, migrate

    async def run() -> None:
        directory = tmp_path / "log" / "a"
        await (await fill(directory, signer, [12])).close()
        _drop_segments(directory)  # a restore that copied the checkpoints after the segments
        engine = create_engine(database_url(None, tmp_path))
        await migrate(engine, None)
        store = store_at(directory, signer)
        follower = IndexFollower(engine, directory, origin=ORIGIN)
        await settle_log(store, follower, engine, None)
        assert store.origin.startswith(f"{ORIGIN}/r") and follower.origin == store.origin
        retired = read_retired(directory)
        assert retired is not None and "entries were deleted from the end" in retired["reason"]
        await store.append(events(1))
        assert store.refusal is None and next(store.entries(0))["seq"] == 0
        await store.close()
        await engine.dispose()

    asyncio.run(run())
