"""The one writer (`DurableAccessLog`, group commit) over the segment store: every event durable and
chained, numbered from 0 without a gap, across restarts; a rewritten entry is found by the chain."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson

from gateway.audit.chain import ChainVerifier
from gateway.audit.record import AccessRecord
from gateway.audit.segment_store import SegmentStore, entry_bytes
from gateway.audit.segments import HEADER, frame
from gateway.audit.writer import DurableAccessLog
from gateway.telemetry import Metrics


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
    entry = orjson.loads(data[offset + HEADER.size:offset + HEADER.size + length])
    forged = entry_bytes({**entry, "status": 403 if entry["status"] == 200 else 200})  # the same length
    assert len(forged) == length
    path.write_bytes(data[:offset] + frame(5, forged) + data[offset + HEADER.size + length:])
    store = _opened(tmp_path)
    report = _verify(store)
    assert not report.ok  # type: ignore[attr-defined]
    assert report.problems[0] == {"seq": 5, "problem": "event altered: its content does not match its hash"}  # type: ignore[attr-defined]
