"""Where GCRA state lives: in this process, or in Redis shared by every replica.

Both implement `acquire(key, windows) -> Verdict` with the same arithmetic (`gcra.decide`); one
contract test suite runs against both.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from redis.asyncio import Redis

from gateway.ratelimit.gcra import Verdict, Window, WindowState, decide


class LimiterBackend(Protocol):
    async def acquire(self, key: str, windows: tuple[Window, ...]) -> Verdict: ...


class MemoryBackend:
    """State in a dict; a decision has no await inside, so it is atomic on the event loop."""

    def __init__(self, clock: Callable[[], float] = time.time, sweep_every: int = 10_000) -> None:
        self._tats: dict[str, int] = {}
        self._names: dict[str, tuple[tuple[Window, ...], list[str]]] = {}  # per key: its windows' state names
        self._clock = clock
        self._sweep_every = sweep_every
        self._calls = 0

    def _state_names(self, key: str, windows: tuple[Window, ...]) -> list[str]:
        """Built once per key and set of windows (callers pass the same tuple until policies change)."""
        known = self._names.get(key)
        if known is None or known[0] is not windows:
            known = self._names[key] = (windows, [f"{key}:{w.name}:{w.limit}:{w.period_us}" for w in windows])
        return known[1]

    async def acquire(self, key: str, windows: tuple[Window, ...]) -> Verdict:
        now = int(self._clock() * 1_000_000)
        names = self._state_names(key, windows)
        tats = self._tats
        verdict, stored = decide(windows, [tats.get(n) for n in names], now)
        if verdict.allowed:
            tats.update(zip(names, stored, strict=True))
        self._calls += 1
        if self._calls % self._sweep_every == 0:
            self._tats = {n: t for n, t in tats.items() if t > now}
            self._names = {}
        return verdict

    def __len__(self) -> int:
        return len(self._tats)


# Mirrors gcra.decide. KEYS: one per window. ARGV: period_us, limit for each window.
# Returns {allowed, retry_after_us, remaining_1, reset_us_1, ...}. Redis's own clock, so replicas agree.
GCRA_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = #KEYS
local current, proposed, periods, intervals = {}, {}, {}, {}
local retry = 0
for i = 1, n do
  local period = tonumber(ARGV[2 * i - 1])
  local interval = math.floor(period / tonumber(ARGV[2 * i]))
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0') or 0
  if tat < now then tat = now end
  current[i], proposed[i], periods[i], intervals[i] = tat, tat + interval, period, interval
  local allow_at = tat + interval - period
  if allow_at > now and allow_at - now > retry then retry = allow_at - now end
end
local out = {retry == 0 and 1 or 0, retry}
for i = 1, n do
  local tat = current[i]
  if retry == 0 then
    tat = proposed[i]
    redis.call('SET', KEYS[i], string.format('%.0f', tat), 'PX', math.floor((tat - now) / 1000) + 1)
  end
  local remaining = math.floor((periods[i] - (tat - now)) / intervals[i])
  if remaining < 0 then remaining = 0 end
  out[#out + 1] = remaining
  out[#out + 1] = tat - now
end
return out
"""


class RedisBackend:
    """One `EVALSHA` per request for all of its windows (redis-py reloads the script on NOSCRIPT).

    Keys share a hash tag per subject, so every window of one administration lands in one Redis
    Cluster slot and the script stays legal there.
    """

    def __init__(self, redis: Redis, prefix: str) -> None:
        self._script = redis.register_script(GCRA_SCRIPT)
        self._prefix = prefix

    def keys(self, key: str, windows: tuple[Window, ...]) -> list[str]:
        return [f"{self._prefix}rl:{{{key}}}:{w.name}:{w.limit}:{w.period_us}" for w in windows]

    async def acquire(self, key: str, windows: tuple[Window, ...]) -> Verdict:
        args: list[int] = []
        for window in windows:
            args += [window.period_us, window.limit]
        reply = await self._script(keys=self.keys(key, windows), args=args)
        states = tuple(WindowState(w, int(reply[2 + 2 * i]), int(reply[3 + 2 * i])) for i, w in enumerate(windows))
        return Verdict(bool(int(reply[0])), int(reply[1]), states)
