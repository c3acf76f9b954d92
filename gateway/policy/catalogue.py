"""The closed vocabularies every policy is checked against (CONTRACT §2, §3, §4, §12)."""

from __future__ import annotations

SCOPES = (
    "identity:verify",
    "identity:lookup",
    "consent:write",
    "consent:read",
    "audit:read",
    "subject:history",
)

ATTRIBUTES = (
    "nin",
    "family_name",
    "given_names",
    "sex",
    "birth_date",
    "birth_place",
    "father_name",
    "mother_name",
    "nationality",
    "residence_region",
    "residence_cercle",
    "residence_commune",
    "death_date",
    "record_status",
    "displacement_status",
    "displacement_site",
    "idp_household_id",
)

# A claim is compared against the record; the NIN is the key, never a claim.
CLAIMS = tuple(a for a in ATTRIBUTES if a != "nin")

PREDICATES = ("age_at_least", "alive", "resides_in", "registered_idp")

OPERATIONS = ("verify", "lookup")

CLIENT_AUTH_METHODS = ("private_key_jwt", "client_secret_basic")

# Algorithms a client may sign its assertion with, and an external issuer its tokens with.
ASYMMETRIC_ALGORITHMS = ("Ed25519", "EdDSA", "ES256", "PS256", "RS256")
