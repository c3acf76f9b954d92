"""The pure part of bulk jobs: an upload cut into chunks whatever its pieces, records read line by line
with reasons that never echo the data, results that carry nothing from the register."""

from __future__ import annotations

from datetime import date

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from gateway.bulk.records import (
    InvalidRecord,
    JobSpec,
    event_id,
    parse_record,
    result_of,
    write_result,
)
from gateway.bulk.upload import InputSplitter, UploadRefused
from gateway.identity.decide import Predicate

SPEC = JobSpec(
    "roll",
    ("family_name", "birth_date"),
    (Predicate("alive", None, None), Predicate("age_at_least", 18, None)),
    date(2026, 12, 1),
)
HEADER = ["ref", "nin", "family_name", "birth_date"]


@settings(max_examples=200, deadline=None)
@given(
    lines=st.lists(st.text(alphabet='ab,\r"é', max_size=12), min_size=1, max_size=40),
    chunk=st.integers(1, 7),
    cuts=st.lists(st.integers(1, 30), max_size=20),
    final_newline=st.booleans(),
)
@pytest.mark.slow
def test_chunks_cover_every_line_once_whatever_the_pieces(
    lines: list[str], chunk: int, cuts: list[int], final_newline: bool
) -> None:
    body = ("ref,nin,family_name,birth_date\n" + "\n".join(lines) + ("\n" if final_newline else "")).encode()
    assume(body != b"ref,nin,family_name,birth_date\n")  # no record at all: refused (tested below)
    splitter = InputSplitter("csv", SPEC, chunk, 10_000)
    at = 0
    for size in cuts:
        splitter.feed(body[at : at + size])
        at += size
    splitter.feed(body[at:])
    chunks = splitter.finish()
    records = body.split(b"\n")[1:]
    if records[-1] == b"":  # after the last newline: nothing, not a line
        records.pop()
    assert splitter.records == len(records) == sum(c.records for c in chunks)
    assert all(c.records == chunk for c in chunks[:-1])
    pieces = b"".join(body[c.byte_start : c.byte_end] for c in chunks)
    assert pieces == body[len(b"ref,nin,family_name,birth_date\n") :]
    assert [c.first_line for c in chunks] == [2 + i * chunk for i in range(len(chunks))]


def test_an_upload_is_refused_whole_for_its_header_its_size_or_a_line_too_long() -> None:
    for body, why in [
        (b"ref,nin,phone\n", "unknown columns: phone"),
        (b"ref,nin\n1,2\n", "missing columns"),
        (b"", "empty"),
        (b"ref,nin,family_name,birth_date\n", "no records"),
        (b"ref,nin,family_name,birth_date\n" + b"x" * 17_000, "longer than"),
    ]:
        splitter = InputSplitter("csv", SPEC, 10, 10)
        with pytest.raises(UploadRefused, match=why):
            splitter.feed(body)
            splitter.finish()
    splitter = InputSplitter("ndjson", SPEC, 10, 2)
    with pytest.raises(UploadRefused, match="more than 2"):
        splitter.feed(b"{}\n{}\n{}\n")


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"r1,12,Traore,1990", "nin: not a NIN"),
        (b",ML1234567,Traore,1990", "ref:"),
        (b"r1,ML1234567,,1990", "family_name: required"),
        (b"r1,ML1234567,Traore,31/12/1990", "birth_date: not a date"),
        (b"r1,ML1234567,Traore", "3 fields where the header has 4"),
        (b"   ", "empty line"),
        (b"r1,ML1234567,\xff,1990", "not UTF-8"),
    ],
)
def test_invalid_csv_records_name_the_field_not_the_value(line: bytes, reason: str) -> None:
    with pytest.raises(InvalidRecord, match=reason) as caught:
        parse_record(line, 7, "csv", SPEC, HEADER)
    assert "Traore" not in str(caught.value) and "ML1234567" not in str(caught.value)


def test_ndjson_records_refuse_unknown_fields_and_wrong_types() -> None:
    ok = parse_record(
        b'{"ref": "a", "nin": " ml 123 456 7", "family_name": "Diallo", "birth_date": "1990"}', 1, "ndjson", SPEC, None
    )
    assert (ok.ref, ok.nin, ok.claims) == ("a", "ML1234567", {"family_name": "Diallo", "birth_date": "1990"})
    for line, reason in [
        (b'{"ref": "a", "nin": "ML1234567", "family_name": "D", "birth_date": "1990", "x": 1}', "unknown fields: x"),
        (b'{"ref": 5, "nin": "ML1234567", "family_name": "D", "birth_date": "1990"}', "ref"),
        (b'{"ref": "a", "nin": "ML1234567", "family_name": 3, "birth_date": "1990"}', "family_name"),
        (b"[1]", "not a JSON object"),
        (b"{", "not a JSON object"),
    ]:
        with pytest.raises(InvalidRecord, match=reason):
            parse_record(line, 1, "ndjson", SPEC, None)


def test_a_result_is_verified_only_when_every_claim_and_predicate_holds() -> None:
    both = {"match": True, "predicates": [{"name": "alive", "result": True}, {"name": "age_at_least", "result": True}]}
    assert result_of(both, SPEC) == {"match": True, "alive": True, "age_at_least": True, "code": "verified"}
    minor = {**both, "predicates": [{"name": "alive", "result": True}, {"name": "age_at_least", "result": False}]}
    assert result_of(minor, SPEC)["code"] == "not_verified"
    assert result_of({**both, "match": False}, SPEC)["code"] == "not_verified"
    assert write_result("csv", "=cmd", result_of(both, SPEC), SPEC) == b"=cmd,true,verified,true,true\n"
    assert event_id("j", 2) == event_id("j", 2) != event_id("j", 3)


def test_a_predicate_the_record_cannot_decide_stays_null_and_is_not_verified() -> None:
    undecided = {
        "match": True,
        "predicates": [{"name": "alive", "result": True}, {"name": "age_at_least", "result": None}],
    }
    result = result_of(undecided, SPEC)
    assert result == {"match": True, "alive": True, "age_at_least": None, "code": "not_verified"}
    assert write_result("csv", "r", result, SPEC) == b"r,true,not_verified,true,\n"
