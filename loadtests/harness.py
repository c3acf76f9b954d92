"""Shared pieces of the benchmarks: a bounded closed-loop load generator on loopback and percentiles."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import httpx


@dataclass(frozen=True)
class Run:
    requests: int
    seconds: float
    latencies_ms: list[float]
    statuses: dict[int, int]

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


async def drive(url: str, headers: dict[str, str], requests: int, concurrency: int) -> Run:
    """`concurrency` workers share `requests` GETs to one loopback URL; stops when they are done."""
    assert url.startswith(("http://127.0.0.1:", "http://localhost:")), "load goes to loopback only"
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    remaining = requests
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30, headers=headers) as client:

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                started = time.perf_counter()
                response = await client.get(url)
                latencies.append((time.perf_counter() - started) * 1000)
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return Run(requests, elapsed, latencies, statuses)


async def drive_at_rate(url: str, headers: dict[str, str], rate: float, requests: int) -> Run:
    """Open loop: one GET every 1/rate s whatever the answers, latency measured from the scheduled send
    (so a stall is charged to every request it delayed). Bounded by `requests`."""
    assert url.startswith(("http://127.0.0.1:", "http://localhost:")), "load goes to loopback only"
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(limits=limits, timeout=30, headers=headers) as client:

        async def one(scheduled: float) -> None:
            response = await client.get(url)
            latencies.append((time.perf_counter() - scheduled) * 1000)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

        started = time.perf_counter()
        tasks = []
        for index in range(requests):
            scheduled = started + index / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(scheduled)))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - started
    return Run(requests, elapsed, latencies, statuses)
