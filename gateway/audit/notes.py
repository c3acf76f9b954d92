"""C2SP signed notes, checkpoints and cosignatures: pure functions over text and Ed25519 keys.

- signed-note: a text ending in a newline, a blank line, then signature lines `— <name> base64(key ID ‖
  signature)`; a key ID is the first four bytes of SHA-256(name ‖ 0x0A ‖ type ‖ public key); verifier
  keys travel as vkeys `<name>+<hex key ID>+<base64(type ‖ public key)>`.
- tlog-checkpoint: the note text `<origin>\\n<tree size>\\n<base64 root hash>\\n` (and extension lines).
- tlog-cosignature (type 0x04): a witness signs `cosignature/v1\\ntime <t>\\n` followed by the checkpoint
  text, and its signature is key ID ‖ u64 timestamp ‖ Ed25519 signature.

Written here: the formats are a page each, and no maintained Python package implements them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

ED25519 = 0x01
COSIGNATURE = 0x04
MAX_SIGNATURES = 100
_NAME = re.compile(r"[^\s+]+")  # non-empty, no Unicode space, no '+'
_DASH = "\u2014 "


class NoteError(ValueError):
    """A note, checkpoint or key that is malformed, or whose signatures do not hold."""


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _raw(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def key_id(name: str, kind: int, public_key: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + bytes([kind]) + public_key).digest()[:4]


@dataclass(frozen=True)
class Verifier:
    """A public key that checks one name's signatures of one type."""

    name: str
    kind: int
    public_key: bytes

    @property
    def key_id(self) -> bytes:
        return key_id(self.name, self.kind, self.public_key)

    def vkey(self) -> str:
        material = base64.b64encode(bytes([self.kind]) + self.public_key).decode()
        return f"{self.name}+{self.key_id.hex()}+{material}"

    @classmethod
    def parse(cls, vkey: str) -> Verifier:
        """A vkey, checked: its name, its key ID against its key, its type (Ed25519 or cosignature)."""
        name, _, rest = vkey.partition("+")
        hex_id, _, material = rest.partition("+")
        try:
            raw = base64.b64decode(material, validate=True)
            claimed = bytes.fromhex(hex_id)
        except (binascii.Error, ValueError):
            raise NoteError(f"not a verifier key: {vkey!r}") from None
        if not _NAME.fullmatch(name) or len(claimed) != 4 or len(raw) != 33 or raw[0] not in (ED25519, COSIGNATURE):
            raise NoteError(f"not an Ed25519 verifier key: {vkey!r}")
        verifier = cls(name, raw[0], raw[1:])
        if verifier.key_id != claimed:
            raise NoteError(f"the key ID of {name!r} does not match its key")
        return verifier

    def check(self, message: bytes, signature: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(signature, message)
        except (InvalidSignature, ValueError):
            return False
        return True


@dataclass(frozen=True)
class Signer:
    name: str
    private_key: Ed25519PrivateKey

    @property
    def verifier(self) -> Verifier:
        return Verifier(self.name, ED25519, _raw(self.private_key.public_key()))

    def signature_line(self, text: str) -> str:
        signature = self.private_key.sign(text.encode())
        return f"{_DASH}{self.name} {base64.b64encode(self.verifier.key_id + signature).decode()}\n"


@dataclass(frozen=True)
class Cosigner:
    """A witness's key (signature type 0x04, timestamped)."""

    name: str
    private_key: Ed25519PrivateKey

    @property
    def verifier(self) -> Verifier:
        return Verifier(self.name, COSIGNATURE, _raw(self.private_key.public_key()))

    def signature_line(self, text: str, timestamp: int) -> str:
        signature = self.private_key.sign(cosigned_message(text, timestamp))
        blob = self.verifier.key_id + struct.pack(">Q", timestamp) + signature
        return f"{_DASH}{self.name} {base64.b64encode(blob).decode()}\n"


def cosigned_message(text: str, timestamp: int) -> bytes:
    if not 0 <= timestamp < 2**63:
        raise NoteError("a cosignature's time is out of range")
    return f"cosignature/v1\ntime {timestamp}\n".encode() + text.encode()


def sign(text: str, *signers: Signer) -> str:
    _check_text(text)
    return text + "\n" + "".join(signer.signature_line(text) for signer in signers)


@dataclass(frozen=True)
class Signature:
    name: str
    blob: bytes  # key ID ‖ signature (‖ for a cosignature: timestamp before the signature)

    @property
    def key_id(self) -> bytes:
        return self.blob[:4]

    def line(self) -> str:
        return f"{_DASH}{self.name} {base64.b64encode(self.blob).decode()}\n"


def _no_controls(text: str) -> None:
    if any(ch < " " and ch != "\n" for ch in text):
        raise NoteError("a note holds no control characters but newlines")


def _check_text(text: str) -> None:
    if not text.endswith("\n"):
        raise NoteError("a note's text ends with a newline")
    _no_controls(text)


def parse(note: str) -> tuple[str, list[Signature]]:
    """Split a signed note into its text and signatures (none verified yet)."""
    _no_controls(note)
    cut = note.rfind("\n\n")
    if cut < 0 or not note.endswith("\n"):
        raise NoteError("a note is a text, a blank line and signature lines")
    text, lines = note[: cut + 1], note[cut + 2 :].splitlines()
    if not lines or len(lines) > MAX_SIGNATURES:
        raise NoteError("a note carries between 1 and 100 signatures")
    signatures = []
    for line in lines:
        if not line.startswith(_DASH):
            raise NoteError("a signature line starts with an em dash and a space")
        name, _, encoded = line[len(_DASH) :].partition(" ")
        try:
            blob = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            raise NoteError(f"a signature of {name!r} is not base64") from None
        if not _NAME.fullmatch(name) or len(blob) < 5:
            raise NoteError("a signature line names its key and carries a key ID and a signature")
        signatures.append(Signature(name, blob))
    return text, signatures


def verified(note: str, verifiers: Iterable[Verifier]) -> tuple[str, list[Signature]]:
    """The note's text and the signatures of `verifiers` that hold. Unknown keys are ignored; a known
    key whose signature fails rejects the note, and so does a note no known key signed."""
    text, signatures = parse(note)
    known = {(v.name, v.key_id): v for v in verifiers}
    good = []
    for signature in signatures:
        verifier = known.get((signature.name, signature.key_id))
        if verifier is None:
            continue
        if verifier.kind == COSIGNATURE:
            if len(signature.blob) != 4 + 8 + 64:
                raise NoteError(f"the cosignature of {signature.name!r} is malformed")
            timestamp = struct.unpack(">Q", signature.blob[4:12])[0]
            ok = timestamp < 2**63 and verifier.check(cosigned_message(text, timestamp), signature.blob[12:])
        else:
            ok = len(signature.blob) == 4 + 64 and verifier.check(text.encode(), signature.blob[4:])
        if not ok:
            raise NoteError(f"the signature of {signature.name!r} does not verify")
        good.append(signature)
    if not good:
        raise NoteError("no known key signed this note")
    return text, good


def signed_checkpoint(note: str, verifiers: Iterable[Verifier]) -> Checkpoint:
    """The checkpoint a note carries, once one of `verifiers` (the log's keys) is shown to have signed it
    (raises NoteError otherwise)."""
    return Checkpoint.parse(verified(note, verifiers)[0])


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def text(self) -> str:
        lines = [self.origin, str(self.size), base64.b64encode(self.root).decode(), *self.extensions]
        text = "\n".join(lines) + "\n"
        _check_text(text)
        return text

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        lines = text.split("\n")
        if len(lines) < 4 or lines[-1] != "" or any(line == "" for line in lines[:-1]):
            raise NoteError("a checkpoint is an origin, a size, a root hash and extension lines")
        origin, size, encoded, *extensions = lines[:-1]
        if not re.fullmatch(r"0|[1-9][0-9]{0,18}", size):
            raise NoteError("a checkpoint's size is a decimal with no leading zeroes")
        try:
            root = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            raise NoteError("a checkpoint's root hash is base64") from None
        if not origin or len(root) != 32:
            raise NoteError("a checkpoint names its origin and carries a 32-byte root hash")
        return cls(origin, int(size), root, tuple(extensions))
