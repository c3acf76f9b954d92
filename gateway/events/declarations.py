"""Declarations from the civil-registration centres, read and judged without touching storage.

A declaration is checked in two steps. Its form (`parse`): the type, the fields its type allows and
nothing else, each well formed; a fault is `400` with a JSON pointer. Its facts (`judge`): what it says
against the person's record as it stands (a second death, a death before birth, a marriage of a
deceased person); an impossible fact is `422 declaration_rejected` with a reason. Both are pure, so the
register's one write path (`events.register`) calls them inside its transaction, on the record it has
just read, and the rules are tested without a database.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, StringConstraints, ValidationError

from gateway.api.fields import Nin
from gateway.identity.dates import PartialDate
from gateway.policy.catalogue import DeclarationType

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Place = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
Reference = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._/-]+$")
]


def _date_text(value: str) -> str:
    PartialDate.parse(value)  # ValueError names the fault
    return value


DateText = Annotated[str, StringConstraints(max_length=10), AfterValidator(_date_text)]


class _Data(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class BirthData(_Data):
    family_name: Name
    given_names: Name
    sex: Literal["F", "M"]
    birth_date: DateText
    birth_place: Place
    father_name: Name | None = None
    mother_name: Name | None = None
    father_nin: Nin | None = None
    mother_nin: Nin | None = None
    residence_region: Place | None = None
    residence_cercle: Place | None = None
    residence_commune: Place | None = None


class DeathData(_Data):
    death_date: DateText
    death_place: Place | None = None


class UnionData(_Data):
    spouse_nin: Nin
    date: DateText
    place: Place | None = None


class NameChangeData(_Data):
    family_name: Name | None = None
    given_names: Name | None = None
    effective_date: DateText


class DisplacementData(_Data):
    displacement_status: Literal["displaced", "returned"]
    displacement_site: Place | None = None
    idp_household_id: Reference | None = None
    effective_date: DateText


DATA: dict[str, type[_Data]] = {
    "birth": BirthData,
    "death": DeathData,
    "marriage": UnionData,
    "divorce": UnionData,
    "name_change": NameChangeData,
    "displacement": DisplacementData,
}

# What each type sets on the person's record (the attributes of docs/contract.md §3), beside the facts it
# only records.
RECORD_FIELDS: dict[str, tuple[str, ...]] = {
    "birth": (
        "family_name",
        "given_names",
        "sex",
        "birth_date",
        "birth_place",
        "father_name",
        "mother_name",
        "residence_region",
        "residence_cercle",
        "residence_commune",
    ),
    "death": ("death_date",),
    "marriage": (),
    "divorce": (),
    "name_change": ("family_name", "given_names"),
    "displacement": ("displacement_status", "displacement_site", "idp_household_id"),
}


class DeclarationBody(BaseModel):
    """The request as sent: `data` is read per type afterwards, so its pointers are `/data/<field>`."""

    model_config = ConfigDict(extra="forbid")
    type: DeclarationType
    nin: Nin | None = None
    data: dict[str, Any]
    corrects: Annotated[str, StringConstraints(pattern=r"^[0-9a-f-]{36}$")] | None = None
    voids: Annotated[str, StringConstraints(pattern=r"^[0-9a-f-]{36}$")] | None = None

    @property
    def amends(self) -> str | None:
        return self.corrects or self.voids


@dataclass(frozen=True, slots=True)
class Declaration:
    """A declaration whose form is sound. `data` holds only the fields sent (a correction's are few)."""

    type: str
    nin: str | None
    data: dict[str, Any]
    corrects: str | None = None
    voids: str | None = None

    @property
    def amends(self) -> str | None:
        return self.corrects or self.voids

    @property
    def event_type(self) -> str:
        return self.type + (".corrected" if self.corrects else ".voided" if self.voids else "")


class FormProblem(Exception):
    """The declaration is malformed: `errors` are `{pointer, detail}` (400 invalid_request)."""

    def __init__(self, errors: list[dict[str, str]]) -> None:
        super().__init__("; ".join(f"{e['pointer']}: {e['detail']}" for e in errors))
        self.errors = errors


class Rejected(Exception):
    """The declaration is well formed but cannot be true of the register: `reason` (422)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _pointer(loc: tuple[Any, ...], prefix: str = "") -> str:
    return prefix + "".join(f"/{part}" for part in loc)


def parse(body: DeclarationBody) -> Declaration:
    """The declaration's form, per type (docs/contract.md §15). A birth gets its NIN from the register; every
    other new declaration names its person; a correction carries some of its type's fields, a void none."""
    errors: list[dict[str, str]] = []
    if body.corrects and body.voids:
        errors.append({"pointer": "/voids", "detail": "a declaration corrects or voids, not both"})
    model = DATA[body.type]
    data: dict[str, Any] = {}
    if body.voids:
        if body.data:
            errors.append({"pointer": "/data", "detail": "a void carries no data: {}"})
    else:
        unknown = sorted(set(body.data) - set(model.model_fields))
        errors += [
            {"pointer": f"/data/{name}", "detail": f"not a field of a {body.type} declaration"} for name in unknown[:20]
        ]
        if not unknown:
            data, problems = _read_data(model, body.data, partial=body.corrects is not None)
            errors += problems
    if body.corrects and not body.data:
        errors.append({"pointer": "/data", "detail": "a correction carries the corrected fields"})
    if body.type == "birth" and not body.amends and body.nin is not None:
        errors.append({"pointer": "/nin", "detail": "a birth gets a new NIN from the register: send none"})
    if body.type != "birth" and not body.amends and body.nin is None:
        errors.append({"pointer": "/nin", "detail": "required: the person the declaration is about"})
    if body.type == "name_change" and not body.amends and not ({"family_name", "given_names"} & set(data)):
        errors.append({"pointer": "/data", "detail": "a name change sets family_name, given_names or both"})
    if errors:
        raise FormProblem(errors)
    return Declaration(body.type, body.nin, data, body.corrects, body.voids)


def _read_data(
    model: type[_Data], raw: Mapping[str, Any], *, partial: bool
) -> tuple[dict[str, Any], list[dict[str, str]]]:
    if partial:  # a correction: only the fields it corrects, each checked as its type checks it
        fields_sent = dict(raw)
        nulls = [
            {"pointer": f"/data/{k}", "detail": "a correction sets a value; void the declaration to undo it"}
            for k, v in fields_sent.items()
            if v is None
        ]
        if nulls:
            return {}, nulls
        try:
            checked = model.model_validate({**_placeholders(model), **fields_sent})
        except ValidationError as exc:
            return {}, [
                {"pointer": _pointer(tuple(e["loc"]), "/data"), "detail": e["msg"]}
                for e in exc.errors()[:20]
                if e["loc"] and e["loc"][0] in fields_sent
            ]
        return {k: getattr(checked, k) for k in fields_sent}, []
    try:
        checked = model.model_validate(dict(raw))
    except ValidationError as exc:
        return {}, [{"pointer": _pointer(tuple(e["loc"]), "/data"), "detail": e["msg"]} for e in exc.errors()[:20]]
    return checked.model_dump(exclude_none=True), []


_PLACEHOLDER = {"sex": "F", "displacement_status": "displaced", "spouse_nin": "000000"}


def _placeholders(model: type[_Data]) -> dict[str, Any]:
    """Valid values for the required fields a correction does not send, so the model checks the others."""
    values: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        if info.is_required():
            values[name] = _PLACEHOLDER.get(name, "2000-01-01" if name.endswith("date") else "x")
    return values


# -- facts -----------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Change:
    """What a declaration does to the register: the record after it (None: the record is removed, a
    birth voided), the fields it changed with their values before, and the people it is about."""

    nin: str
    record: dict[str, Any] | None
    before: dict[str, Any] = field(default_factory=dict)
    changed: dict[str, Any] = field(default_factory=dict)


def _not_future(value: str | None, today: date, pointer: str) -> None:
    if value is not None and PartialDate.parse(value).earliest() > today:
        raise Rejected("date_in_future", f"{pointer} is after today")


def _alive(record: Mapping[str, Any]) -> bool:
    return record.get("record_status") != "deceased" and not record.get("death_date")


def check_record(record: Mapping[str, Any], today: date) -> None:
    """What must hold of any record after any change: no date ahead of today, no death before birth."""
    _not_future(record.get("birth_date"), today, "birth_date")
    _not_future(record.get("death_date"), today, "death_date")
    birth, death = record.get("birth_date"), record.get("death_date")
    if birth and death and PartialDate.parse(death).latest() < PartialDate.parse(birth).earliest():
        raise Rejected("death_before_birth", "the death would be dated before the birth")


def new_record(nin: str, data: Mapping[str, Any]) -> dict[str, Any]:
    record: dict[str, Any] = {name: data.get(name) for name in RECORD_FIELDS["birth"]}
    record.update(
        nin=nin,
        nationality=None,
        death_date=None,
        record_status="active",
        displacement_status=None,
        displacement_site=None,
        idp_household_id=None,
    )
    return record


def judge_birth(
    nin: str, data: Mapping[str, Any], parents: Mapping[str, Mapping[str, Any] | None], today: date
) -> Change:
    """A new person. Each parent named by NIN must be known and born before the child."""
    _not_future(data.get("birth_date"), today, "birth_date")
    child_born = PartialDate.parse(data["birth_date"])
    for role in ("father_nin", "mother_nin"):
        parent_nin = data.get(role)
        if parent_nin is None:
            continue
        parent = parents.get(parent_nin)
        if parent is None:
            raise Rejected("parent_not_found", f"{role} names no person in the register")
        born = parent.get("birth_date")
        if born and PartialDate.parse(born).earliest() >= child_born.latest():
            raise Rejected("parent_born_after_child", f"the person named by {role} was born after the child")
    record = new_record(nin, data)
    check_record(record, today)
    return Change(nin, record, {}, {k: record[k] for k in RECORD_FIELDS["birth"] if record.get(k) is not None})


def judge(
    declaration: Declaration,
    record: Mapping[str, Any] | None,
    spouse: Mapping[str, Any] | None,
    married: bool,
    today: date,
) -> Change:
    """A new declaration (not a birth) against the person's record as it stands."""
    kind, data = declaration.type, declaration.data
    if record is None:
        raise Rejected("subject_not_found", "the NIN names no person in the register")
    nin = record["nin"]
    if kind == "death":
        if not _alive(record):
            raise Rejected("already_deceased", "the register already records this person's death")
        changed = {"death_date": data["death_date"], "record_status": "deceased"}
    elif kind in ("marriage", "divorce"):
        if spouse is None:
            raise Rejected("spouse_not_found", "spouse_nin names no person in the register")
        if spouse["nin"] == nin:
            raise Rejected("same_person", "a person cannot marry or divorce themself")
        _not_future(data["date"], today, "date")
        when = PartialDate.parse(data["date"])
        for who, person in (("the person", record), ("the spouse", spouse)):
            if kind == "marriage" and not _alive(person):
                raise Rejected("subject_deceased", f"{who} is recorded as deceased")
            born = person.get("birth_date")
            if born and when.latest() < PartialDate.parse(born).earliest():
                raise Rejected("date_before_birth", f"the date is before {who}'s birth")
        if kind == "marriage" and married:
            raise Rejected("already_married", "the register already records this marriage")
        if kind == "divorce" and not married:
            raise Rejected("not_married", "the register records no marriage between these two people")
        changed = {}
    else:  # name_change, displacement
        if not _alive(record):
            raise Rejected("subject_deceased", "the register records this person as deceased")
        _not_future(data["effective_date"], today, "effective_date")
        changed = {k: data.get(k) for k in RECORD_FIELDS[kind] if k in data or kind == "displacement"}
    after = {**record, **changed}
    check_record(after, today)
    return Change(nin, after, {k: record.get(k) for k in changed}, changed)


def judge_amendment(
    declaration: Declaration,
    original: Mapping[str, Any],
    chain: Mapping[str, Any],
    first_before: Mapping[str, Any],
    record: Mapping[str, Any] | None,
    today: date,
    later: str | None = None,
) -> Change:
    """A correction or a void of `original` (its type, its NIN, `voided`), given `chain` (each field's
    value as the original and its corrections left it) and `first_before` (each of those fields' value
    before the chain first changed it). `later` names a declaration made since that stands on what this
    one established (a later change of the same fields, a later divorce, a child's birth): then the
    chain is not to be amended (`superseded`)."""
    if original["type"] != declaration.type:
        raise Rejected("type_mismatch", f"the amended declaration is a {original['type']}, not a {declaration.type}")
    if original["voided"]:
        raise Rejected("already_voided", "the amended declaration was voided")
    nin = original["nin"]
    if declaration.nin is not None and declaration.nin != nin:
        raise Rejected("nin_mismatch", "nin is not the NIN of the amended declaration")
    if record is None:
        raise Rejected("subject_not_found", "the person of the amended declaration is no longer in the register")
    if later is not None:
        raise Rejected("superseded", f"a later declaration ({later}) stands on this one: amend or void it first")
    for name, value in chain.items():
        if record.get(name) != value:
            raise Rejected("superseded", f"{name} was changed by a later declaration: amend that one instead")
    if declaration.voids:
        if declaration.type == "birth":
            return Change(nin, None, dict(record), {})
        restored = {name: first_before.get(name) for name in chain}
        after = {**record, **restored}
    else:
        data = declaration.data
        if declaration.type == "birth":
            for role in ("father_nin", "mother_nin"):
                if role in data:
                    raise Rejected("not_correctable", f"{role} is not corrected: void the birth and declare it again")
        if declaration.type in ("marriage", "divorce") and "spouse_nin" in data:
            raise Rejected("not_correctable", "spouse_nin is not corrected: void the declaration and declare again")
        for name in ("date", "effective_date"):
            _not_future(data.get(name), today, name)
        changed = {k: v for k, v in data.items() if k in RECORD_FIELDS[declaration.type]}
        after = {**record, **changed}
    check_record(after, today)
    before = {k: record.get(k) for k in after if after.get(k) != record.get(k)}
    return Change(nin, after, before, {k: after[k] for k in before})
