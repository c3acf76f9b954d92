"""The benchmarks' load generator: open loop at a fixed rate over keep-alive HTTP/1.1 connections on
loopback, bounded in count.

Hand-written on asyncio streams because the load generator must not be the bottleneck on 2 cores: a
general-purpose client (httpx) spends about 3 ms of CPU per request, which saturates one core at ~300
requests/s and then measures its own queueing. This one pre-encodes the request and parses only the
status line and Content-Length (~30 µs a request).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import orjson

_T = TypeVar("_T")


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


def in_scratch_dir(prefix: str, run: Callable[[Path], _T]) -> _T:
    """`run` in a new temporary directory, removed afterwards whatever happens: a benchmark seeds
    registers of millions of people (about 1 GB) and must not leave them behind."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        return run(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def cpu_seconds(pid: int) -> tuple[float, float]:
    """CPU time used so far by a process (user + system) and by its running children (the access log's
    writer): what a request costs the server, which drifts far less than its throughput on a shared
    machine. (0, 0) where /proc is not there to read."""

    def used(process: int) -> float:
        try:
            fields = Path(f"/proc/{process}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return 0.0
        return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS

    children: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                children += [int(child) for child in (task / "children").read_text().split()]
    return used(pid), sum(used(child) for child in children)


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def report(result: dict[str, Any]) -> int:
    """A benchmark's end: its one JSON line, and a failing exit when it could not measure."""
    print(orjson.dumps(result).decode())
    return 1 if "error" in result else 0


def merge(runs: list[Run]) -> Run:
    statuses: dict[int, int] = {}
    for run in runs:
        for status, count in run.statuses.items():
            statuses[status] = statuses.get(status, 0) + count
    return Run(
        sum(r.requests for r in runs), sum(r.seconds for r in runs), [x for r in runs for x in r.latencies_ms], statuses
    )


def encode_request(url: str, headers: dict[str, str], body: dict[str, Any] | None) -> tuple[str, int, bytes]:
    parts = urlsplit(url)
    if parts.hostname not in ("127.0.0.1", "localhost"):
        raise ValueError("load goes to loopback only")
    lines = [f"{'GET' if body is None else 'POST'} {parts.path} HTTP/1.1", f"Host: {parts.netloc}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    payload = b"" if body is None else orjson.dumps(body)
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(payload)}"]
    return parts.hostname, parts.port or 80, ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> int:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return status


@contextlib.contextmanager
def _no_collector_pauses() -> Iterator[None]:
    """A full collection of this process's heap pauses sending for tens of ms, which an open-loop
    run would charge to the server. A run is bounded, so its cycles can wait until it ends."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


async def drive_at_rate(
    url: str,
    headers: dict[str, str],
    rate: float,
    requests: int,
    body: dict[str, Any] | None = None,
    connections: int = 32,
) -> Run:
    """One request every 1/rate s whatever the answers; latency counted from the scheduled send, so a
    stall is charged to every request it delayed (no coordinated omission). Bounded by `requests`."""
    host, port, request = encode_request(url, headers, body)
    pool: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for _ in range(connections):
        pool.put_nowait(await asyncio.open_connection(host, port))
    latencies: list[float] = []
    statuses: dict[int, int] = {}

    async def one(scheduled: float) -> None:
        reader, writer = await pool.get()
        status = await _exchange(reader, writer, request)
        latencies.append((time.perf_counter() - scheduled) * 1000)
        statuses[status] = statuses.get(status, 0) + 1
        pool.put_nowait((reader, writer))

    with _no_collector_pauses():
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
    while not pool.empty():
        pool.get_nowait()[1].close()
    return Run(requests, elapsed, latencies, statuses)


async def drive_closed(
    url: str, headers: dict[str, str], requests: int, connections: int = 8, bodies: list[dict[str, Any]] | None = None
) -> Run:
    """Closed loop for throughput: `connections` keep-alive connections each send their next request as
    soon as the previous answer arrives, `requests` in all. With `bodies`, POSTs them round-robin."""
    encoded = (
        [encode_request(url, headers, body)[2] for body in bodies]
        if bodies
        else [encode_request(url, headers, None)[2]]
    )
    host, port, _ = encode_request(url, headers, None)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    remaining = requests

    async def worker(offset: int) -> None:
        nonlocal remaining
        reader, writer = await asyncio.open_connection(host, port)
        index = offset
        try:
            while remaining > 0:
                remaining -= 1
                started = time.perf_counter()
                status = await _exchange(reader, writer, encoded[index % len(encoded)])
                latencies.append((time.perf_counter() - started) * 1000)
                statuses[status] = statuses.get(status, 0) + 1
                index += connections
        finally:
            writer.close()

    with _no_collector_pauses():
        started = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(connections)))
        elapsed = time.perf_counter() - started
    return Run(requests, elapsed, latencies, statuses)
