"""Key material on disk: created once, readable by its owner only, never overwritten."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)


def create_exclusive(path: Path, data: bytes) -> bool:
    """Write `data` to a new 0600 file; False (and nothing written) if the file already exists."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    return True


def load_or_create_secret(path: Path, size: int = 32) -> bytes:
    """A random secret kept in `path` (hex), made on first use; at least 16 bytes once read."""
    create_exclusive(path, secrets.token_hex(size).encode())
    value = bytes.fromhex(path.read_text().strip())
    if len(value) < 16:
        raise ValueError(f"{path}: a key needs at least 16 bytes (32 hex digits)")
    return value


def load_or_create_ed25519(path: Path) -> Ed25519PrivateKey:
    """An Ed25519 private key in PEM at `path`, made on first use. Its public half is derived in memory,
    never written beside it: the key directory may be a read-only mount (`jamu audit public-key`)."""
    if not path.exists():
        create_exclusive(
            path, Ed25519PrivateKey.generate().private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        )
    loaded = load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(loaded, Ed25519PrivateKey):
        raise ValueError(f"{path}: not an Ed25519 private key")
    return loaded
