"""The generic cell rate algorithm over several windows at once, as a pure function.

State per window is one number, the theoretical arrival time (TAT). A window of `limit` requests per
`period` admits a request at `now` when `max(TAT, now) + interval - period <= now`, where
`interval = period / limit`; admitting moves the TAT on by one interval. All windows are decided
together: a request passes only if every window admits it, and a refused request changes no TAT.

Times are integer microseconds so this function and the Redis script compute exactly the same thing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

MAX_PER_SECOND = 1_000_000


@dataclass(frozen=True, slots=True)
class Window:
    name: str
    limit: int
    period_us: int
    interval_us: int = field(init=False, repr=False, compare=False)  # period / limit, kept: read per request

    def __post_init__(self) -> None:
        # The arithmetic is in whole microseconds: a window needs at least 1 µs between requests.
        if not 1 <= self.limit <= self.period_us:
            raise ValueError(f"window {self.name}: at most {MAX_PER_SECOND} requests per second")
        object.__setattr__(self, "interval_us", self.period_us // self.limit)

    @property
    def period_s(self) -> int:
        return self.period_us // 1_000_000


class WindowState(NamedTuple):
    window: Window
    remaining: int
    reset_us: int  # until the window is entirely replenished


class Verdict(NamedTuple):
    """Tuples rather than frozen dataclasses: built on every request, at a fifth of the cost."""

    allowed: bool
    retry_after_us: int
    windows: tuple[WindowState, ...]


def decide(windows: Sequence[Window], tats: Sequence[int | None], now_us: int) -> tuple[Verdict, list[int]]:
    """Decide one request; return the verdict and the TATs to store (unchanged when refused)."""
    current = [now_us if tat is None or tat < now_us else tat for tat in tats]
    proposed = []
    retry = 0
    for window, tat in zip(windows, current, strict=True):
        new_tat = tat + window.interval_us
        proposed.append(new_tat)
        if new_tat - window.period_us - now_us > retry:
            retry = new_tat - window.period_us - now_us
    stored = proposed if retry == 0 else current
    states = tuple(
        [
            WindowState(w, max((w.period_us - (tat - now_us)) // w.interval_us, 0), tat - now_us)
            for w, tat in zip(windows, stored, strict=True)
        ]
    )
    return Verdict(retry == 0, retry, states), stored
