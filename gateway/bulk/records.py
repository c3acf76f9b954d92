"""The pure part of a bulk job: reading an input line as a record, writing a result line, naming its event.

A record is one line: CSV (after a header row) or one JSON object. A line that cannot be read is an
`invalid_input` result with its reason, never a reason to stop the job. Nothing read from the register is
written to a result: a result says whether the claims matched and what each predicate answered, and an
unknown or unusable person answers like one who matches nothing (the caller masks it before this point).
"""

from __future__ import annotations

import csv
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from io import StringIO
from typing import Any, Literal

import orjson

from gateway.identity.dates import PartialDate
from gateway.identity.decide import Predicate
from gateway.identity.pseudonyms import NIN_PATTERN, normalise_nin

Format = Literal["csv", "ndjson"]
Code = Literal["verified", "not_verified", "invalid_input"]

MAX_REF = 100
MAX_VALUE = 200
MAX_LINE_BYTES = 16 * 1024
_DATE_CLAIMS = frozenset({"birth_date", "death_date"})
# Event ids of a job's records: a UUIDv5 of (job, line), so a chunk run twice names the same events.
_JOBS_NAMESPACE = uuid.UUID("0e5f0b1c-8c1e-5a55-9d0e-6a616d752d6a")


class InvalidRecord(ValueError):
    """This record cannot be verified; the message is the reason given in `/errors`."""


@dataclass(frozen=True, slots=True)
class JobSpec:
    """What every record of a job is checked for, fixed when the job is created."""

    purpose: str
    claims: tuple[str, ...]
    predicates: tuple[Predicate, ...]
    today: date  # the job's one evaluation date: predicates without their own `as_of` use it

    def to_json(self) -> dict[str, Any]:
        return {
            "purpose": self.purpose,
            "claims": list(self.claims),
            "today": self.today.isoformat(),
            "predicates": [
                {"name": p.name, "value": p.value, "as_of": None if p.as_of is None else p.as_of.isoformat()}
                for p in self.predicates
            ],
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> JobSpec:
        predicates = tuple(
            Predicate(p["name"], p["value"], p["as_of"] and date.fromisoformat(p["as_of"])) for p in doc["predicates"]
        )
        return cls(doc["purpose"], tuple(doc["claims"]), predicates, date.fromisoformat(doc["today"]))

    @property
    def columns(self) -> tuple[str, ...]:
        """The input's fields: the client's reference, the NIN, then each claim."""
        return ("ref", "nin", *self.claims)


@dataclass(frozen=True, slots=True)
class Record:
    line: int
    ref: str
    nin: str
    claims: dict[str, str]


def event_id(job_id: str, line: int) -> str:
    return str(uuid.uuid5(_JOBS_NAMESPACE, f"{job_id}/{line}"))


def check_header(line: bytes, spec: JobSpec) -> list[str]:
    """The CSV header's column names, in file order; every column is one the job reads, each once."""
    try:
        names = next(csv.reader([line.decode("utf-8-sig").rstrip("\r\n")]))
    except (UnicodeDecodeError, csv.Error, StopIteration):
        raise InvalidRecord("the header row is not UTF-8 CSV") from None
    names = [name.strip() for name in names]
    wanted = set(spec.columns)
    unknown = [name for name in names if name not in wanted]
    if unknown:
        raise InvalidRecord(f"unknown columns: {', '.join(unknown[:5])} (the job reads {', '.join(spec.columns)})")
    missing = [name for name in spec.columns if name not in names]
    if missing:
        raise InvalidRecord(f"missing columns: {', '.join(missing)}")
    if len(set(names)) != len(names):
        raise InvalidRecord("a column is named twice")
    return names


def parse_record(raw: bytes, line: int, fmt: Format, spec: JobSpec, header: Sequence[str] | None) -> Record:
    """One input line as a record, or InvalidRecord with a reason that never repeats the line's content."""
    if len(raw) > MAX_LINE_BYTES:
        raise InvalidRecord(f"the line is longer than {MAX_LINE_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRecord("the line is not UTF-8") from None
    text = text.rstrip("\r\n")
    if not text.strip():
        raise InvalidRecord("empty line")
    if fmt == "csv":
        assert header is not None
        try:
            values = next(csv.reader(StringIO(text)))
        except (csv.Error, StopIteration):
            raise InvalidRecord("not a CSV record (a record must fit on one line)") from None
        if len(values) != len(header):
            raise InvalidRecord(f"{len(values)} fields where the header has {len(header)}")
        fields: dict[str, Any] = dict(zip(header, values, strict=True))
    else:
        try:
            doc = orjson.loads(text)
        except orjson.JSONDecodeError:
            raise InvalidRecord("not a JSON object") from None
        if not isinstance(doc, dict):
            raise InvalidRecord("not a JSON object")
        unknown = sorted(set(doc) - set(spec.columns))
        if unknown:
            raise InvalidRecord(f"unknown fields: {', '.join(unknown[:5])}")
        fields = doc
    return _record(fields, line, spec)


def _record(fields: Mapping[str, Any], line: int, spec: JobSpec) -> Record:
    ref = fields.get("ref")
    if not isinstance(ref, str) or not 0 < len(ref) <= MAX_REF:
        raise InvalidRecord(f"ref: a text of 1 to {MAX_REF} characters is required")
    nin = fields.get("nin")
    if not isinstance(nin, str) or not nin.strip():
        raise InvalidRecord("nin: required")
    nin = normalise_nin(nin)
    if not NIN_PATTERN.match(nin):
        raise InvalidRecord("nin: not a NIN (6 to 32 digits or capital letters)")
    claims: dict[str, str] = {}
    for name in spec.claims:
        value = fields.get(name)
        if not isinstance(value, str) or not value.strip():
            raise InvalidRecord(f"{name}: required, as text")
        if len(value) > MAX_VALUE:
            raise InvalidRecord(f"{name}: at most {MAX_VALUE} characters")
        if name in _DATE_CLAIMS:
            try:
                PartialDate.parse(value)
            except ValueError:
                raise InvalidRecord(f"{name}: not a date (YYYY, YYYY-MM or YYYY-MM-DD)") from None
        claims[name] = value
    return Record(line, ref, nin, claims)


def result_of(answer: Mapping[str, Any], spec: JobSpec) -> dict[str, Any]:
    """A verification's answer as a result line's fields: `match`, one member per predicate, `code`."""
    match = answer.get("match")
    # A predicate the record cannot decide (no birth date) stays null, as in /v1/verify: never verified.
    outcomes = {p["name"]: p["result"] for p in answer.get("predicates", ())}
    verified = (match is not False) and all(value is True for value in outcomes.values())
    return {"match": match, **outcomes, "code": "verified" if verified else "not_verified"}


def invalid_result(spec: JobSpec) -> dict[str, Any]:
    return {"match": None, **{p.name: None for p in spec.predicates}, "code": "invalid_input"}


def result_columns(spec: JobSpec) -> list[str]:
    """The CSV results' header: `ref,match,code,<predicate names>`."""
    return ["ref", "match", "code", *(p.name for p in spec.predicates)]


def _cell(value: Any) -> str:
    return "" if value is None else ("true" if value is True else "false" if value is False else str(value))


def write_result(fmt: Format, ref: str, result: Mapping[str, Any], spec: JobSpec) -> bytes:
    if fmt == "ndjson":
        return orjson.dumps({"ref": ref, **result}) + b"\n"
    out = StringIO()
    csv.writer(out, lineterminator="\n").writerow(
        [ref, _cell(result["match"]), result["code"], *(_cell(result[p.name]) for p in spec.predicates)]
    )
    return out.getvalue().encode()


def write_error(fmt: Format, line: int, ref: str | None, reason: str) -> bytes:
    if fmt == "ndjson":
        return orjson.dumps({"line": line, "ref": ref, "reason": reason}) + b"\n"
    out = StringIO()
    csv.writer(out, lineterminator="\n").writerow([line, ref or "", reason])
    return out.getvalue().encode()


def results_header(fmt: Format, spec: JobSpec) -> bytes:
    return b"" if fmt == "ndjson" else (",".join(result_columns(spec)) + "\n").encode()


def errors_header(fmt: Format) -> bytes:
    return b"" if fmt == "ndjson" else b"line,ref,reason\n"


def loose_ref(raw: bytes, fmt: Format, header: Sequence[str] | None) -> str | None:
    """The `ref` of a line that is not a valid record, when one can still be read, for `/errors`."""
    try:
        text = raw.decode("utf-8").rstrip("\r\n")
        if fmt == "csv" and header is not None:
            values = next(csv.reader(StringIO(text)))
            ref = dict(zip(header, values, strict=False)).get("ref")
        else:
            doc = orjson.loads(text)
            ref = doc.get("ref") if isinstance(doc, dict) else None
    except Exception:
        return None
    return ref if isinstance(ref, str) and 0 < len(ref) <= MAX_REF else None
