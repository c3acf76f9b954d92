"""Checking a receipt (docs/contract.md §13) with public keys only: what `jamu audit verify-proof` runs, and what an
administration can run on its side. Pure: no files, no network.

A receipt holds the entry's bytes and a C2SP tlog-proof: the entry's index, its inclusion proof and the
checkpoint (signed by the log, cosigned by witnesses). It holds when the entry's leaf leads to the
checkpoint's root, the log's key signed that checkpoint, the index is the receipt's seq, and — when
witness keys are given — at least `quorum` distinct witnesses cosigned it. Given a newer checkpoint and
the consistency proof to it, the receipt must also still hold there: an entry later removed or altered
makes that proof fail.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any

from gateway.audit import merkle, notes
from gateway.audit.proofs import parse_proof


class ReceiptInvalid(Exception):
    """The receipt does not prove what it claims; the message says which check failed."""


def check_receipt(
    receipt: Mapping[str, Any],
    log_keys: list[notes.Verifier],
    witness_keys: list[notes.Verifier],
    quorum: int | None = None,
    newer: str | None = None,
    consistency: Mapping[str, Any] | None = None,
    transaction_id: str | None = None,
) -> str:
    """Raises ReceiptInvalid unless the receipt holds; a one-line summary when it does."""
    if quorum is not None and (quorum < 1 or not witness_keys):
        raise ReceiptInvalid("a quorum is at least 1, of the witness keys given")
    try:
        origin, seq, entry, text = receipt["origin"], receipt["seq"], receipt["entry"], receipt["proof"]
        if not (isinstance(origin, str) and type(seq) is int and isinstance(entry, str) and isinstance(text, str)):
            raise TypeError
    except (KeyError, TypeError):
        raise ReceiptInvalid("a receipt carries origin, seq, entry and proof") from None
    try:
        proof = parse_proof(text)
        checkpoint = notes.signed_checkpoint(proof.note, [k for k in log_keys if k.name == origin])
    except notes.NoteError as exc:
        raise ReceiptInvalid(f"the checkpoint: {exc}") from None
    if checkpoint.origin != origin:
        raise ReceiptInvalid(f"the checkpoint is of {checkpoint.origin!r}, the receipt of {origin!r}")
    if proof.index != seq:
        raise ReceiptInvalid(f"the proof is for index {proof.index}, the receipt for seq {seq}")
    try:
        logged = json.loads(entry)
    except ValueError:
        raise ReceiptInvalid("the entry is not the logged event's JSON") from None
    if not isinstance(logged, dict) or logged.get("seq") != seq:
        raise ReceiptInvalid(f"the entry is not the event logged at seq {seq}")
    if transaction_id is not None and logged.get("id") != transaction_id:
        raise ReceiptInvalid(f"the entry is the event {logged.get('id')!r}, not {transaction_id!r}")
    leaf = merkle.leaf_hash(entry.encode())
    try:
        merkle.verify_inclusion(seq, checkpoint.size, leaf, proof.hashes, checkpoint.root)
    except merkle.InvalidProof as exc:
        raise ReceiptInvalid(f"the entry is not in the checkpointed tree: {exc}") from None
    summary = f"{origin} seq {seq} is in the tree of {checkpoint.size} entries the log signed"
    if witness_keys:
        needed = quorum or len({k.name for k in witness_keys})
        try:
            _, good = notes.verified(proof.note, witness_keys)
            names = {s.name for s in good}
        except notes.NoteError as exc:
            if "no known key" not in str(exc):
                raise ReceiptInvalid(f"a cosignature: {exc}") from None
            names = set()
        if len(names) < needed:
            raise ReceiptInvalid(f"{len(names)} witness(es) cosigned the checkpoint, {needed} needed")
        summary += f", cosigned by {', '.join(sorted(names))}"
    if newer is not None:
        summary += _still_held(origin, checkpoint, newer, consistency, log_keys)
    return summary


def _still_held(
    origin: str,
    old: notes.Checkpoint,
    newer: str,
    consistency: Mapping[str, Any] | None,
    log_keys: list[notes.Verifier],
) -> str:
    try:
        later = notes.signed_checkpoint(newer, [k for k in log_keys if k.name == origin])
    except notes.NoteError as exc:
        raise ReceiptInvalid(f"the newer checkpoint: {exc}") from None
    if later.origin != origin:
        raise ReceiptInvalid("the newer checkpoint is of another log")
    try:
        hashes = [base64.b64decode(h, validate=True) for h in (consistency or {}).get("hashes", [])]
    except (binascii.Error, TypeError):
        raise ReceiptInvalid("the consistency proof's hashes are base64") from None
    try:
        merkle.verify_consistency(old.size, later.size, old.root, later.root, hashes)
    except merkle.InvalidProof as exc:
        raise ReceiptInvalid(
            f"the newer checkpoint (size {later.size}) does not extend the receipt's (size {old.size}): {exc}"
        ) from None
    return f"; still held by the checkpoint of {later.size} entries"
