"""Which log a gateway process writes: its worker slot, its origin (CONTRACT §13) and its directory.

Each process claims the lowest free slot under `<data dir>/log/slots` by taking an exclusive `flock` on
the slot's file and holding it while it runs. So `--workers N` gives slots 0..N-1, a worker restarted by
its supervisor takes back the slot its predecessor left, and two processes can never write one log. The
origin follows from the slot, so it is stable across restarts.
"""

from __future__ import annotations

import fcntl
import os
import re
import socket
from pathlib import Path
from urllib.parse import quote, urlsplit

MAX_SLOTS = 256


class SlotsExhausted(Exception):
    """Every slot is held by a running process."""


class Slot:
    """A held slot: released when the process ends, or by `release`."""

    def __init__(self, index: int, fd: int) -> None:
        self.index = index
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:  # an app built but never started gives its slot back when dropped
        self.release()


def claim_slot(log_root: Path) -> Slot:
    slots = log_root / "slots"
    slots.mkdir(parents=True, exist_ok=True, mode=0o700)
    for index in range(MAX_SLOTS):
        fd = os.open(slots / f"{index}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        return Slot(index, fd)
    raise SlotsExhausted(f"all {MAX_SLOTS} log slots under {slots} are held")


def issuer_host(issuer: str) -> str:
    parts = urlsplit(issuer)
    return parts.netloc or parts.path


def log_origin(issuer: str, configured: str | None, slot: int, workers: int) -> str:
    """`<issuer host>/access-log/<hostname>-<slot>` by default; a configured origin as given, with
    `/<slot>` appended when several workers share it."""
    if configured:
        # Slot 0 alone keeps the configured name; any other slot (more workers than GATEWAY_WORKERS
        # says, a second process on the data dir) gets its own, never another process's log.
        return f"{configured}/{slot}" if workers > 1 or slot > 0 else configured
    return f"{issuer_host(issuer)}/access-log/{socket.gethostname()}-{slot}"


def legacy_origin(issuer: str) -> str:
    """The name a 1.0 access log (one SQL chain, numbered from 1) keeps after migration."""
    return f"{issuer_host(issuer)}/access-log/1.0"


def log_directory(log_root: Path, origin: str) -> Path:
    """One directory per origin, its name the origin percent-encoded (no `/`, no `..`)."""
    name = quote(origin, safe="").replace(".", "%2E")
    if len(name.encode()) > 255:
        raise ValueError(f"the log origin {origin!r} is too long for a directory name once encoded")
    return log_root / name


def local_logs(log_root: Path) -> list[Path]:
    """Every log directory under `log_root` (those holding an origin file)."""
    if not log_root.is_dir():
        return []
    return sorted(path for path in log_root.iterdir() if (path / "origin").is_file())


def successor_origin(origin: str) -> str:
    """The origin that continues a retired log: `<origin>/e2`, then `/e3`, and so on."""
    match = re.fullmatch(r"(.+)/e([0-9]+)", origin)
    return f"{match.group(1)}/e{int(match.group(2)) + 1}" if match else f"{origin}/e2"


def current_origin(log_root: Path, origin: str) -> str:
    """Follow retired logs (`retired.json`) from `origin` to the one that continues them."""
    from gateway.audit.segment_store import read_retired

    for _ in range(10_000):
        retired = read_retired(log_directory(log_root, origin))
        if retired is None:
            return origin
        origin = str(retired["successor"])
    raise ValueError(f"the log {origin!r} has too many successors")
