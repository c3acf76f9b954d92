"""The segment log: framing, contiguous sequence numbers across segments, durable appends, and recovery
that cuts a torn tail but reports every other kind of damage with its place."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from crc32c import crc32c

from gateway.audit.segments import HEADER, CorruptLog, SegmentLog, SegmentReader, frame

SEGMENT = 4096


def payloads(first: int, count: int) -> list[bytes]:
    return [f'{{"n":{n},"pad":"{"x" * (n % 50)}"}}'.encode() for n in range(first, first + count)]


def written(directory: Path, segment_bytes: int = SEGMENT) -> SegmentLog:
    log = SegmentLog(directory, segment_bytes=segment_bytes)
    log.open()
    for start in range(0, 300, 30):
        assert log.append(payloads(start, 30)) == start
    log.close()
    return log


def reopened(directory: Path, **options: object) -> SegmentLog:
    log = SegmentLog(directory, segment_bytes=SEGMENT, **options)  # type: ignore[arg-type]
    log.open()
    return log


def test_crc32c_is_castagnoli() -> None:
    assert crc32c(b"123456789") == 0xE3069283  # the standard check value


def test_records_round_trip_across_preallocated_segments(tmp_path: Path) -> None:
    written(tmp_path)
    segments = sorted(tmp_path.glob("*.seg"))
    assert len(segments) > 3
    assert all(p.stat().st_size == SEGMENT for p in segments)  # preallocated
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in segments)
    assert next(int(p.stem) for p in segments) == 0
    log = reopened(tmp_path)
    assert log.recovery.next_seq == 300 and log.recovery.torn_bytes == 0
    records = list(log.records())
    assert [seq for seq, _ in records] == list(range(300))
    assert [payload for _, payload in records] == payloads(0, 300)
    assert [seq for seq, _ in log.records(from_seq=295)] == [295, 296, 297, 298, 299]
    assert log.append([b'{"after":"restart"}']) == 300
    log.close()
    assert list(reopened(tmp_path).records(300)) == [(300, b'{"after":"restart"}')]


def test_a_batch_larger_than_a_segment_gets_a_segment_of_its_own(tmp_path: Path) -> None:
    log = SegmentLog(tmp_path, segment_bytes=SEGMENT)
    log.open()
    big = [b"y" * 3000, b"z" * 3000]
    assert log.append(big) == 0
    assert log.append([b"small"]) == 2
    log.close()
    assert [p for _, p in reopened(tmp_path).records()] == [*big, b"small"]


def _last_segment(directory: Path) -> Path:
    return sorted(directory.glob("*.seg"))[-1]


def _tail_offset(directory: Path) -> int:
    data = _last_segment(directory).read_bytes()
    return len(data.rstrip(b"\x00"))


@pytest.mark.parametrize("cut", [1, HEADER.size - 3, HEADER.size + 5])
def test_a_torn_tail_is_cut_and_reported(tmp_path: Path, cut: int) -> None:
    """The last write only partly on disk: never acknowledged, so it is zeroed and the log goes on."""
    written(tmp_path)
    path, end = _last_segment(tmp_path), _tail_offset(tmp_path)
    torn = frame(300, b'{"never":"acknowledged"}')[:cut]
    with open(path, "r+b") as handle:
        handle.seek(end)
        handle.write(torn)
    log = reopened(tmp_path)
    assert log.recovery.next_seq == 300 and log.recovery.torn_bytes == len(torn.rstrip(b"\x00"))
    assert _tail_offset(tmp_path) == end  # cut
    assert log.append([b"next"]) == 300
    log.close()
    assert list(reopened(tmp_path).records(299))[-1] == (300, b"next")


def test_read_only_open_reports_a_torn_tail_without_cutting(tmp_path: Path) -> None:
    written(tmp_path)
    path, end = _last_segment(tmp_path), _tail_offset(tmp_path)
    with open(path, "r+b") as handle:
        handle.seek(end)
        handle.write(frame(300, b"torn")[:10])
    log = reopened(tmp_path, read_only=True)
    assert log.recovery.torn_bytes == 10 and _tail_offset(tmp_path) == end + 10
    with pytest.raises(PermissionError):
        log.append([b"x"])


def _records_at(path: Path) -> list[tuple[int, int]]:
    """(offset, length) of each frame in a segment."""
    data, offset, found = path.read_bytes(), 0, []
    while offset + HEADER.size <= len(data) and data[offset : offset + HEADER.size] != bytes(HEADER.size):
        length = HEADER.unpack_from(data, offset)[0]
        found.append((offset, length))
        offset += HEADER.size + length
    return found


def test_a_flipped_byte_before_the_tail_is_corruption_located(tmp_path: Path) -> None:
    written(tmp_path)
    path = _last_segment(tmp_path)
    offset, length = _records_at(path)[1]
    data = bytearray(path.read_bytes())
    data[offset + HEADER.size + length // 2] ^= 0x01
    path.write_bytes(bytes(data))
    first = int(path.stem)
    with pytest.raises(CorruptLog) as caught:
        reopened(tmp_path)
    assert (caught.value.segment, caught.value.offset, caught.value.seq) == (path, offset, first + 1)
    assert "CRC" in str(caught.value)


@pytest.mark.parametrize("bit", [0, 7, 30])
def test_a_damaged_length_field_is_corruption_not_a_torn_tail(tmp_path: Path, bit: int) -> None:
    """A length gone wrong points the reader anywhere; the whole records after it still show the damage
    is in the middle, and nothing acknowledged is cut."""
    written(tmp_path)
    path = _last_segment(tmp_path)
    offset, _ = _records_at(path)[1]
    data = bytearray(path.read_bytes())
    data[offset + bit // 8] ^= 1 << (bit % 8)
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptLog) as caught:
        reopened(tmp_path)
    assert (caught.value.offset, caught.value.seq) == (offset, int(path.stem) + 1)
    assert len(_records_at(path)) >= 2  # nothing was zeroed


def test_damage_to_a_record_a_checkpoint_covers_is_never_cut(tmp_path: Path) -> None:
    written(tmp_path)
    path = _last_segment(tmp_path)
    offset, length = _records_at(path)[-1]  # the very last record: nothing follows it
    data = bytearray(path.read_bytes())
    data[offset + HEADER.size + length // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptLog):
        SegmentLog(tmp_path, segment_bytes=SEGMENT).open(protect_through=299)  # sealed: acknowledged
    recovery = SegmentLog(tmp_path, segment_bytes=SEGMENT).open(protect_through=298)  # past it: torn
    assert recovery.next_seq == 299 and recovery.torn_bytes > 0


def test_damage_in_an_earlier_segment_is_corruption_even_at_its_end(tmp_path: Path) -> None:
    written(tmp_path)
    first = sorted(tmp_path.glob("*.seg"))[0]
    offset, _length = _records_at(first)[-1]
    data = bytearray(first.read_bytes())
    data[offset + HEADER.size] ^= 0xFF
    first.write_bytes(bytes(data))
    with pytest.raises(CorruptLog) as caught:
        reopened(tmp_path)
    assert caught.value.segment == first and caught.value.offset == offset


def test_a_removed_record_is_a_gap_even_as_the_last_one(tmp_path: Path) -> None:
    written(tmp_path)
    path = _last_segment(tmp_path)
    frames = _records_at(path)
    (a_offset, _a_length), (b_offset, b_length) = frames[-2], frames[-1]
    data = path.read_bytes()
    last = data[b_offset : b_offset + HEADER.size + b_length]
    spliced = data[:a_offset] + last + bytes(len(data) - a_offset - len(last))
    path.write_bytes(spliced)
    with pytest.raises(CorruptLog) as caught:
        reopened(tmp_path)
    assert "sequence gap" in str(caught.value) and caught.value.offset == a_offset


def test_a_missing_segment_is_corruption(tmp_path: Path) -> None:
    written(tmp_path)
    sorted(tmp_path.glob("*.seg"))[1].unlink()
    with pytest.raises(CorruptLog) as caught:
        reopened(tmp_path)
    assert "expected" in str(caught.value)


@pytest.mark.slow
def test_an_acknowledged_append_survives_sigkill(tmp_path: Path) -> None:
    """A child appends and prints each acknowledged sequence number, then is killed mid-stream: every
    number it printed is in the log afterwards."""
    script = (
        "import sys\nfrom pathlib import Path\nfrom gateway.audit.segments import SegmentLog\n"
        f"log = SegmentLog(Path({str(tmp_path)!r}), segment_bytes=65536)\nlog.open()\n"
        "for n in range(100000):\n"
        "    first = log.append([b'{\"n\":%d}' % n])\n"
        "    print(first, flush=True)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2]
    )
    assert child.stdout is not None
    acknowledged = [int(child.stdout.readline()) for _ in range(200)]
    child.kill()
    child.wait(timeout=10)
    acknowledged += [int(line) for line in child.stdout.read().split()]
    log = reopened(tmp_path)
    held = {seq for seq, _ in log.records()}
    assert set(acknowledged) <= held and log.recovery.next_seq == len(held) == max(held) + 1


def test_a_full_disk_fails_the_append_and_the_log_recovers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = SegmentLog(tmp_path, segment_bytes=SEGMENT)
    log.open()
    log.append([b"one"])

    def no_space(*_: object) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "pwrite", no_space)
    with pytest.raises(OSError):
        log.append([b"two"])
    assert log.next_seq == 1  # nothing was counted as written
    monkeypatch.undo()
    assert log.append([b"two"]) == 1
    log.close()
    assert [p for _, p in reopened(tmp_path).records()] == [b"one", b"two"]


def test_a_write_whose_sync_fails_leaves_nothing_that_reads_as_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pwrite reached the file but fdatasync failed (EIO): those records were never acknowledged, so they
    are zeroed; the next append takes their seq, and a follower or a restart sees only what was synced."""
    import gateway.audit.segments as segments

    log = SegmentLog(tmp_path, segment_bytes=SEGMENT)
    log.open()
    log.append(payloads(0, 5))
    reader = SegmentReader(tmp_path)
    assert len(reader.read(0, 100)) == 5
    real = os.fdatasync
    calls = 0

    def failing_once(fd: int) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError(5, "Input/output error")
        real(fd)

    monkeypatch.setattr(segments.os, "fdatasync", failing_once)
    with pytest.raises(OSError):
        log.append([b'{"failed":1}', b'{"failed":2}'])
    monkeypatch.setattr(segments.os, "fdatasync", real)
    assert reader.read(5, 100) == []  # zeroed: nothing to follow
    assert log.append([b'{"kept":1}']) == 5
    assert [p for _, p in reader.read(5, 100)] == [b'{"kept":1}']
    log.close()
    assert [p for _, p in reopened(tmp_path).records(5)] == [b'{"kept":1}']
