"""C2SP signed notes, checkpoints and cosignatures: the Go reference note signed and verified byte for
byte, vkeys checked, tampering and foreign keys refused, and a checkpoint cosigned by a witness."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.audit.notes import (
    COSIGNATURE,
    Checkpoint,
    Cosigner,
    NoteError,
    Signer,
    Verifier,
    parse,
    sign,
    verified,
)

# golang.org/x/mod/sumdb/note's documented example: its verifier key, private key seed and signed note.
PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
PETER_SEED = base64.b64decode("AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz")[1:]
PETER_TEXT = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
PETER_NOTE = PETER_TEXT + (
    "\n\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZ"
    "SNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)


def test_the_reference_note_is_signed_and_verified_byte_for_byte() -> None:
    signer = Signer("PeterNeumann", Ed25519PrivateKey.from_private_bytes(PETER_SEED))
    assert signer.verifier.vkey() == PETER_VKEY
    assert sign(PETER_TEXT, signer) == PETER_NOTE  # Ed25519 is deterministic
    text, good = verified(PETER_NOTE, [Verifier.parse(PETER_VKEY)])
    assert text == PETER_TEXT and [s.name for s in good] == ["PeterNeumann"]


def test_tampering_and_unknown_keys_are_refused() -> None:
    peter = Verifier.parse(PETER_VKEY)
    with pytest.raises(NoteError, match="does not verify"):
        verified(PETER_NOTE.replace("problem,", "problem!"), [peter])
    other = Signer("someone.example/log", Ed25519PrivateKey.generate())
    with pytest.raises(NoteError, match="no known key"):
        verified(PETER_NOTE, [other.verifier])
    both = sign(PETER_TEXT, other, Signer("PeterNeumann", Ed25519PrivateKey.from_private_bytes(PETER_SEED)))
    assert [s.name for s in verified(both, [peter])[1]] == ["PeterNeumann"]  # the unknown one is ignored
    impostor = sign(PETER_TEXT, Signer("PeterNeumann", Ed25519PrivateKey.generate()))
    with pytest.raises(NoteError):  # same name, another key: another key ID, so unknown
        verified(impostor, [peter])
    for bad in (
        PETER_TEXT,
        PETER_TEXT + "\n",
        PETER_NOTE.replace("\u2014", "-"),
        PETER_NOTE.replace("\n\n", "\n"),
        PETER_NOTE + "\u2014 x !!!\n",
        PETER_NOTE.replace("then", "\x07then"),
    ):
        with pytest.raises(NoteError):
            parse(bad)


@pytest.mark.parametrize(
    "vkey",
    [
        PETER_VKEY.replace("c74f20a3", "c74f20a4"),  # key ID of another key
        PETER_VKEY.replace("+ARpc", "+AhpC"),  # another type
        "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "PeterNeumann+c74f20a3",
        "PeterNeumann+zz+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
    ],
)
def test_a_malformed_or_inconsistent_vkey_is_refused(vkey: str) -> None:
    with pytest.raises(NoteError):
        Verifier.parse(vkey)


def test_a_checkpoint_round_trips_and_a_witness_cosigns_it() -> None:
    log = Signer("jamu.example.ml/access-log/jamu-0-0", Ed25519PrivateKey.generate())
    checkpoint = Checkpoint(log.name, 20852163, bytes(range(32)))
    text = checkpoint.text()
    assert text == f"{log.name}\n20852163\n{base64.b64encode(bytes(range(32))).decode()}\n"
    assert Checkpoint.parse(text) == checkpoint
    witness = Cosigner("apdp.example.ml/witness", Ed25519PrivateKey.generate())
    assert Verifier.parse(witness.verifier.vkey()).kind == COSIGNATURE
    note = sign(text, log) + witness.signature_line(text, 1_679_315_147)
    _, good = verified(note, [log.verifier, witness.verifier])
    assert [s.name for s in good] == [log.name, witness.name]
    assert good[1].blob[4:12] == (1_679_315_147).to_bytes(8, "big")
    earlier = note.replace(witness.signature_line(text, 1_679_315_147), witness.signature_line(text, 1))
    assert verified(earlier, [witness.verifier])  # the same checkpoint cosigned at another time holds too
    moved = sign(text, log) + witness.signature_line(Checkpoint(log.name, 20852164, bytes(32)).text(), 5)
    with pytest.raises(NoteError, match="does not verify"):  # signed over another checkpoint
        verified(moved, [log.verifier, witness.verifier])
    for bad in (
        "origin\n01\n" + base64.b64encode(bytes(32)).decode() + "\n",
        "origin\n1\nnot-base64\n",
        "origin\n1\n" + base64.b64encode(bytes(31)).decode() + "\n",
        "origin\n1\n",
    ):
        with pytest.raises(NoteError):
            Checkpoint.parse(bad)
