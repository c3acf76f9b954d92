"""The one writer (`DurableAccessLog`, group commit) over the segment store: every event durable and
chained, numbered from 0 without a gap, across restarts; a rewritten entry is found by the chain."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.audit.chain import ChainVerifier, CheckpointSigner
from gateway.audit.index import STOPPED, IndexTask, OriginState
from gateway.audit.origin import claim_slot, legacy_origin, log_directory, log_origin
from gateway.audit.record import AccessRecord
from gateway.audit.segment_store import Link, LogMismatch, SegmentStore, entry_bytes, read_checkpoints, read_link
from gateway.audit.segments import HEADER, SegmentLog, SegmentReader, frame
from gateway.audit.writer import DurableAccessLog
from gateway.metrics import Metrics
from gateway.settings import Settings


def record(n: int) -> AccessRecord:
    rec = AccessRecord(operation="verify", administration="ceni", client_id="ceni-app", subject_hash=f"{n:064x}")
    rec.finish(200)
    return rec


async def _write(directory: Path, count: int) -> list[AccessRecord]:
    store = SegmentStore(directory, segment_bytes=8192)
    access_log = DurableAccessLog(store, Metrics(), max_batch=32)  # type: ignore[arg-type]
    await access_log.start()
    records = [record(n) for n in range(count)]
    await asyncio.gather(*(access_log.append(r) for r in records))
    await access_log.close()
    await store.close()
    return records


def _opened(directory: Path) -> SegmentStore:
    store = SegmentStore(directory, segment_bytes=8192)
    asyncio.run(store.probe())
    return store


def _verify(store: SegmentStore) -> object:
    verifier = ChainVerifier([], {}, require_sealed=False, first_seq=0)
    for entry in store.entries():
        verifier.feed(entry)
    return verifier.finish()


def test_concurrent_appends_are_durable_chained_and_numbered_from_zero(tmp_path: Path) -> None:
    records = asyncio.run(_write(tmp_path, 200))
    store = _opened(tmp_path)
    entries = list(store.entries())
    assert [e["seq"] for e in entries] == list(range(200))
    assert {e["id"] for e in entries} == {r.id for r in records}
    assert len(list(tmp_path.glob("*.seg"))) > 1  # the batches crossed segments
    report = _verify(store)
    assert report.ok and report.events_checked == 200 and report.last_seq == 199  # type: ignore[attr-defined]


def test_a_restart_continues_the_numbering_and_the_chain(tmp_path: Path) -> None:
    asyncio.run(_write(tmp_path, 50))
    asyncio.run(_write(tmp_path, 30))
    store = _opened(tmp_path)
    entries = list(store.entries())
    assert [e["seq"] for e in entries] == list(range(80))
    assert entries[50]["prev_hash"] == entries[49]["hash"]
    assert _verify(store).ok  # type: ignore[attr-defined]


def test_an_entry_rewritten_with_a_good_crc_is_found_by_the_chain(tmp_path: Path) -> None:
    """Someone with write access rewrites an entry's status and fixes the frame's CRC: the segments still
    read, the hash chain does not hold."""
    asyncio.run(_write(tmp_path, 20))
    path = sorted(tmp_path.glob("*.seg"))[0]
    data = path.read_bytes()
    offset, seq = 0, 0
    while seq < 5:
        offset += HEADER.size + HEADER.unpack_from(data, offset)[0]
        seq += 1
    length = HEADER.unpack_from(data, offset)[0]
    entry = orjson.loads(data[offset + HEADER.size : offset + HEADER.size + length])
    forged = entry_bytes({**entry, "status": 403 if entry["status"] == 200 else 200})  # the same length
    assert len(forged) == length
    path.write_bytes(data[:offset] + frame(5, forged) + data[offset + HEADER.size + length :])
    store = _opened(tmp_path)
    report = _verify(store)
    assert not report.ok  # type: ignore[attr-defined]
    assert report.problems[0] == {"seq": 5, "problem": "event altered: its content does not match its hash"}  # type: ignore[attr-defined]


@pytest.mark.slow
def test_appends_return_their_seq_and_the_writer_hands_it_to_each_request(tmp_path: Path) -> None:
    async def run() -> list[int | None]:
        store = SegmentStore(tmp_path, origin="gw.example/access-log/a-0")
        access_log = DurableAccessLog(store, Metrics(), max_batch=8)  # type: ignore[arg-type]
        await access_log.start()
        seqs = await asyncio.gather(*(access_log.append(record(n)) for n in range(20)))
        await access_log.close()
        await store.close()
        return list(seqs)

    seqs = asyncio.run(run())
    assert sorted(seqs) == list(range(20))  # type: ignore[type-var]
    store = _opened(tmp_path)
    by_seq = {e["seq"]: e["id"] for e in store.entries()}
    assert len(by_seq) == 20


@pytest.mark.slow
def test_one_writer_per_log_and_one_origin_per_directory(tmp_path: Path) -> None:
    async def run() -> None:
        first = SegmentStore(tmp_path, origin="gw/access-log/a-0")
        await first.probe()
        with pytest.raises(LogMismatch, match="another process"):
            await SegmentStore(tmp_path, origin="gw/access-log/a-0").probe()
        await first.close()
        with pytest.raises(LogMismatch, match="holds the log of"):
            await SegmentStore(tmp_path, origin="gw/access-log/b-0").probe()
        again = SegmentStore(tmp_path, origin="gw/access-log/a-0")
        await again.probe()
        await again.close()

    asyncio.run(run())


@pytest.mark.slow
def test_checkpoints_are_signed_beside_the_segments_and_verify(tmp_path: Path) -> None:
    signer = CheckpointSigner(Ed25519PrivateKey.generate())

    async def run() -> None:
        store = SegmentStore(tmp_path, origin="gw/access-log/a-0", signer=signer, seal_every=10)
        access_log = DurableAccessLog(store, Metrics(), max_batch=4)  # type: ignore[arg-type]
        await access_log.start()
        for n in range(25):
            await access_log.append(record(n))
        assert await store.seal() is True
        assert await store.seal() is False  # nothing new to seal
        await access_log.close()
        await store.close()

    asyncio.run(run())
    checkpoints = read_checkpoints(tmp_path)
    assert [c.seq for c in checkpoints][:2] == [9, 19] and checkpoints[-1].seq == 24
    verifier = ChainVerifier(checkpoints, {signer.key_id: signer.public_key}, require_sealed=True, first_seq=0)
    for entry in _opened(tmp_path).entries():
        verifier.feed(entry)
    assert verifier.finish().ok


@pytest.mark.slow
def test_a_new_log_continues_the_head_it_is_linked_to(tmp_path: Path) -> None:
    head = Link("gw/access-log/1.0", 41, "ab" * 32)

    async def run() -> None:
        store = SegmentStore(tmp_path, origin="gw/access-log/a-0")
        store.continue_from(head)
        access_log = DurableAccessLog(store, Metrics())  # type: ignore[arg-type]
        await access_log.start()
        await access_log.append(record(1))
        await access_log.close()
        await store.close()
        later = SegmentStore(tmp_path, origin="gw/access-log/a-0")
        await later.probe()
        later.continue_from(Link("other", 1, "cd" * 32))  # an existing log keeps its link
        await later.close()

    asyncio.run(run())
    assert read_link(tmp_path) == head
    [entry] = list(_opened(tmp_path).entries())
    assert entry["seq"] == 0 and entry["prev_hash"] == head.hash
    verifier = ChainVerifier([], {}, require_sealed=False, first_seq=0, start_hash=head.hash)
    verifier.feed(entry)
    assert verifier.finish().ok


def test_the_reader_follows_a_log_across_segments_as_it_grows(tmp_path: Path) -> None:
    log = SegmentLog(tmp_path, segment_bytes=4096)
    log.open()
    reader = SegmentReader(tmp_path)
    assert reader.read(0, 10) == []
    log.append([b"x" * 300 for _ in range(5)])
    assert [seq for seq, _ in reader.read(0, 3)] == [0, 1, 2]
    assert [seq for seq, _ in reader.read(3, 100)] == [3, 4]
    for _ in range(10):  # several segments' worth
        log.append([b"y" * 300 for _ in range(5)])
    assert len(list(tmp_path.glob("*.seg"))) > 2
    got = reader.read(5, 1000)
    assert [seq for seq, _ in got] == list(range(5, 55)) and got[-1][1] == b"y" * 300
    assert [seq for seq, _ in SegmentReader(tmp_path).read(33, 5)] == list(range(33, 38))  # a fresh seek


def test_after_a_failed_append_the_probe_proves_there_is_room_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def run() -> None:
        store = SegmentStore(tmp_path, origin="gw/access-log/a-0", segment_bytes=65536)
        await store.probe()

        def no_space(*_: object) -> None:
            raise OSError(28, "No space left on device")

        with monkeypatch.context() as patched:
            patched.setattr(store.log, "append", no_space)
            patched.setattr(store.log, "_roll", no_space)
            with pytest.raises(OSError):
                await store.append([record(0).event()])
            with pytest.raises(OSError):
                await store.probe()
        await store.probe()  # space again: a new segment can be made
        assert await store.append([record(1).event()]) == 0  # nothing was written by the failed append
        await store.close()

    asyncio.run(run())


def test_slots_origins_and_directories(tmp_path: Path) -> None:
    first, second = claim_slot(tmp_path), claim_slot(tmp_path)
    assert (first.index, second.index) == (0, 1)
    first.release()
    again = claim_slot(tmp_path)
    assert again.index == 0  # a restarted worker takes back the slot its predecessor left
    again.release()
    second.release()
    host = socket.gethostname()
    assert log_origin("https://jamu.example.ml", None, 1, 2) == f"jamu.example.ml/access-log/{host}-1"
    assert log_origin("http://127.0.0.1:8000", "gw.example/log", 0, 1) == "gw.example/log"
    assert log_origin("http://127.0.0.1:8000", "gw.example/log", 3, 4) == "gw.example/log/3"
    assert log_origin("http://127.0.0.1:8000", "gw.example/log", 1, 1) == "gw.example/log/1"  # never slot 0's
    with pytest.raises(ValueError, match="too long"):
        log_directory(tmp_path, "a." * 95)
    assert legacy_origin("https://jamu.example.ml") == "jamu.example.ml/access-log/1.0"
    directory = log_directory(tmp_path, "../../etc/access-log/x")
    assert directory.parent == tmp_path and "/" not in directory.name and ".." not in directory.name


@pytest.mark.parametrize("origin", ["with space/x", "plus+sign/x", "new\nline", "", "/leading-slash", "é/x"])
def test_an_origin_that_is_not_a_plain_schema_less_url_is_refused(origin: str) -> None:
    with pytest.raises(ValueError, match="log_origin"):
        Settings(log_origin=origin)


def test_a_torn_tail_is_cut_and_reported_when_the_writer_opens_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    asyncio.run(_write(tmp_path, 10))
    [segment] = sorted(tmp_path.glob("*.seg"))
    data = segment.read_bytes()
    end = len(data.rstrip(b"\x00"))
    with open(segment, "r+b") as handle:  # half of a record whose sync never came
        handle.seek(end)
        handle.write(frame(10, b'{"torn":true}')[:20])
    with caplog.at_level("WARNING", logger="gateway.audit.segment_store"):
        store = _opened(tmp_path)
    assert store.torn_bytes == 20 and store.next_seq == 10
    assert "torn write of 20 bytes after seq 9 was cut" in caplog.text


def test_when_another_origin_holds_audit_reads_back() -> None:
    def state(lag_s: float, reported_at: float) -> OriginState:
        return OriginState("gw/access-log/host-1", 10, 0, None, lag_s, reported_at)

    now = 1_000_000.0
    assert state(0.1, now - 1).behind(2.0, now, 10.0) is None  # following closely
    assert "behind" in (state(3.5, now - 1).behind(2.0, now, 10.0) or "")
    assert "behind" in (state(1.5, now - 1).behind(2.0, now, 10.0) or "")  # 1.5 s then, 2.5 s by now
    assert "has not reported for 30 s" in (state(0.0, now - 30).behind(2.0, now, 10.0) or "")  # died or hangs
    assert state(STOPPED, now - 3600).behind(2.0, now, 10.0) is None  # stopped caught up
    assert state(0.0, 0.0).behind(2.0, now, 10.0) is None  # never followed live (1.0 log, rebuilt)


@pytest.mark.slow
def test_the_index_lag_counts_from_the_oldest_entry_not_yet_indexed() -> None:
    """Under steady load the index is always a little behind: the lag is the age of the oldest entry it
    lacks, not the time since it was last fully caught up."""

    class Follower:
        indexed_through = 0
        report_lag = None

    durable = {"end": 0}
    follower = Follower()
    task = IndexTask(follower, lambda: durable["end"], Metrics())  # type: ignore[arg-type]
    first = time.monotonic()
    for _ in range(5):  # commits every 50 ms, each indexed right after the next one
        durable["end"] += 10
        last = time.monotonic()
        task.notify()
        time.sleep(0.05)
        follower.indexed_through = durable["end"] - 10
        behind, waited = task.lag()
        assert behind == 10 and waited <= time.monotonic() - last  # the last commit's age…
    assert waited < last - first  # …not the time since the index was last wholly caught up
    follower.indexed_through = durable["end"]
    assert task.lag() == (0, 0.0)
    assert task.waited(0) == 0.0  # nothing noted is older than what is indexed
