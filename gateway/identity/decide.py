"""The decision of a verification: claims against a record, predicates on it. Pure: the record in, the
answer out, the same work whatever the record, so an unknown NIN costs what a known one does."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from typing import Any, NamedTuple

from gateway.identity.dates import PartialDate, age_at_least, same_date
from gateway.identity.names import normalise, same_given_names, same_name
from gateway.policy.catalogue import PREDICATE_READS

NAME_CLAIMS = frozenset(
    {
        "family_name",
        "father_name",
        "mother_name",
        "birth_place",
        "residence_region",
        "residence_cercle",
        "residence_commune",
        "displacement_site",
    }
)
DATE_CLAIMS = frozenset({"birth_date", "death_date"})
RESIDENCE = ("residence_region", "residence_cercle", "residence_commune")

# A stand-in record with every attribute set: unknown or suspended NINs are judged against it, then
# answered false, so their answer takes the same path as a real one.
DECOY: dict[str, Any] = {
    "nin": "000000000000000",
    "family_name": "Diarra",
    "given_names": "Awa Kadiatou",
    "sex": "F",
    "birth_date": "1984-06-15",
    "birth_place": "Ségou",
    "father_name": "Seydou Diarra",
    "mother_name": "Fanta Koné",
    "nationality": "MLI",
    "residence_region": "Ségou",
    "residence_cercle": "Ségou",
    "residence_commune": "Pelengana",
    "death_date": None,
    "record_status": "active",
    "displacement_status": None,
    "displacement_site": None,
    "idp_household_id": None,
}


def claim_matches(name: str, claimed: str, recorded: Any, threshold: float | None) -> bool:
    if recorded is None:
        return False
    if name == "given_names":
        return same_given_names(claimed, recorded, threshold)
    if name in NAME_CLAIMS:
        return same_name(claimed, recorded, threshold)
    if name in DATE_CLAIMS:
        return same_date(PartialDate.parse(claimed), PartialDate.parse(recorded))
    return normalise(claimed) == normalise(str(recorded))


class Predicate(NamedTuple):
    name: str
    value: Any = None
    as_of: date | None = None


def evaluate(predicate: Predicate, record: Mapping[str, Any], today: date) -> bool | None:
    if predicate.name == "alive":
        if record.get("record_status") == "deceased" or record.get("death_date"):
            return False
        return True if record.get("record_status") == "active" else None
    if predicate.name == "age_at_least":
        born = record.get("birth_date")
        return (
            None if born is None else age_at_least(PartialDate.parse(born), predicate.value, predicate.as_of or today)
        )
    if predicate.name == "resides_in":
        places = [record.get(level) for level in RESIDENCE]
        if all(p is None for p in places):
            return None
        wanted = normalise(predicate.value)
        return any(p is not None and normalise(p) == wanted for p in places)
    if predicate.name == "registered_idp":
        status = record.get("displacement_status")
        if status == "displaced":
            return True
        return False if status in (None, "returned") else None
    raise ValueError(f"unknown predicate {predicate.name}")


def verify(
    record: Mapping[str, Any] | None,
    claims: Mapping[str, str],
    predicates: list[Predicate],
    *,
    today: date,
    threshold: float | None,
    claim_details: bool,
    stand_in: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The answer body (without transaction id and subject_ref). `record` None: unknown or unusable; then
    `stand_in` (a real record read in its place) or the built-in decoy is judged, and the answer masked."""
    found = record is not None
    subject = record if record is not None else stand_in if stand_in is not None else DECOY
    # Both sides take the same steps: an unknown record's answers are masked, not skipped.
    results = {
        name: claim_matches(name, value, subject.get(name), threshold) and found for name, value in claims.items()
    }
    outcomes = [evaluate(p, subject, today) for p in predicates]
    outcomes = [outcome if found else False for outcome in outcomes]
    answer: dict[str, Any] = {}
    if claims:
        answer["match"] = all(results.values())
        if claim_details:
            answer["claims"] = results
    if predicates:
        answer["predicates"] = [{"name": p.name, "result": r} for p, r in zip(predicates, outcomes, strict=True)]
    return answer


def needed_attributes(claims: Mapping[str, str], predicates: list[Predicate]) -> frozenset[str]:
    """What a verification must fetch: its claims, what its predicates read, and the record status."""
    needed = {*claims, "record_status"}
    for predicate in predicates:
        needed |= PREDICATE_READS[predicate.name]
    return frozenset(needed)
