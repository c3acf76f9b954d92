"""The `jamu` command as an operator runs it: demo, key generation, tokens, serve with workers."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from gateway.cli import main
from gateway.policy.loader import check_client_jwks
from tests.support.keys import load_pem, token_form
from tests.support.servers import REPO, free_port, wait_until

pytestmark = pytest.mark.e2e
JAMU = [sys.executable, "-m", "gateway.cli"]


def test_keys_generate_pair(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "generate", "minsante-app", "--out", str(tmp_path)]) == 0
    pem = tmp_path / "minsante-app.pem"
    assert pem.stat().st_mode & 0o077 == 0
    assert b"PRIVATE KEY" in pem.read_bytes()
    jwks = json.loads((tmp_path / "minsante-app.jwks.json").read_text())
    check_client_jwks(jwks)  # public only, an accepted kind
    assert main(["keys", "generate", "minsante-app", "--out", str(tmp_path)]) == 1, "never overwrites a key"


def test_keys_generate_secret(capsys: pytest.CaptureFixture[str]) -> None:
    import hashlib

    assert main(["keys", "generate", "counter", "--secret"]) == 0
    lines = dict(line.split(":", 1) for line in capsys.readouterr().out.splitlines())
    secret = lines["secret"].strip()
    assert len(secret) >= 40
    assert lines["secret_hash"].strip() == f'"sha256:{hashlib.sha256(secret.encode()).hexdigest()}"'


def test_demo_serves_and_its_walkthrough_works(tmp_path: Path) -> None:
    shutil.copytree(REPO / "policies", tmp_path / "policies", ignore=shutil.ignore_patterns("keys"))
    port = free_port()
    env = {**os.environ, "GATEWAY_POLICIES_DIR": str(tmp_path / "policies"), "GATEWAY_DATA_DIR": str(tmp_path / "var")}
    env.pop("GATEWAY_ISSUER", None)
    log = tmp_path / "demo.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*JAMU, "demo", "--port", str(port)], cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(f"{base}/healthz").status_code == 200, 30, "jamu demo")
        text = log.read_text()
        command = next(line.strip() for line in text.splitlines() if "token ceni-voter-roll" in line)
        args = command.split()[1:]  # the printed line, as a user would paste it, minus the program path
        assert args[:2] == ["token", "ceni-voter-roll"]
        result = subprocess.run([*JAMU, *args], capture_output=True, text=True, env=env, timeout=30)
        assert result.returncode == 0, result.stderr
        body = json.loads(result.stdout)
        assert body["scope"] == "identity:verify" and body["token_type"] == "Bearer"
        assert httpx.get(f"{base}/.well-known/oauth-authorization-server").json()["issuer"] == base
        assert "PRIVATE KEY" not in text
        # The walk-through's verification, against the register the demo seeded, says yes.
        verify = next(line for line in text.splitlines() if '-d \'{"nin"' in line and "claims" in line)
        request = json.loads(verify.split("-d '", 1)[1].rsplit("'", 1)[0])
        answer = httpx.post(
            f"{base}/v1/verify", json=request, headers={"Authorization": f"Bearer {body['access_token']}"}, timeout=10
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["match"] is True
        assert [p["result"] for p in answer.json()["predicates"]] == [True, True, True]
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=20)
    assert not any((tmp_path / "policies" / "keys").glob("*.pem")), "private halves never go next to policies"


def test_serve_with_workers_refuses_to_start_without_redis(tmp_path: Path) -> None:
    env = {**os.environ, "GATEWAY_POLICIES_DIR": str(REPO / "policies"), "GATEWAY_DATA_DIR": str(tmp_path / "var")}
    env.pop("GATEWAY_REDIS_URL", None)
    result = subprocess.run(
        [*JAMU, "serve", "--port", str(free_port()), "--workers", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "GATEWAY_REDIS_URL" in result.stderr and "replay" in result.stderr


def test_serve_with_two_workers(tmp_path: Path, redis_url: str, redis_prefix: str) -> None:
    shutil.copytree(REPO / "policies", tmp_path / "policies", ignore=shutil.ignore_patterns("keys"))
    from gateway.cli import _ensure_demo_keys
    from gateway.settings import Settings

    [(client, pem), *_] = [
        c
        for c in _ensure_demo_keys(Settings(policies_dir=tmp_path / "policies", data_dir=tmp_path / "var"))
        if c[0] == "apdp-audit"
    ]
    port = free_port()
    env = {
        **os.environ,
        "GATEWAY_POLICIES_DIR": str(tmp_path / "policies"),
        "GATEWAY_DATA_DIR": str(tmp_path / "var"),
        "GATEWAY_REDIS_URL": redis_url,
        "GATEWAY_REDIS_KEY_PREFIX": redis_prefix,
    }
    env.pop("GATEWAY_ISSUER", None)
    with open(tmp_path / "serve.log", "wb") as out:
        proc = subprocess.Popen(
            [*JAMU, "serve", "--port", str(port), "--workers", "2"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(f"{base}/healthz").status_code == 200, 40, "jamu serve --workers 2")
        kids = {k["kid"] for _ in range(6) for k in httpx.get(f"{base}/.well-known/jwks.json").json()["keys"]}
        assert len(kids) == 1, "every worker signs with the one key made before they started"
        result = subprocess.run(
            [*JAMU, "token", client, "--key", str(pem), "--issuer", base],
            capture_output=True,
            text=True,
            env=env,
            timeout=30,
        )
        assert result.returncode == 0, result.stderr
        # One assertion, sent over fresh connections (so to either worker): accepted exactly once.
        form = token_form(client, load_pem(pem), f"{base}/oauth2/token")
        statuses = [httpx.post(f"{base}/oauth2/token", data=form, timeout=10).status_code for _ in range(6)]
        assert sorted(statuses) == [200, 401, 401, 401, 401, 401]
        # Each worker writes its own log: its own origin (slot 0, slot 1), each numbered from 0.
        token = httpx.post(
            f"{base}/oauth2/token", data=token_form(client, load_pem(pem), f"{base}/oauth2/token"), timeout=10
        ).json()["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        origins = set()
        for _ in range(40):
            answer = httpx.get(f"{base}/v1/audit/integrity", headers=headers, timeout=10)  # a fresh connection
            if answer.status_code == 429:  # the demo oversight body's limit (10 a second): wait as told
                time.sleep(float(answer.headers["retry-after"]))
                continue
            assert answer.status_code == 200, answer.text
            origins.add(answer.headers["audit-log-position"].rsplit(" ", 1)[0])
            if len(origins) == 2:
                break
        assert {o.rsplit("-", 1)[1] for o in origins} == {"0", "1"}, origins
        deadline = time.monotonic() + 5  # another worker's events are searchable within 2 s
        while True:
            report = httpx.get(f"{base}/v1/audit/integrity", headers=headers, timeout=10).json()
            if {o["origin"] for o in report["origins"]} == origins or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert report["ok"] and {o["origin"] for o in report["origins"]} == origins, report
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    verified = subprocess.run([*JAMU, "audit", "verify"], env=env, capture_output=True, text=True, timeout=60)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert {line.split(": ")[1] for line in verified.stdout.splitlines()} == origins  # both logs, sealed
