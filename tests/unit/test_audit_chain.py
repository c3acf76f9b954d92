"""The hash chain and checkpoints, without I/O: every kind of tampering is caught and located."""

from __future__ import annotations

import copy
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.audit.chain import (
    GENESIS,
    ChainVerifier,
    Checkpoint,
    CheckpointSigner,
    canonical,
    event_hash,
    link,
)

SIGNER = CheckpointSigner(Ed25519PrivateKey.generate())
KEYS = {SIGNER.key_id: SIGNER.public_key}


def raw_event(n: int) -> dict[str, Any]:
    return {
        "id": f"tx-{n}",
        "time": f"2026-11-23T10:00:{n % 60:02d}.000000Z",
        "administration": "ceni",
        "client_id": "ceni-app",
        "operation": "verify",
        "purpose": "voter_roll",
        "legal_basis": "Loi électorale",
        "consent_id": None,
        "subject_hash": f"{n:064x}",
        "attributes_requested": ["family_name"],
        "attributes_released": [],
        "decision": "permit",
        "reason": None,
        "status": 200,
        "latency_ms": 1.25 + n,
        "trace_id": f"{n:032x}",
    }


def chain(count: int) -> list[dict[str, Any]]:
    return link((raw_event(n) for n in range(count)), 0, GENESIS)


def verify(events: list[dict[str, Any]], checkpoints: list[Checkpoint], *, sealed: bool = True) -> Any:
    verifier = ChainVerifier(checkpoints, KEYS, require_sealed=sealed)
    for event in events:
        verifier.feed(event)
    return verifier.finish()


def seal(events: list[dict[str, Any]], *seqs: int) -> list[Checkpoint]:
    by_seq = {e["seq"]: e for e in events}
    return [SIGNER.sign(seq, by_seq[seq]["hash"], "2026-11-23T10:01:00.000000Z") for seq in seqs]


def first_problem(report: Any) -> int:
    return report.problems[0]["seq"]


def test_an_untouched_sealed_chain_verifies() -> None:
    events = chain(10)
    report = verify(events, seal(events, 5, 10))
    assert report.ok, report.problems
    assert (report.events_checked, report.last_seq, report.unsealed_events) == (10, 10, 0)
    assert report.last_checkpoint["seq"] == 10
    assert events[0]["prev_hash"] == GENESIS and events[1]["prev_hash"] == events[0]["hash"]


def test_serialisation_is_canonical_and_covers_every_field_but_the_hash() -> None:
    event = chain(1)[0]
    reordered = dict(reversed(list(event.items())))
    assert canonical(event) == canonical(reordered)
    assert b'"hash"' not in canonical(event)
    assert "Loi électorale".encode() in canonical(event)  # UTF-8, not \\u escapes
    for name in event:
        if name == "hash":
            continue
        changed = {**event, name: "x" if event[name] != "x" else "y"}
        assert event_hash(changed) != event["hash"], name


def test_a_changed_field_is_located() -> None:
    events = chain(10)
    checkpoints = seal(events, 10)
    events[3]["decision"] = "deny"
    report = verify(events, checkpoints)
    assert not report.ok
    assert first_problem(report) == 4
    assert "altered" in report.problems[0]["problem"]


def test_a_deleted_event_is_located() -> None:
    events = chain(10)
    checkpoints = seal(events, 10)
    del events[6]  # seq 7
    report = verify(events, checkpoints)
    assert first_problem(report) == 8
    assert "missing" in report.problems[0]["problem"]


def test_two_swapped_events_are_located() -> None:
    events = chain(10)
    checkpoints = seal(events, 10)
    events[4], events[5] = events[5], events[4]  # seq 6 now comes before seq 5
    report = verify(events, checkpoints)
    assert first_problem(report) == 6


def test_swapped_contents_keeping_sequence_numbers_are_located() -> None:
    events = chain(10)
    checkpoints = seal(events, 10)
    a, b = copy.deepcopy(events[4]), copy.deepcopy(events[5])
    events[4] = {**b, "seq": 5}
    events[5] = {**a, "seq": 6}
    assert first_problem(verify(events, checkpoints)) == 5


def test_a_forged_event_appended_with_a_recomputed_chain_is_not_sealed() -> None:
    events = chain(10)
    checkpoints = seal(events, 10)
    forged = link([raw_event(99)], 10, events[-1]["hash"])
    report = verify(events + forged, checkpoints)
    assert not report.ok
    assert report.problems == [{"seq": 11, "problem": "1 events are not covered by a signed checkpoint"}]
    live = verify(events + forged, checkpoints, sealed=False)  # a running log: reported, not a fault
    assert live.ok and live.unsealed_events == 1


def test_history_rewritten_and_rechained_contradicts_the_checkpoint() -> None:
    events = chain(10)
    checkpoints = seal(events, 4, 10)
    rewritten = [dict(e) for e in events[:6]]
    rewritten[5]["administration"] = "someone-else"
    forged = rewritten[:5] + link(
        [{k: v for k, v in e.items() if k not in ("seq", "prev_hash", "hash")} for e in rewritten[5:] + events[6:]],
        5,
        events[4]["hash"],
    )
    report = verify(forged, checkpoints)
    # One problem, naming where trust ends (not, besides, an "unsealed" tail from seq 5: that tail is the
    # rewritten history the problem already names).
    assert [p["seq"] for p in report.problems] == [10]
    assert "after seq 4" in report.problems[0]["problem"]


def test_events_deleted_from_the_end_are_caught_by_the_last_checkpoint() -> None:
    events = chain(10)
    report = verify(events[:7], seal(events, 5, 10))
    # One fault, the missing end: the entries after seq 5 were sealed by the checkpoint past it.
    assert [p["seq"] for p in report.problems] == [10]
    assert "deleted from the end" in report.problems[0]["problem"]


def test_a_forged_or_foreign_checkpoint_is_refused() -> None:
    events = chain(4)
    good = seal(events, 4)[0]
    tampered = Checkpoint(good.seq, good.head_hash, good.time, good.key_id, good.signature[:-4] + "AAAA")
    assert "not valid" in verify(events, [tampered]).problems[0]["problem"]
    stranger = CheckpointSigner(Ed25519PrivateKey.generate()).sign(4, events[-1]["hash"], good.time)
    assert "unknown key" in verify(events, [stranger]).problems[0]["problem"]


@settings(max_examples=60, deadline=None)
@given(
    st.integers(0, 11),
    st.sampled_from(
        ["id", "time", "administration", "subject_hash", "status", "latency_ms", "attributes_released", "prev_hash"]
    ),
)
def test_any_single_change_is_located_at_its_event(index: int, name: str) -> None:
    events = chain(12)
    checkpoints = seal(events, 12)
    value = events[index][name]
    events[index][name] = (
        value + 1 if isinstance(value, int | float) else [*value, "nin"] if isinstance(value, list) else "x" + value
    )
    report = verify(events, checkpoints)
    assert not report.ok
    assert first_problem(report) == index + 1
