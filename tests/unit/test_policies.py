"""Policy files: a bad set is refused whole, with messages that name the file, the field and the reason."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gateway.cli import _ensure_demo_keys, main
from gateway.policy.loader import PolicyError, load_policies
from gateway.settings import Settings
from tests.support.keys import jwks_of, new_key
from tests.support.servers import REPO

GOOD_CLIENT = {"client_id": "app-one", "auth": "private_key_jwt", "scopes": ["identity:verify"]}


def _admin(admin_id: str = "alpha", **fields) -> dict:
    doc = {
        "id": admin_id,
        "name": "Alpha",
        "clients": [{**GOOD_CLIENT, "jwks": jwks_of(new_key())}],
        "purposes": {
            "check": {
                "legal_basis": "Loi",
                "consent": "not_required",
                "operations": ["verify"],
                "claims": ["family_name"],
                "predicates": ["alive"],
            }
        },
    }
    doc.update(fields)
    return doc


def _write(directory: Path, name: str, doc: dict | str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    return path


def _problems(directory: Path) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        load_policies(directory)
    return [str(p) for p in caught.value.problems]


def test_a_good_set_loads(tmp_path: Path) -> None:
    _write(tmp_path, "alpha.yaml", _admin())
    policies = load_policies(tmp_path)
    assert list(policies.administrations) == ["alpha"]
    client = policies.client("app-one")
    assert client is not None and client.administration == "alpha" and client.keys is not None
    assert policies.administrations["alpha"].purposes["check"].consent == "not_required"


def test_unknown_field_is_named(tmp_path: Path) -> None:
    doc = _admin()
    doc["purposes"]["check"]["claim_detail"] = True  # typo of claim_details
    path = _write(tmp_path, "alpha.yaml", doc)
    assert _problems(tmp_path) == [f"{path}: purposes.check.claim_detail: unknown field"]


def test_scope_typo_is_named(tmp_path: Path) -> None:
    doc = _admin()
    doc["clients"][0]["scopes"] = ["identity:verfy"]
    path = _write(tmp_path, "alpha.yaml", doc)
    [problem] = _problems(tmp_path)
    assert problem.startswith(f"{path}: clients[0].scopes[0]: 'identity:verfy'")
    assert "identity:verify" in problem


def test_missing_key_is_named(tmp_path: Path) -> None:
    doc = _admin()
    del doc["name"]
    path = _write(tmp_path, "alpha.yaml", doc)
    assert _problems(tmp_path) == [f"{path}: name: required field is missing"]


def test_duplicate_client_across_files(tmp_path: Path) -> None:
    first = _write(tmp_path, "alpha.yaml", _admin())
    second = _write(tmp_path, "beta.yaml", _admin("beta"))
    [problem] = _problems(tmp_path)
    assert problem.startswith(f"{second}: clients[0].client_id: 'app-one' is already a client in {first}")


@pytest.mark.parametrize(
    ("mutate", "field", "reason"),
    [
        (lambda d: d["purposes"]["check"].pop("legal_basis"), "purposes.check", "needs a legal_basis"),
        (lambda d: d["purposes"]["check"].update(predicates=["is_rich"]), "purposes.check.predicates[0]", "'is_rich'"),
        (lambda d: d["purposes"]["check"].update(attributes=["salary"]), "purposes.check.attributes[0]", "'salary'"),
        (lambda d: d["purposes"]["check"].update(operations=["delete"]), "purposes.check.operations[0]", "'delete'"),
        (lambda d: d["purposes"]["check"].update(claims=["nin"]), "purposes.check.claims[0]", "'nin'"),
        (lambda d: d["purposes"]["check"].update(fuzzy_threshold=1.5), "purposes.check.fuzzy_threshold", "1"),
        (lambda d: d.update(rate_limits=[{"name": "b", "limit": 5, "window": "1w"}]), "rate_limits[0].window", "1s"),
        (
            lambda d: d.update(rate_limits=[{"name": "b", "limit": 10_000_000, "window": "1s"}]),
            "rate_limits[0]",
            "at most 1000000 requests per second",
        ),
        (lambda d: d["clients"][0].update(auth="client_secret_basic"), "clients[0]", "secret_hash"),
        (
            lambda d: d["clients"][0].update(jwks={"keys": [new_key().as_dict(private=True)]}),
            "clients[0].jwks",
            "private key material",
        ),
        (
            lambda d: d["clients"][0].update(jwks={"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}),
            "clients[0].jwks",
            "private key material",
        ),
        (lambda d: d["clients"][0].update(jwks={"keys": []}), "clients[0].jwks", "non-empty"),
        (lambda d: d.update(id="gamma"), "id", "must match the file name"),
    ],
)
def test_each_fault_is_located(tmp_path: Path, mutate, field: str, reason: str) -> None:
    doc = _admin()
    mutate(doc)
    path = _write(tmp_path, "alpha.yaml", doc)
    problems = _problems(tmp_path)
    assert any(p.startswith(f"{path}: {field}:") and reason in p for p in problems), problems


def test_secret_hash_format(tmp_path: Path) -> None:
    doc = _admin(
        clients=[
            {"client_id": "s", "auth": "client_secret_basic", "secret_hash": "md5:abc", "scopes": ["identity:verify"]}
        ]
    )
    path = _write(tmp_path, "alpha.yaml", doc)
    [problem] = _problems(tmp_path)
    assert problem.startswith(f"{path}: clients[0].secret_hash:")


def test_duplicate_yaml_key_is_an_error(tmp_path: Path) -> None:
    text = yaml.safe_dump(_admin()) + "name: Second name\n"
    path = _write(tmp_path, "alpha.yaml", text)
    [problem] = _problems(tmp_path)
    assert problem.startswith(f"{path}: is not valid YAML") and "duplicate key 'name'" in problem


def test_missing_jwks_file_says_how_to_make_it(tmp_path: Path) -> None:
    doc = _admin()
    doc["clients"][0] = {**GOOD_CLIENT, "jwks_file": "keys/app-one.jwks.json"}
    path = _write(tmp_path, "alpha.yaml", doc)
    [problem] = _problems(tmp_path)
    assert problem.startswith(f"{path}: clients[0].jwks_file: keys/app-one.jwks.json not found")
    assert "jamu keys generate app-one" in problem


def test_every_problem_of_every_file_is_reported(tmp_path: Path) -> None:
    bad = _admin()
    bad["clients"][0]["scopes"] = ["nope"]
    _write(tmp_path, "alpha.yaml", bad)
    _write(tmp_path, "beta.yaml", "id: beta\nname: [unclosed\n")
    problems = _problems(tmp_path)
    assert len(problems) == 2
    assert {Path(p.split(":")[0]).name for p in problems} == {"alpha.yaml", "beta.yaml"}


def test_repository_demo_set_is_valid_once_keys_exist(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    shutil.copytree(REPO / "policies", policies, ignore=shutil.ignore_patterns("keys"))
    made = _ensure_demo_keys(Settings(policies_dir=policies, data_dir=tmp_path / "var"))
    assert {client for client, _ in made} == {
        "ceni-voter-roll",
        "ceni-roll-sync",
        "canam-enrolment",
        "dnds-idp-assistance",
        "cec-bamako-c3-counter",
        "apdp-audit",
    }
    for _, pem in made:
        assert pem.stat().st_mode & 0o077 == 0, "private keys are owner-only"
    loaded = load_policies(policies)
    assert set(loaded.administrations) == {"ceni", "canam", "dnds", "cec-bamako-c3", "apdp"}
    assert loaded.administrations["ceni"].purposes["voter_roll"].attributes == []
    assert loaded.administrations["ceni"].subscriptions["deaths_for_roll"].attributes == ["nin", "death_date"]
    assert main(["policies", "check", str(policies)]) == 0


def test_policies_check_command_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = _admin()
    doc["clients"][0]["scopes"] = ["audit:reed"]
    path = _write(tmp_path, "alpha.yaml", doc)
    assert main(["policies", "check", str(tmp_path)]) == 1
    assert f"{path}: clients[0].scopes[0]" in capsys.readouterr().err


@pytest.mark.slow
def test_server_refuses_to_start_on_bad_policies(tmp_path: Path) -> None:
    doc = _admin()
    doc["clients"][0]["extra"] = 1
    path = _write(tmp_path / "policies", "alpha.yaml", doc)
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", "--port", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        env={
            "PATH": "/usr/bin:/bin",
            "GATEWAY_POLICIES_DIR": str(tmp_path / "policies"),
            "GATEWAY_DATA_DIR": str(tmp_path / "var"),
        },
        cwd=REPO,
    )
    assert result.returncode == 1
    assert f"{path}: clients[0].extra: unknown field" in result.stderr


def test_purpose_names_follow_the_access_logs_pattern(tmp_path: Path) -> None:
    purpose = {"legal_basis": "Loi", "consent": "not_required", "operations": ["verify"]}
    wide = "roll:2027." + "x" * 54  # 64 characters, with ':' and '.'
    _write(tmp_path / "good", "alpha.yaml", _admin(purposes={wide: purpose}))
    assert wide in load_policies(tmp_path / "good").administrations["alpha"].purposes
    for bad in ("Voter_roll", "x" * 65, "=cmd", "roll/2027"):
        _write(tmp_path / bad.replace("/", "_"), "alpha.yaml", _admin(purposes={bad: purpose}))
        assert _problems(tmp_path / bad.replace("/", "_")), bad
