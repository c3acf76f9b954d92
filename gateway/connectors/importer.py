"""`jamu register import FILE`: JSON Lines or CSV keyed by attribute names, every line validated, all or
nothing. Lines go into a temporary table inside one transaction (which also catches a NIN given twice);
only if no line was rejected — or rejected lines are to be skipped — do they replace the register's.
"""

from __future__ import annotations

import csv
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from gateway.connectors.base import PersonRecord
from gateway.connectors.embedded import COLUMNS, create_register

MAX_REPORTED = 1000
_NAMES = ", ".join(COLUMNS)  # the catalogue's attribute names: constants, never input


@dataclass
class ImportReport:
    read: int = 0
    imported: int = 0
    rejected: list[tuple[int, str]] = field(default_factory=list)
    rejected_count: int = 0

    def reject(self, line: int, reason: str) -> None:
        self.rejected_count += 1
        if len(self.rejected) < MAX_REPORTED:
            self.rejected.append((line, reason))


def _reason(error: ValidationError) -> str:
    parts = []
    for item in error.errors()[:5]:
        where = ".".join(str(p) for p in item["loc"]) or "line"
        message = (
            "unknown attribute" if item["type"] == "extra_forbidden" else item["msg"].removeprefix("Value error, ")
        )
        parts.append(f"{where}: {message}")
    return "; ".join(parts)


def _lines(path: Path, fmt: str) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """(line number, parsed object or the reason it could not be parsed)."""
    with path.open(encoding="utf-8", newline="") as source:
        if fmt == "csv":
            reader = csv.DictReader(source)
            unknown = sorted(set(reader.fieldnames or ()) - set(COLUMNS))
            if unknown:
                yield 1, f"header: unknown attributes {', '.join(unknown)}"
                return
            for row in reader:
                yield reader.line_num, {k: (v if v != "" else None) for k, v in row.items() if k is not None}
            return
        for number, text in enumerate(source, start=1):
            if not text.strip():
                continue
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                yield number, f"not JSON: {exc.msg}"
                continue
            yield number, value if isinstance(value, dict) else "not a JSON object"


def detect_format(path: Path) -> str:
    return "csv" if path.suffix.lower() == ".csv" else "jsonl"


def import_people(path: Path, register: Path, *, fmt: str | None = None, skip_bad: bool = False) -> ImportReport:
    report = ImportReport()
    connection = create_register(register)
    try:
        connection.execute("BEGIN IMMEDIATE")
        connection.execute("CREATE TEMP TABLE incoming AS SELECT * FROM people WHERE 0")
        connection.execute("CREATE UNIQUE INDEX temp.incoming_nin ON incoming (nin)")
        insert = f"INSERT INTO incoming ({_NAMES}) VALUES ({', '.join('?' * len(COLUMNS))})"  # noqa: S608
        for number, parsed in _lines(path, fmt or detect_format(path)):
            report.read += 1
            if isinstance(parsed, str):
                report.reject(number, parsed)
                continue
            try:
                person = PersonRecord.model_validate(parsed).model_dump()
            except ValidationError as exc:
                report.reject(number, _reason(exc))
                continue
            try:
                connection.execute(insert, [person[c] for c in COLUMNS])
            except sqlite3.IntegrityError:
                report.reject(number, "nin: appears twice in this file")
        if report.rejected_count and not skip_bad:
            connection.execute("ROLLBACK")
            return report
        cursor = connection.execute(f"INSERT OR REPLACE INTO people ({_NAMES}) SELECT {_NAMES} FROM incoming")  # noqa: S608
        report.imported = cursor.rowcount
        connection.execute("COMMIT")
        return report
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise
    finally:
        connection.close()
