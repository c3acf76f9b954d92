"""The keys of a person's pseudonyms: `subject_hash` in the access log, `subject_ref` given to each
administration (gateway/identity/pseudonyms.py). Read from the data dir, made there when missing."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.identity.pseudonyms import SubjectHasher, SubjectRefs
from gateway.keyfiles import load_or_create_secret
from gateway.settings import Settings


@dataclass
class Pseudonyms:
    subjects: SubjectHasher
    subject_refs: SubjectRefs


def build_pseudonyms(settings: Settings) -> Pseudonyms:
    return Pseudonyms(
        SubjectHasher(load_or_create_secret(settings.subject_key_path)),
        SubjectRefs(load_or_create_secret(settings.pseudonym_key_path)),
    )
