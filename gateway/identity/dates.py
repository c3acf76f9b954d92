"""Birth dates with their precision ("né vers 1975"): a record may know the day, the month or the year."""

from __future__ import annotations

import calendar
import functools
import re
from dataclasses import dataclass
from datetime import date

_PATTERN = re.compile(r"^([0-9]{4})(?:-([0-9]{2})(?:-([0-9]{2}))?)?$")  # ASCII digits only


@dataclass(frozen=True, slots=True)
class PartialDate:
    year: int
    month: int | None = None
    day: int | None = None

    @staticmethod
    def parse(text: str) -> PartialDate:
        """`YYYY`, `YYYY-MM` or `YYYY-MM-DD`, a real calendar date; ValueError otherwise."""
        return _parse(text)

    @property
    def precision(self) -> int:
        """1 year, 2 month, 3 day."""
        return 1 if self.month is None else 2 if self.day is None else 3

    def truncated(self, precision: int) -> tuple[int, ...]:
        return (self.year, self.month or 0, self.day or 0)[:precision]

    def earliest(self) -> date:
        return date(self.year, self.month or 1, self.day or 1)

    def latest(self) -> date:
        month = self.month or 12
        return date(self.year, month, self.day or calendar.monthrange(self.year, month)[1])

    def __str__(self) -> str:
        return "-".join([f"{self.year:04d}", *(f"{p:02d}" for p in (self.month, self.day) if p is not None)])


@functools.lru_cache(maxsize=8192)
def _parse(text: str) -> PartialDate:
    """Dates repeat: a verification parses the claimed one twice and the recorded one twice. A valid
    date alone names nobody, so the parsed ones are kept, a bounded number (invalid ones are not)."""
    match = _PATTERN.match(text)
    if not match:
        raise ValueError("a date is YYYY-MM-DD, YYYY-MM or YYYY")
    year_text, month_text, day_text = match.groups()
    year = int(year_text)
    month = int(month_text) if month_text else None
    day = int(day_text) if day_text else None
    if year < 1800:
        raise ValueError("year out of range")
    if month is not None and not 1 <= month <= 12:
        raise ValueError("month out of range")
    if day is not None:
        assert month is not None
        date(year, month, day)  # raises ValueError for 2023-02-30
    return PartialDate(year, month, day)


def same_date(claim: PartialDate, record: PartialDate) -> bool:
    """Compared at the coarser of the two precisions: a record `1975` matches a claim `1975-03-02`."""
    precision = min(claim.precision, record.precision)
    return claim.truncated(precision) == record.truncated(precision)


def anniversary(born: date, years: int) -> date:
    """The day a person born on `born` is `years` old. Born on 29 February: 1 March in common years."""
    try:
        return born.replace(year=born.year + years)
    except ValueError:
        return date(born.year + years, 3, 1)


def age_at_least(birth: PartialDate, years: int, as_of: date) -> bool | None:
    """True/False when every possible birth day agrees; None when the precision cannot decide."""
    if anniversary(birth.latest(), years) <= as_of:
        return True
    if anniversary(birth.earliest(), years) > as_of:
        return False
    return None
