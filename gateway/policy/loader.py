"""Loading a directory of policy files into one checked, immutable `PolicySet`.

Every problem in every file is collected and reported as `file: field: reason`, so an operator fixes
a bad deployment in one pass; a set with any problem is refused whole.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import yaml
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from gateway.policy.model import AdministrationPolicy, ClientPolicy

_PRIVATE_JWK_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "k", "oth"})
_ACCEPTED_CURVES = {"OKP": {"Ed25519"}, "EC": {"P-256"}}
_MIN_RSA_BITS = 2048


@dataclass(frozen=True, slots=True)
class PolicyProblem:
    file: str
    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file}: {self.field}: {self.reason}" if self.field else f"{self.file}: {self.reason}"


class PolicyError(Exception):
    """A policy set that cannot be used; `problems` names each file, field and reason."""

    def __init__(self, problems: list[PolicyProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


@dataclass(frozen=True, slots=True)
class RegisteredClient:
    """A client as the token endpoint and bearer check see it."""

    policy: ClientPolicy
    administration: str
    keys: KeySet | None

    @property
    def client_id(self) -> str:
        return self.policy.client_id


@dataclass(frozen=True)
class PolicySet:
    administrations: dict[str, AdministrationPolicy] = field(default_factory=dict)
    clients: dict[str, RegisteredClient] = field(default_factory=dict)

    def client(self, client_id: str) -> RegisteredClient | None:
        return self.clients.get(client_id)


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML mapping with a key twice is an error, not a silent last-one-wins."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    keys: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if isinstance(key, Hashable) and key in keys:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        if isinstance(key, Hashable):
            keys.add(key)
    return loader.construct_mapping(node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _field_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _reason(error: ErrorDetails) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        return "required field is missing"
    message = str(error["msg"]).removeprefix("Value error, ")
    given = error.get("input")
    if kind in {"literal_error", "string_pattern_mismatch"} and isinstance(given, str) and len(given) <= 80:
        return f"{given!r}: {message}"
    return message


def check_client_jwks(jwks: Any) -> KeySet:
    """Public keys only, of the kinds and sizes we accept; raises ValueError naming the fault."""
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list) or not jwks["keys"]:
        raise ValueError("must be a JWK Set with a non-empty 'keys' list")
    for index, key in enumerate(jwks["keys"]):
        if not isinstance(key, dict):
            raise ValueError(f"keys[{index}] is not an object")
        if _PRIVATE_JWK_MEMBERS & key.keys():
            raise ValueError(f"keys[{index}] contains private key material; publish the public key only")
        kty = key.get("kty")
        if kty == "RSA":
            modulus = key.get("n", "")
            if not isinstance(modulus, str) or len(modulus) * 6 < _MIN_RSA_BITS - 8:
                raise ValueError(f"keys[{index}]: RSA keys must be at least {_MIN_RSA_BITS} bits")
        elif kty in _ACCEPTED_CURVES:
            if key.get("crv") not in _ACCEPTED_CURVES[kty]:
                raise ValueError(f"keys[{index}]: curve {key.get('crv')!r} is not accepted for {kty}")
        else:
            raise ValueError(f"keys[{index}]: key type {kty!r} is not accepted (OKP, EC or RSA)")
    try:
        return KeySet.import_key_set(cast(Any, jwks))  # each key's fields checked above
    except (JoseError, ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"not a valid JWK Set: {exc}") from None


def _load_file(path: Path) -> tuple[AdministrationPolicy | None, list[PolicyProblem], dict[str, Any]]:
    name = str(path)
    problems: list[PolicyProblem] = []
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506
    except (OSError, UnicodeDecodeError) as exc:
        return None, [PolicyProblem(name, "", f"cannot be read: {exc}")], {}
    except yaml.YAMLError as exc:
        return None, [PolicyProblem(name, "", f"is not valid YAML: {exc}".replace("\n", " "))], {}
    if not isinstance(raw, dict):
        return None, [PolicyProblem(name, "", "must be a mapping with id, name, clients, purposes")], {}
    try:
        admin = AdministrationPolicy.model_validate(raw)
    except ValidationError as exc:
        problems = [PolicyProblem(name, _field_path(e["loc"]), _reason(e)) for e in exc.errors()]
        return None, problems, {}
    if admin.id != path.stem:
        problems.append(PolicyProblem(name, "id", f"{admin.id!r} must match the file name {path.stem!r}"))
    keysets: dict[str, KeySet] = {}
    for index, client in enumerate(admin.clients):
        if client.auth != "private_key_jwt":
            continue
        where = f"clients[{index}].jwks" if client.jwks is not None else f"clients[{index}].jwks_file"
        jwks: Any = client.jwks
        if client.jwks_file is not None:
            jwks_path = (path.parent / client.jwks_file).resolve()
            try:
                jwks = yaml.safe_load(jwks_path.read_text(encoding="utf-8"))
            except FileNotFoundError:
                problems.append(
                    PolicyProblem(
                        name,
                        where,
                        f"{client.jwks_file} not found (create it with "
                        f"`jamu keys generate {client.client_id}`, or run `jamu demo` for the demo set)",
                    )
                )
                continue
            except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
                problems.append(PolicyProblem(name, where, f"{client.jwks_file} cannot be read: {exc}"))
                continue
        try:
            keysets[client.client_id] = check_client_jwks(jwks)
        except ValueError as exc:
            problems.append(PolicyProblem(name, where, str(exc)))
    return admin, problems, keysets


def load_policies(directory: Path) -> PolicySet:
    """Read every `*.yaml`/`*.yml` in `directory`; raise PolicyError listing all problems."""
    if not directory.is_dir():
        raise PolicyError([PolicyProblem(str(directory), "", "is not a directory")])
    files = sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")])
    problems: list[PolicyProblem] = []
    administrations: dict[str, AdministrationPolicy] = {}
    admin_files: dict[str, Path] = {}
    clients: dict[str, RegisteredClient] = {}
    client_files: dict[str, Path] = {}
    for path in files:
        admin, file_problems, keysets = _load_file(path)
        problems += file_problems
        if admin is None:
            continue
        if admin.id in administrations:
            problems.append(
                PolicyProblem(
                    str(path), "id", f"administration {admin.id!r} is already defined in {admin_files[admin.id]}"
                )
            )
            continue
        administrations[admin.id] = admin
        admin_files[admin.id] = path
        for index, client in enumerate(admin.clients):
            if client.client_id in clients:
                problems.append(
                    PolicyProblem(
                        str(path),
                        f"clients[{index}].client_id",
                        f"{client.client_id!r} is already a client in {client_files[client.client_id]}",
                    )
                )
                continue
            clients[client.client_id] = RegisteredClient(client, admin.id, keysets.get(client.client_id))
            client_files[client.client_id] = path
    if problems:
        raise PolicyError(problems)
    return PolicySet(administrations=administrations, clients=clients)
