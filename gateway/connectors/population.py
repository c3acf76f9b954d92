"""A deterministic synthetic population that looks like Mali's register: the same `--seed` always
gives the same people. Names as they are written there (with the unaccented spellings that circulate
beside them), regions → cercles → communes, a realistic share of year-only and month-only birth dates
("né vers"), filiation, some deceased and suspended records, and a share registered as displaced.
"""

from __future__ import annotations

import itertools
import os
import random
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gateway.connectors.embedded import SCHEMA, write_people

FAMILY_NAMES = (
    "Traoré",
    "Diarra",
    "Coulibaly",
    "Keïta",
    "Koné",
    "Touré",
    "Cissé",
    "Sangaré",
    "Diallo",
    "Sidibé",
    "Doumbia",
    "Konaté",
    "Camara",
    "Dembélé",
    "Maïga",
    "Samaké",
    "Kanté",
    "Fofana",
    "Sissoko",
    "Haïdara",
    "Guindo",
    "Dicko",
    "Tounkara",
    "Bagayoko",
    "Ballo",
    "Berthé",
    "Dao",
    "Kouyaté",
    "Sylla",
    "Tangara",
    "Togo",
    "Sow",
    "Ba",
    "N'Diaye",
    "Niaré",
    "Konaré",
    "Goïta",
    "Kassogué",
    "Dolo",
    "Tembely",
    "Ag Mohamed",
    "Ould Sidi",
    "Cissoko",
    "Diakité",
    "Fané",
    "Kéita",
    "Mariko",
    "Sogoba",
)
FEMALE_NAMES = (
    "Aminata",
    "Fanta",
    "Fatoumata",
    "Mariam",
    "Kadiatou",
    "Awa",
    "Oumou",
    "Rokia",
    "Salimata",
    "Assétou",
    "Djénéba",
    "Hawa",
    "Kadidia",
    "Bintou",
    "Nana",
    "Sira",
    "Korotoumou",
    "Maïmouna",
    "Ramata",
    "Adama",
    "Aïssata",
    "Mamou",
    "Safiatou",
    "Tenin",
    "Sitan",
    "Nènè",
    "Oumou Kalsoum",
    "Ténin",
)
MALE_NAMES = (
    "Bakary",
    "Moussa",
    "Mamadou",
    "Souleymane",
    "Ibrahim",
    "Seydou",
    "Modibo",
    "Boubacar",
    "Amadou",
    "Oumar",
    "Issa",
    "Drissa",
    "Lassana",
    "Sékou",
    "Yacouba",
    "Adama",
    "Cheick",
    "Abdoulaye",
    "Siaka",
    "Mahamadou",
    "Alassane",
    "Bréhima",
    "Daouda",
    "Fousseyni",
    "Madou",
    "Tiémoko",
    "Zoumana",
    "Mohamed",
)
# region → cercle → communes (a representative subset of Mali's administrative map)
GEOGRAPHY: dict[str, dict[str, tuple[str, ...]]] = {
    "Bamako": {"Bamako": ("Commune I", "Commune II", "Commune III", "Commune IV", "Commune V", "Commune VI")},
    "Kayes": {
        "Kayes": ("Kayes", "Khouloum", "Liberté Dembaya"),
        "Kita": ("Kita", "Sirakoro"),
        "Nioro du Sahel": ("Nioro", "Diabigué"),
    },
    "Koulikoro": {
        "Kati": ("Kati", "Kalaban Coro", "Moribabougou"),
        "Koulikoro": ("Koulikoro", "Méguétan"),
        "Dioïla": ("Dioïla", "Massigui"),
    },
    "Sikasso": {
        "Sikasso": ("Sikasso", "Zangaradougou"),
        "Bougouni": ("Bougouni", "Faragouaran"),
        "Koutiala": ("Koutiala", "M'Pessoba"),
    },
    "Ségou": {
        "Ségou": ("Ségou", "Pelengana", "Sébougou"),
        "San": ("San", "Sy"),
        "Niono": ("Niono", "Pogo"),
        "Macina": ("Macina", "Kokry"),
    },
    "Mopti": {
        "Mopti": ("Mopti", "Socoura", "Sio"),
        "Bandiagara": ("Bandiagara", "Dourou"),
        "Djenné": ("Djenné", "Fakala"),
        "Douentza": ("Douentza", "Boni"),
        "Bankass": ("Bankass", "Baye"),
    },
    "Tombouctou": {
        "Tombouctou": ("Tombouctou", "Alafia"),
        "Goundam": ("Goundam", "Tonka"),
        "Niafunké": ("Niafunké", "Soboundou"),
    },
    "Gao": {"Gao": ("Gao", "Sonni Ali Ber"), "Ansongo": ("Ansongo", "Ouattagouna"), "Bourem": ("Bourem", "Bamba")},
    "Kidal": {"Kidal": ("Kidal", "Essouk"), "Tessalit": ("Tessalit", "Aguelhok")},
    "Ménaka": {"Ménaka": ("Ménaka", "Inékar", "Anderamboukane")},
}
# Where displaced people were registered, by the region they fled to.
IDP_SITES = {
    "Bamako": ("Site de Faladié", "Site de Niamana", "Site de Sénou"),
    "Mopti": ("Site de Socoura", "Site de Sévaré"),
    "Ségou": ("Site de Pelengana",),
    "Gao": ("Site de Wabaria",),
}
# Regions people are more often displaced from.
CONFLICT_REGIONS = ("Mopti", "Tombouctou", "Gao", "Ménaka", "Kidal", "Ségou")
_REGIONS = tuple(GEOGRAPHY)
_REGION_WEIGHTS = (14, 11, 14, 16, 15, 11, 4, 3, 1, 1)  # roughly the population's spread
_CUMULATIVE = tuple(sum(_REGION_WEIGHTS[: i + 1]) for i in range(len(_REGION_WEIGHTS)))
_ACCENTS = str.maketrans("éèêëïîôöüÉÈÏ", "eeeeiioouEEI")


def luhn_digit(digits: str) -> str:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char) * (2 if index % 2 == 0 else 1)
        total += value - 9 if value > 9 else value
    return str((10 - total % 10) % 10)


def nin_for(index: int, birth_year: int, region_index: int) -> str:
    """15 digits: 1, region (2), birth year (2), serial (9), Luhn check: unique by construction."""
    body = f"1{region_index:02d}{birth_year % 100:02d}{index:09d}"
    return body + luhn_digit(body)


def _spelled(rng: random.Random, name: str) -> str:
    """About one name in six is written without its accents, as on many older documents."""
    return name.translate(_ACCENTS) if rng.random() < 0.17 else name


def person(rng: random.Random, index: int, today_year: int = 2026) -> dict[str, Any]:
    sex = "F" if rng.random() < 0.505 else "M"
    given_pool = FEMALE_NAMES if sex == "F" else MALE_NAMES
    family = rng.choice(FAMILY_NAMES)
    given = rng.choice(given_pool)
    if rng.random() < 0.35:
        second = rng.choice(given_pool)
        if second != given:
            given = f"{given} {second}"
    region_index = _region_index(rng)
    region = _REGIONS[region_index]
    cercle = rng.choice(tuple(GEOGRAPHY[region]))
    commune = rng.choice(GEOGRAPHY[region][cercle])
    birth_region = region if rng.random() < 0.8 else rng.choice(_REGIONS)
    birth_cercle = rng.choice(tuple(GEOGRAPHY[birth_region]))
    age = min(int(rng.expovariate(1 / 24)), 99)
    year = today_year - age
    last_month = 10 if year == today_year else 12  # nobody is born in the future
    precision = rng.random()
    if precision < 0.18:  # né vers: year only
        birth = f"{year:04d}"
    elif precision < 0.27:
        birth = f"{year:04d}-{rng.randint(1, last_month):02d}"
    else:
        birth = f"{year:04d}-{rng.randint(1, last_month):02d}-{rng.randint(1, 28):02d}"
    status_roll = rng.random()
    status, death = "active", None
    if status_roll < 0.03 and age >= 2:
        status = "deceased"
        death_year = rng.randint(max(year + 1, today_year - 20), today_year - 1)
        death = f"{death_year:04d}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    elif status_roll < 0.035:
        status = "suspended"
    displacement = site = household = None
    if status == "active" and region in CONFLICT_REGIONS and rng.random() < 0.12:
        host = rng.choice(tuple(IDP_SITES))
        displacement = "displaced" if rng.random() < 0.85 else "returned"
        site = rng.choice(IDP_SITES[host])
        household = f"HH-{rng.randint(1, 999_999):06d}"
    father_family = family if rng.random() < 0.97 else rng.choice(FAMILY_NAMES)
    return {
        "nin": nin_for(index, year, region_index),
        "family_name": _spelled(rng, family),
        "given_names": _spelled(rng, given),
        "sex": sex,
        "birth_date": birth,
        "birth_place": rng.choice(GEOGRAPHY[birth_region][birth_cercle]),
        "father_name": f"{rng.choice(MALE_NAMES)} {father_family}",
        "mother_name": f"{rng.choice(FEMALE_NAMES)} {rng.choice(FAMILY_NAMES)}",
        "nationality": "MLI" if rng.random() < 0.985 else rng.choice(("BFA", "SEN", "GIN", "CIV", "NER", "MRT")),
        "residence_region": region,
        "residence_cercle": cercle,
        "residence_commune": commune,
        "death_date": death,
        "record_status": status,
        "displacement_status": displacement,
        "displacement_site": site,
        "idp_household_id": household,
    }


def _region_index(rng: random.Random) -> int:
    roll = rng.random() * _CUMULATIVE[-1]
    for index, bound in enumerate(_CUMULATIVE):
        if roll < bound:
            return index
    return len(_CUMULATIVE) - 1


def population(count: int, seed: int) -> Iterator[dict[str, Any]]:
    rng = random.Random(seed)  # noqa: S311 - synthetic data, reproducible by design
    for index in range(count):
        yield person(rng, index)


def seed_register(path: Path, count: int, seed: int, chunk: int = 50_000) -> int:
    """Build a register of `count` people in a new file, then put it in place atomically. Seed with the
    gateway stopped: a serving gateway would go on with the file it opened, and, once it takes
    declarations, with that file's write-ahead log."""
    path.parent.mkdir(parents=True, exist_ok=True)
    building = path.with_name(f".{path.name}.{os.getpid()}.building")
    building.unlink(missing_ok=True)
    connection = sqlite3.connect(building, isolation_level=None)
    try:
        connection.execute("PRAGMA journal_mode=OFF")
        connection.execute("PRAGMA synchronous=OFF")
        connection.execute("PRAGMA cache_size=-524288")  # 512 MiB while building: inserts stay in memory
        connection.execute(SCHEMA)
        people = population(count, seed)
        written = 0
        while written < count:
            batch = list(itertools.islice(people, chunk))
            batch.sort(key=lambda p: p["nin"])
            connection.execute("BEGIN")
            write_people(connection, batch, replace=False)
            connection.execute("COMMIT")
            written += len(batch)
        connection.execute("PRAGMA journal_mode=DELETE")
    finally:
        connection.close()
    # A register that took declarations is in write-ahead-log mode: its log and index files belong to the
    # file being replaced, never to this one.
    # Push delivery's positions (`<register>-deliveries`) are positions in the replaced file's feeds.
    for suffix in ("-wal", "-shm", "-journal", "-deliveries", "-deliveries-wal", "-deliveries-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)
    os.replace(building, path)
    return count
