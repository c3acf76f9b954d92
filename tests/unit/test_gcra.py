"""GCRA arithmetic: exact allow/deny sequences at window edges, several windows at once."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.ratelimit.gcra import Window, decide

S = 1_000_000
BURST = Window("burst", 5, 1 * S)  # 5 per second: one every 200 ms, up to 5 at once
DAILY = Window("daily", 8, 86_400 * S)


class Clock:
    """Drives `decide` like a backend would, keeping the stored TATs."""

    def __init__(self, *windows: Window) -> None:
        self.windows = windows
        self.tats: list[int | None] = [None] * len(windows)

    def hit(self, now_us: int):
        verdict, stored = decide(self.windows, self.tats, now_us)
        self.tats = list(stored)
        return verdict


def test_a_full_burst_then_one_refusal() -> None:
    clock = Clock(BURST)
    results = [clock.hit(0) for _ in range(6)]
    assert [r.allowed for r in results] == [True] * 5 + [False]
    assert [r.windows[0].remaining for r in results] == [4, 3, 2, 1, 0, 0]
    assert results[-1].retry_after_us == 200_000


def test_refill_is_exact_at_the_edge() -> None:
    clock = Clock(BURST)
    for _ in range(5):
        assert clock.hit(0).allowed
    assert not clock.hit(199_999).allowed, "one microsecond early"
    assert clock.hit(200_000).allowed, "exactly one interval later"
    assert not clock.hit(200_000).allowed


def test_a_refusal_consumes_nothing() -> None:
    clock = Clock(BURST)
    for _ in range(5):
        clock.hit(0)
    for _ in range(100):
        assert not clock.hit(100_000).allowed
    assert clock.hit(200_000).allowed, "the refused attempts did not push the next slot back"


def test_every_window_must_admit_and_the_refusing_one_sets_retry() -> None:
    clock = Clock(BURST, DAILY)
    allowed = 0
    for i in range(20):
        verdict = clock.hit(i * S)  # one a second: the burst window always admits
        allowed += verdict.allowed
    assert allowed == 8, "the daily window caps the total"
    assert verdict.windows[0].remaining == 5, "a refusal leaves the burst window untouched too"
    assert verdict.retry_after_us == (10_800 - 19) * S, "the next daily slot: one interval after the first"


def test_remaining_and_reset_after_idle() -> None:
    clock = Clock(BURST)
    clock.hit(0)
    verdict = clock.hit(10 * S)  # long idle: full again, then one used
    assert verdict.windows[0].remaining == 4
    assert verdict.windows[0].reset_us == 200_000


@given(
    st.lists(st.integers(min_value=0, max_value=3 * S), min_size=1, max_size=60),
    st.integers(min_value=0, max_value=2 * S),
)
def test_gcra_bound_over_any_span(offsets: list[int], span: int) -> None:
    """At most `limit` at once and `limit` per period sustained: in any span D, at most
    1 + floor((D + period - interval) / interval) requests (the GCRA conformance bound)."""
    clock = Clock(BURST)
    admitted = [t for t in sorted(offsets) if clock.hit(t).allowed]
    bound = 1 + (span + BURST.period_us - BURST.interval_us) // BURST.interval_us
    for start in admitted:
        assert len([t for t in admitted if start <= t <= start + span]) <= bound


@given(st.lists(st.integers(min_value=0, max_value=3 * S), min_size=1, max_size=60))
def test_no_burst_beyond_limit(offsets: list[int]) -> None:
    clock = Clock(BURST)
    admitted = [t for t in sorted(offsets) if clock.hit(t).allowed]
    for start in admitted:
        assert len([t for t in admitted if start <= t < start + BURST.interval_us]) <= BURST.limit


def test_a_window_finer_than_a_microsecond_is_refused() -> None:
    import pytest

    from gateway.ratelimit.gcra import Window

    with pytest.raises(ValueError, match="per second"):
        Window("burst", 10_000_000, 1_000_000)
    assert Window("burst", 1_000_000, 1_000_000).interval_us == 1
