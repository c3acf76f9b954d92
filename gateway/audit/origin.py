"""Which log a gateway process writes: its worker slot, its origin (docs/contract.md §13) and its directory.

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
import time
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit

if TYPE_CHECKING:
    from gateway.audit.segment_store import Link

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


_SUCCESSOR = re.compile(r"/(k[0-9a-f]{8}|r[0-9]{8}t[0-9]{6}(-[0-9]+)?)")


def successor_origin(origin: str, tag: str) -> str:
    """The origin that continues a retired log: the base origin and a tag unique to why it was retired —
    `k<new key id>` after a key rotation, `r<UTC time>` after a restore — so a name is never used twice,
    even by a data dir restored from before an earlier retirement."""
    base = origin
    while (match := _SUCCESSOR.search(base)) is not None and match.end() == len(base):
        base = base[: match.start()]
    return f"{base}/{tag}"


def rotation_tag(key_id: str) -> str:
    return f"k{key_id[:8]}"


def restore_tag(log_root: Path, origin: str) -> str:
    """`r<UTC time>`, with `-N` if that name is taken (two restores in one second)."""
    tag = "r" + time.strftime("%Y%m%dt%H%M%S", time.gmtime())
    candidate, n = tag, 1
    while log_directory(log_root, successor_origin(origin, candidate)).exists():
        n += 1
        candidate = f"{tag}-{n}"
    return candidate


def current_origin(log_root: Path, origin: str) -> tuple[str, Link | None]:
    """Follow retired logs (`retired.json`) from `origin` to the one that continues them, and the head
    that one chains from (for a successor not yet made: a crash after the retirement)."""
    from gateway.audit.segment_store import Link, read_retired

    head = None
    for _ in range(10_000):
        retired = read_retired(log_directory(log_root, origin))
        if retired is None:
            return origin, head
        head = Link(str(retired["origin"]), int(retired["seq"]), str(retired["hash"]))
        origin = str(retired["successor"])
    raise ValueError(f"the log {origin!r} has too many successors")
