"""The embedded register's synthetic population and its import: deterministic, plausible, all or nothing."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.connectors.base import PersonRecord, StandIn
from gateway.connectors.embedded import SNAPSHOT_S, EmbeddedRegister
from gateway.connectors.importer import import_people
from gateway.connectors.population import GEOGRAPHY, IDP_SITES, luhn_digit, population, seed_register


def people_in(path: Path) -> list[dict]:
    with sqlite3.connect(path) as connection:
        connection.row_factory = sqlite3.Row
        return [dict(r) for r in connection.execute("SELECT * FROM people ORDER BY nin")]


def test_the_same_seed_gives_the_same_people_and_another_seed_others() -> None:
    assert list(population(200, 5)) == list(population(200, 5))
    assert list(population(200, 5)) != list(population(200, 6))


@pytest.mark.slow
def test_the_population_looks_like_the_register() -> None:
    people = list(population(20_000, 3))
    assert len({p["nin"] for p in people}) == len(people)
    for person in people[:2000]:
        PersonRecord.model_validate(person)  # every generated record is a valid record
        nin = person["nin"]
        assert len(nin) == 15 and luhn_digit(nin[:-1]) == nin[-1]
        assert person["residence_commune"] in GEOGRAPHY[person["residence_region"]][person["residence_cercle"]]
    precision = Counter(len(p["birth_date"]) for p in people)
    assert 0.12 < precision[4] / len(people) < 0.25  # "né vers": year only
    assert 0.05 < precision[7] / len(people) < 0.14  # month and year
    status = Counter(p["record_status"] for p in people)
    assert 0.015 < status["deceased"] / len(people) < 0.04 and 0.002 < status["suspended"] / len(people) < 0.01
    displaced = [p for p in people if p["displacement_status"] == "displaced"]
    assert 0.01 < len(displaced) / len(people) < 0.06
    assert all(p["displacement_site"] in {s for sites in IDP_SITES.values() for s in sites} for p in displaced)
    assert all(p["death_date"] > p["birth_date"] for p in people if p["death_date"])
    accents = Counter(
        "é" in p["family_name"] or "ï" in p["family_name"]
        for p in people
        if p["family_name"].startswith(("Traor", "Ke", "Ma", "Ciss"))
    )
    assert accents[True] and accents[False]  # both spellings circulate
    assert sum(" " in p["given_names"] for p in people) > len(people) * 0.2


def test_seed_builds_a_register_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "var" / "register.db"
    assert seed_register(path, 500, 9) == 500
    stored = people_in(path)
    assert stored == sorted(population(500, 9), key=lambda p: p["nin"])
    seed_register(path, 100, 10)  # replaced whole, not appended to
    assert len(people_in(path)) == 100


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text(
        "\n".join(r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8"
    )
    return path


GOOD = [dict(p) for p in population(3, 1)]


def test_import_json_lines_updates_and_adds(tmp_path: Path) -> None:
    register = tmp_path / "register.db"
    seed_register(register, 10, 1)
    changed = {**GOOD[0], "residence_commune": "Sio", "residence_cercle": "Mopti", "residence_region": "Mopti"}
    new = {**GOOD[1], "nin": "123456789012345"}
    report = import_people(write_jsonl(tmp_path / "in.jsonl", [changed, new]), register)
    assert (report.read, report.imported, report.rejected) == (2, 2, [])
    stored = {p["nin"]: p for p in people_in(register)}
    assert len(stored) == 11 and stored[changed["nin"]]["residence_commune"] == "Sio"


def test_import_rejects_bad_lines_by_number_and_imports_nothing(tmp_path: Path) -> None:
    register = tmp_path / "register.db"
    seed_register(register, 5, 1)
    before = people_in(register)
    rows = [
        GOOD[0],
        "{not json",
        {**GOOD[1], "sex": "X"},
        {**GOOD[2], "shoe_size": 42},
        "[1, 2]",
        {**GOOD[2], "birth_date": "1975-02-30"},
        {**GOOD[2], "nin": "12"},
        GOOD[0],
    ]
    report = import_people(write_jsonl(tmp_path / "in.jsonl", rows), register)
    reasons = dict(report.rejected)
    assert report.imported == 0 and sorted(reasons) == [2, 3, 4, 5, 6, 7, 8]
    assert reasons[2].startswith("not JSON") and reasons[3].startswith("sex:")
    assert "shoe_size: unknown attribute" in reasons[4] and reasons[5] == "not a JSON object"
    assert reasons[6].startswith("birth_date:") and reasons[7].startswith("nin:")
    assert reasons[8] == "nin: appears twice in this file"
    assert people_in(register) == before
    skipped = import_people(write_jsonl(tmp_path / "in.jsonl", rows), register, skip_bad=True)
    assert skipped.imported == 1 and skipped.rejected_count == 7


def test_import_csv(tmp_path: Path) -> None:
    register = tmp_path / "register.db"
    path = tmp_path / "people.csv"
    with path.open("w", encoding="utf-8", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=list(GOOD[0]))
        writer.writeheader()
        writer.writerows(GOOD)
    report = import_people(path, register)
    assert report.imported == 3
    stored = {p["nin"]: p for p in people_in(register)}
    assert stored[GOOD[0]["nin"]] == GOOD[0]  # empty cells are nulls again
    bad = tmp_path / "bad.csv"
    bad.write_text("nin,favourite_colour\n123456789012345,blue\n", encoding="utf-8")
    assert import_people(bad, register).rejected == [(1, "header: unknown attributes favourite_colour")]


def test_the_cli_reports_lines_and_exit_codes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GATEWAY_DATA_DIR", str(tmp_path / "var"))
    assert main(["register", "seed", "--count", "50", "--seed", "4"]) == 0
    assert "50 people seeded" in capsys.readouterr().out
    source = write_jsonl(tmp_path / "in.jsonl", [GOOD[0], {**GOOD[1], "sex": "?"}])
    assert main(["register", "import", str(source)]) == 1
    err = capsys.readouterr().err
    assert f"{source}:2: sex:" in err and "nothing imported" in err
    assert main(["register", "import", str(source), "--skip-bad-lines"]) == 0
    assert "1 people imported, 1 lines rejected" in capsys.readouterr().out
    assert main(["register", "import", str(tmp_path / "missing.jsonl")]) == 2


def _rename_in_thread(path: Path, nin: str, name: str, ready: threading.Event) -> threading.Thread:
    """An import's transaction: changes a row, says so, then commits (waiting for readers' locks)."""

    def write() -> None:
        with contextlib.closing(sqlite3.connect(path, timeout=10, isolation_level=None)) as connection:
            connection.execute("BEGIN IMMEDIATE")
            connection.execute("UPDATE people SET family_name = ? WHERE nin = ?", (name, nin))
            ready.set()
            connection.execute("COMMIT")

    thread = threading.Thread(target=write)
    thread.start()
    return thread


@pytest.fixture
def small_register(tmp_path: Path) -> tuple[Path, dict]:
    """A seeded register file and its first person."""
    path = tmp_path / "register.db"
    seed_register(path, 50, 1)
    return path, people_in(path)[0]


async def test_loop_reads_share_a_short_snapshot_that_an_import_gets_past(small_register: tuple[Path, dict]) -> None:
    path, person = small_register
    nin = person["nin"]
    register = EmbeddedRegister(path)
    try:
        assert (await register.fetch(nin, frozenset({"family_name"})))["family_name"] != "Imported"
        ready = threading.Event()
        writer = _rename_in_thread(path, nin, "Imported", ready)
        assert await asyncio.to_thread(ready.wait, 5)
        # The loop keeps reading: the snapshot's timer ends it, the import commits, reads see it.
        seen = None
        for _ in range(400):
            seen = (await register.fetch(nin, frozenset({"family_name"})))["family_name"]
            if seen == "Imported":
                break
            await asyncio.sleep(0.005)
        await asyncio.to_thread(writer.join, 10)
        assert not writer.is_alive() and seen == "Imported"
    finally:
        await register.close()


@pytest.mark.slow
async def test_a_snapshot_whose_timer_could_not_run_is_not_read_past_its_time(
    small_register: tuple[Path, dict],
) -> None:
    path, person = small_register
    nin = person["nin"]
    register = EmbeddedRegister(path)
    try:
        await register.fetch(nin, frozenset({"family_name"}))
        ready = threading.Event()
        writer = _rename_in_thread(path, nin, "Imported", ready)
        assert ready.wait(5)
        time.sleep(SNAPSHOT_S * 4)  # noqa: ASYNC251 (the point: a blocked loop cannot run the snapshot's timer)
        assert writer.is_alive()  # the import waits for the snapshot's lock
        assert (await register.fetch(nin, frozenset({"family_name"})))["family_name"] == "Imported"
        writer.join(10)
        assert not writer.is_alive()
    finally:
        await register.close()


async def test_a_read_returns_what_was_asked_and_close_lets_writers_in(small_register: tuple[Path, dict]) -> None:
    path, person = small_register
    register = EmbeddedRegister(path)
    asked = frozenset({"birth_date", "record_status", "not_an_attribute"})
    assert await register.fetch(person["nin"], asked) == {
        "birth_date": person["birth_date"],
        "record_status": person["record_status"],
        "not_an_attribute": None,
    }
    assert isinstance(await register.fetch("999999999999999", asked), StandIn)
    await register.close()
    with contextlib.closing(sqlite3.connect(path, timeout=0)) as connection:  # no lock left behind
        connection.execute("UPDATE people SET family_name = 'X' WHERE nin = ?", (person["nin"],))
        connection.commit()


@pytest.mark.parametrize("inline", [True, False])
async def test_a_miss_reads_a_neighbours_row_and_answers_none(tmp_path: Path, inline: bool) -> None:
    """Unknown NINs below, between and above every key, and an empty register: never a record, and
    a known NIN still answers its own record (the read is `nin >= ?`, so both decode one row)."""
    path = tmp_path / "register.db"
    seed_register(path, 50, 9)
    nins = sorted(p["nin"] for p in people_in(path))
    register = EmbeddedRegister(path, inline_reads=inline)
    asked = frozenset({"family_name", "record_status"})
    try:
        for nin in nins[:3] + nins[-3:]:
            person = await register.fetch(nin, asked)
            assert person is not None and set(person) == asked
        between = str(int(nins[10]) + 1)
        assert between not in nins
        for unknown in ("000000000000000", between, "999999999999999", nins[0][:-1]):
            stand_in = await register.fetch(unknown, asked)
            # Another (real) person's attributes, marked as a stand-in: the same work as a hit, never a hit.
            assert isinstance(stand_in, StandIn) and set(stand_in) == asked, unknown
    finally:
        await register.close()
    empty = EmbeddedRegister(tmp_path / "empty.db", inline_reads=inline)
    try:
        assert isinstance(await empty.fetch(nins[0], asked), StandIn)
    finally:
        await empty.close()
