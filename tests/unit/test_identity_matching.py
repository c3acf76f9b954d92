"""Matching and predicates as pure functions, with properties checked over generated inputs."""

from __future__ import annotations

import unicodedata
from datetime import date, timedelta

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from gateway.connectors.population import FAMILY_NAMES, FEMALE_NAMES, MALE_NAMES
from gateway.identity import decide
from gateway.identity.dates import PartialDate, age_at_least, anniversary, same_date
from gateway.identity.names import (
    _APOSTROPHES,
    _SEPARATORS,
    normalise,
    normalise_unicode,
    same_given_names,
    same_name,
)
from gateway.identity.pseudonyms import normalise_nin

NAMES = st.sampled_from(FAMILY_NAMES + FEMALE_NAMES + MALE_NAMES)


def strip_accents(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")


@st.composite
def variants(draw: st.DrawFn, name: str) -> str:
    """How the same name arrives: accents dropped, case changed, hyphens, odd spacing, curly apostrophes,
    decomposed forms, zero-width characters."""
    text = name
    if draw(st.booleans()):
        text = strip_accents(text)
    text = draw(st.sampled_from([text, text.upper(), text.lower(), text.title()]))
    if draw(st.booleans()):
        text = text.replace(" ", draw(st.sampled_from(["-", "  ", " \u00a0", "\u2013"])))
    if draw(st.booleans()):
        text = text.replace("'", "\u2019")
    if draw(st.booleans()):
        text = unicodedata.normalize("NFD", text)
    if draw(st.booleans()):
        text = "\u200b" + text
    return draw(st.sampled_from(["", " ", "\t"])) + text + draw(st.sampled_from(["", " "]))


def _reference(text: str) -> str:
    """The normalisation spelled out character by character (what `normalise_unicode` computes)."""
    decomposed = unicodedata.normalize("NFKD", text)
    kept = "".join(c for c in decomposed if unicodedata.category(c) not in ("Mn", "Me", "Cf", "Cc"))
    folded = kept.casefold().translate(_APOSTROPHES).translate(_SEPARATORS)
    return " ".join(unicodedata.normalize("NFKD", folded).split())


@given(
    st.text(max_size=40)
    | st.text(alphabet=st.characters(max_codepoint=0x3100), max_size=40)
    | st.sampled_from(["Traoré", "Koné", "Sékou Touré", "N\u2019Diaye", "ߒߞߏ", "ⵜⴰⵎⴰⵣⵉⵖⵜ", "Ba\u0301\u200bh"])
)
def test_unicode_normalisation_is_the_reference(text: str) -> None:
    assert normalise_unicode(text) == _reference(text)
    assert normalise_unicode(text) == _reference(text)  # again, with what the first call cached


@given(st.text(alphabet=st.characters(max_codepoint=127), max_size=40))
def test_ascii_shortcut_is_the_full_normalisation(text: str) -> None:
    assert normalise(text) == normalise_unicode(text)


@given(st.text(max_size=40))
def test_normalisation_is_idempotent(text: str) -> None:
    once = normalise(text)
    assert normalise(once) == once


@given(NAMES.flatmap(lambda n: st.tuples(st.just(n), variants(n))))
def test_a_name_matches_itself_under_any_spelling_variation(pair: tuple[str, str]) -> None:
    name, variant = pair
    assert same_name(variant, name)


@given(st.lists(NAMES, min_size=1, max_size=3, unique=True), st.randoms())
def test_given_names_compare_as_a_set(names: list[str], rng) -> None:
    shuffled = names[:]
    rng.shuffle(shuffled)
    assert same_given_names(" ".join(shuffled).upper(), " ".join(names))
    assert not same_given_names(" ".join(names[:-1]), " ".join(names)) or (len(names) == 1 and False)
    assert not same_given_names(" ".join([*names, "Zoumana Extra"]), " ".join(names))


def test_contract_examples() -> None:
    assert same_name("N'Diaye", "Ndiaye") and same_name("KEITA", "Keïta")
    assert same_name("Sonni-Ali  Ber", "sonni ali ber")
    assert same_given_names("Fanta Aminata", "Aminata Fanta")
    assert not same_given_names("Aminata", "Aminata Fanta")  # no fewer
    assert not same_name("Coulibali", "Coulibaly")
    assert same_name("Coulibali", "Coulibaly", threshold=0.9)
    assert not same_name("Traoré", "Diarra", threshold=0.9)
    assert not same_name("", "Diarra", threshold=0.0)  # an empty claim never matches, fuzzily or not


DATES = st.dates(min_value=date(1900, 1, 1), max_value=date(2026, 12, 31))


@given(DATES, st.integers(1, 3))
def test_a_date_matches_itself_at_any_coarser_precision(day: date, precision: int) -> None:
    full = PartialDate(day.year, day.month, day.day)
    coarse = PartialDate(day.year, day.month if precision > 1 else None, day.day if precision > 2 else None)
    assert same_date(full, coarse) and same_date(coarse, full)
    assert str(PartialDate.parse(str(coarse))) == str(coarse)


@given(DATES, DATES)
def test_dates_never_match_across_a_precision_boundary(a: date, b: date) -> None:
    year_a, year_b = PartialDate(a.year), PartialDate(b.year)
    assert same_date(year_a, PartialDate(b.year, b.month, b.day)) == (a.year == b.year)
    month_a = PartialDate(a.year, a.month)
    assert same_date(month_a, PartialDate(b.year, b.month, b.day)) == ((a.year, a.month) == (b.year, b.month))
    assert same_date(year_a, year_b) == (a.year == b.year)


@pytest.mark.parametrize(
    "text", ["1975-13", "1975-02-30", "75", "1975-3-02", "1975-03-02T00:00", "\uff11\uff19\uff17\uff15", ""]
)
def test_invalid_dates_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        PartialDate.parse(text)


@given(st.integers(1901, 2020), st.integers(1, 90), st.integers(-400, 400))
def test_a_year_only_birth_date_on_the_age_edge_gives_null(year: int, years: int, offset: int) -> None:
    as_of = date(year + years, 1, 1) + timedelta(days=offset)
    result = age_at_least(PartialDate(year), years, as_of)
    if as_of < date(year + years, 1, 1):
        assert result is False
    elif as_of >= anniversary(date(year, 12, 31), years):
        assert result is True
    else:
        assert result is None


@given(DATES, st.integers(0, 100))
def test_a_precise_birth_date_always_decides_and_the_birthday_counts(born: date, years: int) -> None:
    assume(born.year + years <= 9999)
    birth = PartialDate(born.year, born.month, born.day)
    birthday = anniversary(born, years)
    assert age_at_least(birth, years, birthday) is True
    assert age_at_least(birth, years, birthday - timedelta(days=1)) is False


def test_leap_day_births_come_of_age_on_the_first_of_march() -> None:
    assert age_at_least(PartialDate(2008, 2, 29), 18, date(2026, 2, 28)) is False
    assert age_at_least(PartialDate(2008, 2, 29), 18, date(2026, 3, 1)) is True


RECORD = {
    **decide.DECOY,
    "family_name": "Traoré",
    "given_names": "Aminata Fanta",
    "birth_date": "1990-04",
    "residence_region": "Mopti",
    "residence_cercle": "Bandiagara",
    "residence_commune": "Dourou",
    "displacement_status": "displaced",
}
TODAY = date(2026, 11, 23)


def answer(record, claims=None, predicates=(), **options):
    options = {"today": TODAY, "threshold": None, "claim_details": True, **options}
    return decide.verify(record, claims or {}, list(predicates), **options)


def test_verification_answers() -> None:
    claims = {"family_name": "TRAORE", "given_names": "Fanta Aminata", "birth_date": "1990-04-12"}
    assert answer(RECORD, claims) == {"match": True, "claims": dict.fromkeys(claims, True)}
    wrong = answer(RECORD, {**claims, "birth_date": "1990-05-12"})
    assert wrong["match"] is False and wrong["claims"]["birth_date"] is False
    assert "claims" not in answer(RECORD, claims, claim_details=False)
    predicates = [
        decide.Predicate("age_at_least", 36, date(2026, 4, 15)),
        decide.Predicate("alive"),
        decide.Predicate("resides_in", "bandiagara"),
        decide.Predicate("registered_idp"),
    ]
    results = [p["result"] for p in answer(RECORD, predicates=predicates)["predicates"]]
    assert results == [None, True, True, True]  # April 1990: 36 on 15 April 2026 only if born by then
    dead = {**RECORD, "record_status": "deceased", "death_date": "2020-01-01"}
    assert answer(dead, predicates=[decide.Predicate("alive")])["predicates"][0]["result"] is False
    returned = {**RECORD, "displacement_status": "returned"}
    assert answer(returned, predicates=[decide.Predicate("registered_idp")])["predicates"][0]["result"] is False


def test_an_unknown_person_answers_false_everywhere_in_the_same_shape() -> None:
    claims = {"family_name": decide.DECOY["family_name"], "birth_date": decide.DECOY["birth_date"]}
    predicates = [decide.Predicate("alive"), decide.Predicate("age_at_least", 18)]
    known = answer(decide.DECOY, claims, predicates)
    unknown = answer(None, claims, predicates)
    assert known["match"] is True  # the decoy matches itself ...
    assert unknown == {
        "match": False,
        "claims": {"family_name": False, "birth_date": False},
        "predicates": [{"name": "alive", "result": False}, {"name": "age_at_least", "result": False}],
    }
    assert set(known) == set(unknown)


def test_what_a_verification_fetches() -> None:
    needed = decide.needed_attributes({"family_name": "x"}, [decide.Predicate("resides_in", "Mopti")])
    assert needed == {"family_name", "record_status", "residence_region", "residence_cercle", "residence_commune"}


@settings(max_examples=50)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60))
def test_matching_any_text_never_raises(text: str) -> None:
    assert isinstance(same_name(text, "Traoré", threshold=0.9), bool)
    assert isinstance(same_given_names(text, "Aminata Fanta", threshold=0.9), bool)


@given(st.text(alphabet=st.characters(max_codepoint=127), max_size=40))
def test_nin_ascii_shortcut_is_the_full_normalisation(text: str) -> None:
    full = "".join(unicodedata.normalize("NFKC", text).split()).upper()
    assert normalise_nin(text) == full


def test_nin_normalisation_folds_compatibility_forms() -> None:
    # fullwidth digits, a space, lower case
    assert normalise_nin("\uff11\uff12\uff13 \uff14\uff15\uff16ab") == "123456AB"
    assert normalise_nin(" ML12\t34 ") == "ML1234"
