"""The data directory holds the register, the access log, consents and keys, about people in danger: no
other account on the machine may read any of it, whoever created the files and whatever the umask."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)

PRIVATE_UMASK = 0o077


def secure_data_dir(data_dir: Path) -> None:
    """From now on this process creates files 0600 and directories 0700 (SQLite's WAL and SHM sidecars
    and child processes included: they inherit the umask); what already exists under `data_dir` is set
    so. Links are not followed; a read-only mount (a key Secret) is left as it is, with a warning."""
    os.umask(PRIVATE_UMASK)
    if not data_dir.exists():
        return
    data_dir = data_dir.resolve()  # the directory itself, even when the setting names a link to it
    _set(data_dir, 0o700)
    for root, dirs, files in os.walk(data_dir):
        for name in dirs:
            _set(Path(root) / name, 0o700)
        for name in files:
            _set(Path(root) / name, 0o600)


def _set(path: Path, mode: int) -> None:
    try:
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode) or stat.S_IMODE(info.st_mode) == mode:
            return
        path.chmod(mode)
    except OSError as exc:
        log.warning("cannot make %s private (%s); check who can read it", path, exc.strerror or exc)
