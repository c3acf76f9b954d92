"""The `jamu` command (docs/contract.md §11)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import os
import secrets
import sqlite3
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import yaml
from joserfc import jwt
from joserfc.jwk import ECKey, Key, OKPKey
from pydantic import ValidationError

from gateway.audit import notes, offline, receipts
from gateway.audit.chain import key_id
from gateway.audit.origin import (
    current_origin,
    legacy_origin,
    local_logs,
    log_directory,
    log_origin,
    rotation_tag,
    successor_origin,
)
from gateway.audit.record import rfc3339
from gateway.audit.rows import EventFilter
from gateway.audit.segment_store import hold_writer_lock, last_checkpoint, read_origin, read_vkey
from gateway.audit.witness import load_witnesses
from gateway.auth.keys import (
    algorithm_of,
    generate_private_key,
    load_signing_keys,
    public_jwk,
    rotate_signing_key,
)
from gateway.bulk.client import JobError, JobsClient
from gateway.connectors.importer import import_people
from gateway.connectors.population import seed_register
from gateway.datadir import secure_data_dir
from gateway.keyfiles import load_or_create_ed25519
from gateway.observability import logging_config
from gateway.policy.loader import PolicyError, load_policies
from gateway.settings import Settings
from gateway.storage.database import database_url
from gateway.witness_server import create_witness_app, init_witness, parse_log_arguments


def _settings() -> Settings:
    return Settings()


def app_from_env() -> Any:
    """uvicorn factory for `jamu serve --workers N`: each worker builds its app from the environment."""
    from gateway.app import create_app

    return create_app(_settings())


def _prepare(settings: Settings) -> None:
    """Check policies and make the signing key once, in the parent, before any worker starts."""
    load_policies(settings.policies_dir)
    load_signing_keys(
        settings.signing_key_path,
        settings.keys_dir,
        settings.signing_alg,
        retire_after_s=settings.token_lifetime_s + settings.clock_leeway_s,
    )


def _serve(host: str, port: int, workers: int) -> int:
    import uvicorn

    if workers > 1 and not os.environ.get("GATEWAY_REDIS_URL"):
        # Each worker would keep its own replay guard and limits: one client assertion accepted twice,
        # a limit multiplied by the number of workers.
        print(
            "jamu: refusing to start: --workers N > 1 needs GATEWAY_REDIS_URL, so that the workers share "
            "the client-assertion replay guard and the rate limits",
            file=sys.stderr,
        )
        return 2

    # Each worker writes its own log; with an explicit origin, the workers' origins get /<slot>.
    os.environ["GATEWAY_WORKERS"] = str(workers)
    # The scraper's listener, when asked for, listens where the gateway does.
    os.environ.setdefault("GATEWAY_METRICS_HOST", host)
    if "GATEWAY_ISSUER" not in os.environ:
        # Unset issuer: the address we serve on, so tokens' aud matches what clients call.
        public_host = "127.0.0.1" if host in {"0.0.0.0", "::"} else host  # noqa: S104
        os.environ["GATEWAY_ISSUER"] = f"http://{public_host}:{port}"
    settings = _settings()
    try:
        _prepare(settings)
    except PolicyError as exc:
        print(f"jamu: refusing to start, the policies are not valid:\n{exc}", file=sys.stderr)
        return 1
    uvicorn.run(
        "gateway.cli:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        access_log=False,
        server_header=False,
        proxy_headers=False,  # X-Forwarded-For is believed only from GATEWAY_TRUSTED_PROXIES, by the gateway
        timeout_graceful_shutdown=20,
        log_level="info",
        log_config=logging_config(settings.log_format),
    )
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    return _serve(args.host, args.port, args.workers)


def write_client_keys(client_id: str, private_dir: Path, jwks_path: Path, alg: str = "Ed25519") -> Path:
    """A client key pair: the private PEM (owner-only) and the public JWKS to put in a policy."""
    key = generate_private_key("ES256" if alg == "ES256" else "Ed25519")
    private_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    pem_path = private_dir / f"{client_id}.pem"
    pem_path.touch(mode=0o600, exist_ok=False)
    pem_path.write_bytes(key.as_pem(private=True))
    jwks_path.parent.mkdir(parents=True, exist_ok=True)
    jwks_path.write_text(json.dumps({"keys": [public_jwk(key, algorithm_of(key))]}, indent=2) + "\n")
    return pem_path


def cmd_keys_generate(args: argparse.Namespace) -> int:
    if args.secret:
        secret = secrets.token_urlsafe(32)
        digest = hashlib.sha256(secret.encode()).hexdigest()
        print(f"client_id:   {args.client_id}")
        print(f"secret:      {secret}")
        print(f'secret_hash: "sha256:{digest}"')
        print("Give the secret to the client once; put only secret_hash in the policy.", file=sys.stderr)
        return 0
    out = Path(args.out)
    jwks_path = out / f"{args.client_id}.jwks.json"
    try:
        pem = write_client_keys(args.client_id, out, jwks_path, args.alg)
    except FileExistsError:
        print(f"jamu: {out / (args.client_id + '.pem')} already exists; not overwriting", file=sys.stderr)
        return 1
    print(f"private key: {pem}  (keep it with the client; never in a policy)")
    print(f"public JWKS: {jwks_path}  (reference it from the policy as jwks_file)")
    return 0


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    settings = _settings()
    kid = rotate_signing_key(settings.signing_key_path, settings.signing_alg)
    load_signing_keys(
        settings.signing_key_path,
        settings.keys_dir,
        settings.signing_alg,
        retire_after_s=settings.token_lifetime_s + settings.clock_leeway_s,
    )
    print(
        f"new signing key {kid}; restart the gateway. Old public keys stay published until their "
        f"tokens expire ({settings.token_lifetime_s + settings.clock_leeway_s} s)."
    )
    return 0


def cmd_alerts_check(args: argparse.Namespace) -> int:
    """The console's alert rules file, checked as the gateway checks it at start (exit 1 naming each fault)."""
    from gateway.console.alerts import RULES, load_alert_rules

    path = Path(args.file) if args.file else _settings().alerts_file
    try:
        rules = load_alert_rules(path)
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    enabled = [name for name in RULES if getattr(rules, name).enabled]
    print(f"{path or 'built-in thresholds'}: {len(enabled)} rules enabled ({', '.join(enabled)}): valid")
    return 0


def cmd_policies_check(args: argparse.Namespace) -> int:
    directory = Path(args.dir) if args.dir else _settings().policies_dir
    try:
        policies = load_policies(directory)
    except PolicyError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    purposes = sum(len(a.purposes) for a in policies.administrations.values())
    print(
        f"{directory}: {len(policies.administrations)} administrations, {len(policies.clients)} clients, "
        f"{purposes} purposes: valid"
    )
    return 0


def _load_private_key(path: Path) -> Key:
    pem = path.read_bytes()
    try:
        return OKPKey.import_key(pem)
    except Exception:  # an EC key
        return ECKey.import_key(pem)


def client_assertion(client_id: str, key: Key, audience: str, lifetime_s: int = 60) -> str:
    now = int(time.time())
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": audience,
        "iat": now,
        "exp": now + lifetime_s,
        "jti": secrets.token_urlsafe(16),
    }
    alg = algorithm_of(key)
    return jwt.encode({"alg": alg, "kid": key.thumbprint()}, claims, key, algorithms=[alg])


def _token_response(issuer: str, client_id: str, key_path: Path, scope: str | None = None) -> httpx.Response:
    form = {
        "grant_type": "client_credentials",
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": client_assertion(client_id, _load_private_key(key_path), f"{issuer}/oauth2/token"),
    }
    if scope:
        form["scope"] = scope
    return httpx.post(f"{issuer}/oauth2/token", data=form, timeout=10)


def cmd_token(args: argparse.Namespace) -> int:
    issuer = (args.issuer or _settings().issuer).rstrip("/")
    response = _token_response(issuer, args.client_id, Path(args.key), args.scope)
    if response.status_code != 200:
        print(response.text, file=sys.stderr)
        return 1
    body = response.json()
    print(json.dumps(body, indent=2) if args.json else body["access_token"])
    return 0


def _token_source(issuer: str, client: str, key: str, scope: str, error: type[Exception]) -> Callable[[], str]:
    """A fresh access token each call, for commands that outlive one; `error` says why there is none."""

    def token() -> str:
        response = _token_response(issuer, client, Path(key), scope)
        if response.status_code != 200:
            raise error(f"no token for {client}: HTTP {response.status_code} {response.text[:200]}")
        return str(response.json()["access_token"])

    return token


def _jobs_client(args: argparse.Namespace) -> JobsClient:
    issuer = (args.gateway or _settings().issuer).rstrip("/")
    return JobsClient(issuer, _token_source(issuer, args.client, args.key, "identity:verify", JobError))


def _predicate(text: str) -> dict[str, Any]:
    """`alive`, `age_at_least=18`, `age_at_least=18@2027-06-01`, `resides_in=Kati`."""
    name, _, value = text.partition("=")
    predicate: dict[str, Any] = {"name": name}
    if value:
        value, _, as_of = value.partition("@")
        predicate["value"] = int(value) if value.isdigit() else value
        if as_of:
            predicate["as_of"] = as_of
    return predicate


def cmd_jobs_worker(args: argparse.Namespace) -> int:
    """A process that runs bulk jobs beside the interactive replicas, at the lowest CPU priority (Linux
    SCHED_IDLE, else nice 19): it takes only the CPU they leave. It serves the API too, for its probes;
    keep it out of the load balancer."""
    os.environ["GATEWAY_BULK_WORKERS"] = str(args.concurrency)
    if hasattr(os, "sched_setscheduler") and hasattr(os, "SCHED_IDLE"):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # inherited by uvicorn's workers
    else:
        os.nice(19)
    return _serve(args.host, args.port, args.workers)


def cmd_jobs(args: argparse.Namespace) -> int:
    try:
        client = _jobs_client(args)
        try:
            return _jobs(args, client)
        finally:
            client.close()
    except (JobError, httpx.HTTPError, OSError) as exc:
        print(f"jamu jobs: {exc}", file=sys.stderr)
        return 1


def _jobs(args: argparse.Namespace, client: JobsClient) -> int:
    if args.jobs_command == "submit":
        path = Path(args.file)
        fmt = args.format or ("ndjson" if path.suffix in (".ndjson", ".jsonl") else "csv")
        spec: dict[str, Any] = {
            "purpose": args.purpose,
            "format": fmt,
            "claims": [c for c in (args.claims or "").split(",") if c],
            "predicates": [_predicate(p) for p in args.predicate or ()],
        }
        if args.as_of:
            spec["as_of"] = args.as_of
        job = client.submit(path, spec, key=args.idempotency_key)
        print(f"job {job['id']}", file=sys.stderr)
        status = client.follow(job["id"], None if args.quiet else sys.stderr)
        if status["status"] == "completed":
            out = Path(args.out or f"{path}.results.{fmt}")
            client.download(job["id"], "results", out)
            if status["errors"]:
                client.download(job["id"], "errors", out.with_name(out.name.replace(".results.", ".errors.")))
            print(
                json.dumps(
                    {
                        "id": job["id"],
                        "status": status["status"],
                        "total": status["total"],
                        "errors": status["errors"],
                        "results": str(out),
                    }
                )
            )
            return 0
        print(json.dumps({"id": job["id"], "status": status["status"], "reason": status.get("reason")}))
        return 1
    if args.jobs_command == "status":
        print(json.dumps(client.status(args.job_id), indent=2))
        return 0
    if args.jobs_command == "cancel":
        print(json.dumps(client.cancel(args.job_id), indent=2))
        return 0
    client.download(args.job_id, "errors" if args.errors else "results", Path(args.out))
    return 0


def cmd_events_declare(args: argparse.Namespace) -> int:
    """Each line of a JSON Lines file is one declaration. Its Idempotency-Key is derived from the file's
    name, the line's number and its text, so submitting the file again (after a cut connection) answers
    the first answers and changes nothing, while the same line in another file is a new declaration."""
    issuer = (args.gateway or _settings().issuer).rstrip("/")
    token = _token_source(issuer, args.client, args.key, "register:declare", OSError)
    refused = 0
    try:
        with httpx.Client(base_url=issuer, timeout=30) as http, open(args.file, "rb") as lines:
            http.headers["Authorization"] = f"Bearer {token()}"
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                origin = f"{Path(args.file).name}:{number}:".encode()
                key = f"{args.key_prefix}{hashlib.sha256(origin + line.strip()).hexdigest()}"
                headers = {"Idempotency-Key": key, "Content-Type": "application/json"}
                response = http.post("/v1/declarations", content=line.strip(), headers=headers)
                if response.status_code == 401:
                    http.headers["Authorization"] = f"Bearer {token()}"
                    response = http.post("/v1/declarations", content=line.strip(), headers=headers)
                outcome: dict[str, Any] = {"line": number, "status": response.status_code}
                try:
                    doc = response.json()
                except ValueError:
                    doc = {"detail": response.text[:200]}
                if response.status_code == 201:
                    outcome.update({k: doc.get(k) for k in ("event_id", "nin", "version")})
                else:
                    refused += 1
                    outcome.update({k: doc[k] for k in ("code", "reason", "detail", "errors") if k in doc})
                print(json.dumps(outcome, ensure_ascii=False))
    except (httpx.HTTPError, OSError) as exc:
        print(f"jamu events declare: {exc}", file=sys.stderr)
        return 1
    return 1 if refused else 0


def _ensure_demo_keys(settings: Settings) -> list[tuple[str, Path]]:
    """Make a key pair for every demo client whose public JWKS is missing; private halves stay in the data dir."""
    made: list[tuple[str, Path]] = []
    private_dir = settings.data_dir / "demo-clients"
    for path in sorted(settings.policies_dir.glob("*.yaml")):
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for client in raw.get("clients", []) or []:
            jwks_file, client_id = client.get("jwks_file"), client.get("client_id")
            if not jwks_file or not client_id:
                continue
            pem = private_dir / f"{client_id}.pem"
            jwks_path = path.parent / jwks_file
            if not jwks_path.exists() or not pem.exists():
                pem.unlink(missing_ok=True)
                write_client_keys(client_id, private_dir, jwks_path)
            made.append((client_id, pem))
    return made


DEMO_POPULATION = 20_000
DEMO_SEED = 2026


def _register_path(settings: Settings) -> Path:
    return settings.data_dir / "register.db"


def _demo_person(register: Path) -> dict[str, Any]:
    """An active person with a full birth date, for the walk-through."""
    with sqlite3.connect(f"file:{register}?mode=ro", uri=True) as connection:
        connection.row_factory = sqlite3.Row
        row = connection.execute(
            "SELECT * FROM people WHERE record_status = 'active' AND length(birth_date) = 10 "
            "AND birth_date < '2000' ORDER BY nin LIMIT 1"
        ).fetchone()
    return dict(row)


def cmd_demo(args: argparse.Namespace) -> int:
    settings = _settings()
    clients = _ensure_demo_keys(settings)
    register = _register_path(settings)
    if not register.exists():
        print(f"seeding a synthetic register of {DEMO_POPULATION} people (seed {DEMO_SEED}) in {register}")
        seed_register(register, DEMO_POPULATION, DEMO_SEED)
    person = _demo_person(register)
    keys = dict(clients)
    base = f"http://{args.host}:{args.port}"

    def token(client_id: str) -> str:
        return f"$(.venv/bin/jamu token {client_id} --key {keys.get(client_id, 'KEY.pem')} --issuer {base})"

    verify = json.dumps(
        {
            "nin": person["nin"],
            "purpose": "voter_roll",
            "claims": {
                "family_name": person["family_name"],
                "given_names": person["given_names"],
                "birth_date": person["birth_date"],
            },
            "predicates": [
                {"name": "age_at_least", "value": 18},
                {"name": "alive"},
                {"name": "resides_in", "value": person["residence_region"]},
            ],
        },
        ensure_ascii=False,
    )
    lines = [
        "",
        "Jamu demo: synthetic data only. Client keys are in " + str(settings.data_dir / "demo-clients"),
        "",
        "  # discovery and keys",
        f"  curl -s {base}/.well-known/oauth-authorization-server",
        f"  curl -s {base}/.well-known/jwks.json",
        "  # a token for a client (private_key_jwt; `jamu token` signs the client assertion)",
    ]
    for client_id, pem in clients:
        lines.append(f"  .venv/bin/jamu token {client_id} --key {pem} --issuer {base} --json")
    lines += [
        "  TOKEN=$(.venv/bin/jamu token "
        + (clients[0][0] if clients else "CLIENT")
        + " --key "
        + (str(clients[0][1]) if clients else "KEY.pem")
        + f" --issuer {base})",
        "  # an unknown client is refused with problem+json, and the refusal is logged",
        f"  curl -s -X POST {base}/oauth2/token -u nobody:wrong -d grant_type=client_credentials",
        f"  curl -s {base}/readyz",
        "  # the electoral commission verifies a voter (booleans only, nothing released)",
        f'  curl -s {base}/v1/verify -H "Authorization: Bearer {token("ceni-voter-roll")}" \\',
        f"       -H 'Content-Type: application/json' -d '{verify}'",
        "  # it may not read attributes: it holds no lookup scope, and its purpose grants none",
        f'  curl -s {base}/v1/lookup -H "Authorization: Bearer {token("ceni-voter-roll")}" \\',
        f'       -H \'Content-Type: application/json\' -d \'{{"nin": "{person["nin"]}", '
        f'"purpose": "voter_roll", "attributes": ["birth_place"]}}\'',
        "  # a civil-registration centre declares a birth: the register gives the child a NIN",
        f'  curl -s {base}/v1/declarations -H "Authorization: Bearer {token("cec-bamako-c3-counter")}" \\',
        "       -H 'Idempotency-Key: demo-birth-1' -H 'Content-Type: application/json' -d '{\"type\": \"birth\", "
        '"data": {"family_name": "Diarra", "given_names": "Awa", "sex": "F", '
        '"birth_date": "2026-11-30", "birth_place": "Bamako"}}\'',
        "  # the electoral commission pulls the deaths it may know of, to strike voters (docs/life-events.md)",
        f"  curl -s '{base}/v1/events?subscription=deaths_for_roll' "
        f'-H "Authorization: Bearer {token("ceni-roll-sync")}"',
        "  # the data-protection authority sees who looked at this person",
        f'  curl -s {base}/v1/audit/search -H "Authorization: Bearer {token("apdp-audit")}" \\',
        f"       -H 'Content-Type: application/json' -d '{{\"nin\": \"{person['nin']}\"}}'",
        f"  open {base}/docs",
        *_demo_officer(settings, base),
        "",
    ]
    print("\n".join(lines), flush=True)
    return _serve(args.host, args.port, 1)


def _demo_officer(settings: Settings, base: str) -> list[str]:
    """A console account for the demo, made once: its password and TOTP secret are printed then only."""
    from gateway.console import officer_store
    from gateway.console.accounts import AccountError
    from gateway.storage.database import create_engine, migrate

    async def add() -> Any:
        engine = create_engine(database_url(settings.database_url, settings.data_dir), schema=settings.database_schema)
        try:
            await migrate(engine, settings.database_schema)
            return await officer_store(settings, engine).add("demo-officer", "officer")
        except AccountError:
            return None
        finally:
            await engine.dispose()

    credentials = asyncio.run(add())
    lines = ["  # the officers' console (docs/console.md): sign in as demo-officer"]
    if credentials is None:
        return [
            *lines,
            "  # (made on an earlier run; `jamu officers reset demo-officer` prints new credentials)",
            f"  open {base}/console/",
        ]
    return [
        *lines,
        f"  #   password: {credentials.password}",
        f"  #   TOTP secret: {credentials.otpauth_uri} (any authenticator app), or the current code:",
        f"  .venv/bin/python -c \"import pyotp; print(pyotp.parse_uri('{credentials.otpauth_uri}').now())\"",
        f"  open {base}/console/",
    ]


def cmd_register_seed(args: argparse.Namespace) -> int:
    settings = _settings()
    register = _register_path(settings)
    started = time.perf_counter()
    count = seed_register(register, args.count, args.seed)
    print(f"{count} people seeded into {register} in {time.perf_counter() - started:.1f} s (seed {args.seed})")
    return 0


def cmd_register_import(args: argparse.Namespace) -> int:
    settings = _settings()
    try:
        report = import_people(Path(args.file), _register_path(settings), fmt=args.format, skip_bad=args.skip_bad_lines)
    except OSError as exc:
        print(f"jamu register import: {args.file}: {exc.strerror}", file=sys.stderr)
        return 2
    for line, reason in report.rejected:
        print(f"{args.file}:{line}: {reason}", file=sys.stderr)
    if report.rejected_count > len(report.rejected):
        print(f"… and {report.rejected_count - len(report.rejected)} more rejected lines", file=sys.stderr)
    if report.rejected_count and not args.skip_bad_lines:
        print(
            f"nothing imported: {report.rejected_count} of {report.read} lines rejected "
            "(--skip-bad-lines imports the others)",
            file=sys.stderr,
        )
        return 1
    print(f"{report.imported} people imported, {report.rejected_count} lines rejected")
    return 0


def _timestamp(value: str) -> str:
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an RFC 3339 time: {value!r}") from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"give a time zone (e.g. Z): {value!r}")
    return rfc3339(moment)


def _audit_database(args: argparse.Namespace, settings: Settings) -> tuple[str, str | None]:
    return (
        database_url(args.database_url or settings.database_url, settings.data_dir),
        args.schema or settings.database_schema,
    )


def _index_database(args: argparse.Namespace, settings: Settings) -> str | None:
    """The index database, or None when the data dir holds none (segments are checked alone)."""
    url, _ = _audit_database(args, settings)
    try:
        offline.require_database(url)
    except offline.OfflineError:
        if args.database_url:
            raise
        return None
    return url


def _witnessing(args: argparse.Namespace, settings: Settings) -> offline.Witnessing | None:
    """Witness keys given on the command line (with `--quorum`, default all of them), else the witnesses
    file's."""
    if args.witness_vkeys:
        try:
            verifiers = [notes.Verifier.parse(v) for v in args.witness_vkeys]
        except notes.NoteError as exc:
            raise offline.OfflineError(f"--witness-vkey: {exc}") from None
        if any(v.kind != notes.COSIGNATURE for v in verifiers):
            raise offline.OfflineError("--witness-vkey: a witness's vkey is a cosignature key (type 0x04)")
        quorum = args.quorum or len({v.name for v in verifiers})
        return offline.Witnessing(verifiers, quorum)
    if settings.witnesses_file is not None:
        try:
            witnesses = load_witnesses(settings.witnesses_file)
        except ValueError as exc:
            raise offline.OfflineError(str(exc)) from None
        return offline.Witnessing(witnesses.verifiers(), args.quorum or witnesses.quorum)
    return None


def _checkpoint_text(path: Path) -> str:
    """A checkpoint kept elsewhere: a signed note, or a receipt (its proof's checkpoint)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise offline.OfflineError(f"{path}: {exc}") from None
    if text.lstrip().startswith("{"):
        try:
            return str(json.loads(text)["proof"]).split("\n\n", 1)[1]
        except (ValueError, KeyError, TypeError, IndexError):
            raise offline.OfflineError(f"{path}: not a receipt") from None
    return text


def cmd_audit_verify(args: argparse.Namespace) -> int:
    settings = _settings()
    log_root = args.log_dir or settings.log_dir
    try:
        url = _index_database(args, settings)
        keys = (
            offline.load_public_keys(args.public_keys)
            if args.public_keys
            else offline.public_keys_of(settings.checkpoint_key_path)
        )
        result = asyncio.run(
            offline.verify(
                url,
                args.schema or settings.database_schema,
                log_root,
                keys,
                require_sealed=not args.allow_unsealed,
                legacy_name=legacy_origin(settings.issuer),
                witnessing=_witnessing(args, settings),
                outside=[_checkpoint_text(Path(p)) for p in args.checkpoints or []],
            )
        )
    except offline.OfflineError as exc:
        print(f"jamu audit verify: {exc}", file=sys.stderr)
        return 2
    if not result.origins:
        print(f"jamu audit verify: no access log under {log_root} or in the database", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result.as_dict()))
        return 0 if result.ok else 1
    for item in result.origins:
        report = item.report
        if report.ok:
            sealed = report.last_checkpoint["seq"] if report.last_checkpoint else None
            cosigned = (item.tree or {}).get("cosigned")
            witnessed = (
                ""
                if not cosigned
                else (
                    f", cosigned at size {cosigned['size']} by {', '.join(cosigned['witnesses']) or 'no known witness'}"
                    f"{'' if cosigned['quorum'] else ' (no quorum)'}"
                )
            )
            print(
                f"ok: {item.origin}: {report.events_checked} events, last seq {report.last_seq}, "
                f"sealed up to seq {sealed} ({item.source}){witnessed}"
            )
    problems = result.problems()
    if problems:
        first = problems[0]
        print(f"BROKEN at {first['origin']} seq {first['seq']}: {first['problem']}")
        for problem in problems[1:]:
            print(f"  also at {problem['origin']} seq {problem['seq']}: {problem['problem']}")
    return 0 if result.ok else 1


def cmd_audit_verify_proof(args: argparse.Namespace) -> int:
    """A receipt (docs/contract.md §13) checked with public keys only: the entry's leaf leads to the checkpoint's
    root, the log signed it, and (with witness keys) a quorum cosigned it; with `--newer`, that a later
    checkpoint still holds it (a consistency proof between the two)."""
    try:
        receipt = json.loads(Path(args.file).read_text(encoding="utf-8"))
        log_keys = [notes.Verifier.parse(v) for v in args.vkeys]
        witness_keys = [notes.Verifier.parse(v) for v in args.witness_vkeys or []]
        if any(k.kind != notes.COSIGNATURE for k in witness_keys):
            raise ValueError("a witness's vkey is a cosignature key (type 0x04)")
        newer = Path(args.newer).read_text(encoding="utf-8") if args.newer else None
        consistency = json.loads(Path(args.consistency).read_text(encoding="utf-8")) if args.consistency else None
    except (OSError, ValueError, notes.NoteError) as exc:
        print(f"NOT VERIFIED: {exc}")
        return 1
    try:
        checked = receipts.check_receipt(
            receipt, log_keys, witness_keys, args.quorum, newer, consistency, args.transaction_id
        )
    except receipts.ReceiptInvalid as exc:
        print(f"NOT VERIFIED: {exc}")
        return 1
    print(f"ok: {checked}")
    return 0


def cmd_audit_origins(args: argparse.Namespace) -> int:
    """`<origin> <vkey>` for each log this instance writes (one per worker), the log key made on first use,
    so a witness can be told of the log before the gateway first starts."""
    settings = _settings()
    key = load_or_create_ed25519(settings.checkpoint_key_path)
    workers = args.workers or settings.workers
    for slot in range(workers):
        origin, _ = current_origin(settings.log_dir, log_origin(settings.issuer, settings.log_origin, slot, workers))
        directory = log_directory(settings.log_dir, origin)
        last = last_checkpoint(directory)
        recorded = read_vkey(directory)
        if recorded not in (None, notes.Signer(origin, key).verifier.vkey()) or (
            recorded is None and last is not None and last.key_id != key_id(key.public_key())
        ):
            # the key was rotated: the gateway continues under this one at its next start
            origin = successor_origin(origin, rotation_tag(key_id(key.public_key())))
        print(f"{origin} {notes.Signer(origin, key).verifier.vkey()}")
    return 0


def cmd_audit_rotate_key(args: argparse.Namespace) -> int:
    settings = _settings()
    for directory in local_logs(settings.log_dir):
        held = hold_writer_lock(directory)
        if held is None:
            print(
                f"jamu audit rotate-key: a running gateway writes {read_origin(directory)}; stop it first",
                file=sys.stderr,
            )
            return 2
        os.close(held)
    try:
        offline.rotate_log_key(settings.checkpoint_key_path)
    except (OSError, offline.OfflineError) as exc:
        print(f"jamu audit rotate-key: {exc}", file=sys.stderr)
        return 2
    print("new log key; at its next start each log continues under a new origin (tell the witnesses):", file=sys.stderr)
    return cmd_audit_origins(args)


def cmd_witness_init(args: argparse.Namespace) -> int:
    try:
        verifier = init_witness(Path(args.state), args.name, rotate=args.rotate)
    except (OSError, ValueError) as exc:
        print(f"jamu witness init: {exc}", file=sys.stderr)
        return 2
    print(verifier.vkey())
    return 0


def cmd_witness_serve(args: argparse.Namespace) -> int:
    try:
        logs = parse_log_arguments(args.logs)
        app = create_witness_app(Path(args.state), logs)
    except (OSError, ValueError) as exc:
        print(f"jamu witness serve: {exc}", file=sys.stderr)
        return 2
    import uvicorn

    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


def cmd_audit_reindex(args: argparse.Namespace) -> int:
    settings = _settings()
    url, schema = _audit_database(args, settings)
    try:
        offline.require_database(url)
        counts = asyncio.run(
            offline.reindex(url, schema, args.log_dir or settings.log_dir, legacy_origin(settings.issuer))
        )
    except offline.OfflineError as exc:
        print(f"jamu audit reindex: {exc}", file=sys.stderr)
        return 2
    for origin, count in counts.items():
        print(f"{origin}: {count} events indexed")
    return 0


def cmd_audit_public_key(args: argparse.Namespace) -> int:
    """The checkpoint public key as PEM, for whoever verifies a copy of the log elsewhere."""
    try:
        keys = offline.public_keys_of(_settings().checkpoint_key_path)
    except offline.OfflineError as exc:
        print(f"jamu audit public-key: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(offline.public_pem_of(next(iter(keys.values()))).decode())
    return 0


def cmd_audit_export(args: argparse.Namespace) -> int:
    settings = _settings()
    url, schema = _audit_database(args, settings)
    where = EventFilter(administration=args.administration, since=args.since, until=args.until)
    try:
        offline.require_database(url)
        if args.output is None:
            count = asyncio.run(offline.export(url, schema, where, args.format))
        else:
            with open(args.output, "w", encoding="utf-8", newline="") as out:
                count = asyncio.run(offline.export(url, schema, where, args.format, out))
    except offline.OfflineError as exc:
        print(f"jamu audit export: {exc}", file=sys.stderr)
        return 2
    print(f"{count} events exported", file=sys.stderr)
    return 0


async def _officers(args: argparse.Namespace, settings: Settings) -> int:
    from gateway.console import officer_store
    from gateway.console.accounts import AccountError
    from gateway.storage.database import create_engine, migrate

    engine = create_engine(database_url(settings.database_url, settings.data_dir), schema=settings.database_schema)
    try:
        await migrate(engine, settings.database_schema)
        store = officer_store(settings, engine)
        try:
            if args.officers_command in ("add", "reset"):
                credentials = (
                    await store.add(args.login, args.role, args.administration)
                    if args.officers_command == "add"
                    else await store.reset(args.login)
                )
                if args.json:
                    print(
                        json.dumps(
                            {
                                "login": credentials.login,
                                "password": credentials.password,
                                "otpauth_uri": credentials.otpauth_uri,
                            }
                        )
                    )
                else:
                    print(
                        f"login:       {credentials.login}\npassword:    {credentials.password}\n"
                        f"otpauth URI: {credentials.otpauth_uri}\n"
                        "Give these to the officer by hand; they are shown once and kept nowhere in clear."
                    )
            elif args.officers_command in ("disable", "enable"):
                await store.set_disabled(args.login, args.officers_command == "disable")
                print(f"{args.login}: {args.officers_command}d")
            else:
                officers = await store.list()
                now = time.time()
                for officer in officers:
                    state = (
                        "disabled"
                        if officer.disabled
                        else ("locked" if officer.locked_until and officer.locked_until > now else "active")
                    )
                    if args.json:
                        print(
                            json.dumps(
                                {
                                    "login": officer.login,
                                    "role": officer.role,
                                    "administration": officer.administration,
                                    "state": state,
                                }
                            )
                        )
                    else:
                        print(f"{officer.login}\t{officer.role}\t{officer.administration or '-'}\t{state}")
        except AccountError as exc:
            print(f"jamu officers {args.officers_command}: {exc}", file=sys.stderr)
            return 2
    finally:
        await engine.dispose()
    return 0


def cmd_officers(args: argparse.Namespace) -> int:
    """The console's local accounts (docs/contract.md §14): add prints the initial password and the TOTP URI once."""
    return asyncio.run(_officers(args, _settings()))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jamu", description="Jamu identity-verification gateway")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve the gateway")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)
    serve.set_defaults(func=cmd_serve)

    demo = sub.add_parser("demo", help="make demo client keys, print a walk-through, serve")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=8000)
    demo.set_defaults(func=cmd_demo)

    policies = sub.add_parser("policies", help="policy files").add_subparsers(dest="policies_command", required=True)
    check = policies.add_parser("check", help="validate a policy directory")
    check.add_argument("dir", nargs="?")
    check.set_defaults(func=cmd_policies_check)

    keys = sub.add_parser("keys", help="client and signing keys").add_subparsers(dest="keys_command", required=True)
    generate = keys.add_parser("generate", help="a client key pair (private PEM, public JWKS), or a secret")
    generate.add_argument("client_id")
    generate.add_argument("--secret", action="store_true", help="a random secret and its secret_hash instead")
    generate.add_argument("--out", default=".", help="directory for the PEM and JWKS files")
    generate.add_argument("--alg", choices=["Ed25519", "ES256"], default="Ed25519")
    generate.set_defaults(func=cmd_keys_generate)
    rotate = keys.add_parser("rotate", help="replace the gateway's token-signing key")
    rotate.set_defaults(func=cmd_keys_rotate)

    jobs = sub.add_parser("jobs", help="bulk verification jobs against a gateway").add_subparsers(
        dest="jobs_command", required=True
    )
    worker = jobs.add_parser(
        "worker",
        help="run bulk jobs at the lowest CPU priority, beside the interactive "
        "replicas (set GATEWAY_BULK_WORKERS=0 on those)",
    )
    worker.add_argument("--host", default="127.0.0.1")
    worker.add_argument("--port", type=int, default=8001, help="for its health probes only")
    worker.add_argument("--workers", type=int, default=1, help="processes (N > 1 needs GATEWAY_REDIS_URL)")
    worker.add_argument("--concurrency", type=int, default=2, help="chunks each process runs at once")
    worker.set_defaults(func=cmd_jobs_worker)
    for name, what in (
        ("submit", "verify a whole file: upload, follow with a progress bar, write the results"),
        ("status", "a job's status"),
        ("results", "download a job's results (or --errors)"),
        ("cancel", "cancel a job"),
    ):
        command = jobs.add_parser(name, help=what)
        command.add_argument("--client", required=True, help="the client id")
        command.add_argument("--key", required=True, help="the client's private key (PEM)")
        command.add_argument("--gateway", help="gateway base URL (default GATEWAY_ISSUER)")
        command.set_defaults(func=cmd_jobs)
        if name == "submit":
            command.add_argument("file", help="CSV with a header row (ref,nin,<claims>) or NDJSON")
            command.add_argument("--purpose", required=True)
            command.add_argument("--claims", help="claimed attributes, comma-separated (columns of the file)")
            command.add_argument(
                "--predicate",
                action="append",
                help="alive, age_at_least=18[@2027-06-01], resides_in=Kati, registered_idp",
            )
            command.add_argument("--as-of", help="the date predicates are evaluated at (default: today)")
            command.add_argument("--format", choices=("csv", "ndjson"), help="default: from the file's extension")
            command.add_argument("--out", help="where the results go (default FILE.results.<format>)")
            command.add_argument("--idempotency-key", help="default: derived from the file and the request")
            command.add_argument("--quiet", action="store_true", help="no progress bar")
        else:
            command.add_argument("job_id")
            if name == "results":
                command.add_argument("--out", required=True)
                command.add_argument("--errors", action="store_true", help="the invalid records instead")

    events = sub.add_parser("events", help="life events against a gateway").add_subparsers(
        dest="events_command", required=True
    )
    declare = events.add_parser("declare", help="submit a JSON Lines file of declarations, one answer per line")
    declare.add_argument("file", help="one declaration per line: {type, nin?, data, corrects?, voids?}")
    declare.add_argument("--client", required=True, help="the centre's client id (scope register:declare)")
    declare.add_argument("--key", required=True, help="the client's private key (PEM)")
    declare.add_argument("--gateway", help="gateway base URL (default GATEWAY_ISSUER)")
    declare.add_argument("--key-prefix", default="file:", help="prefix of each line's Idempotency-Key")
    declare.set_defaults(func=cmd_events_declare)

    token = sub.add_parser("token", help="get an access token for a client holding a private key")
    token.add_argument("client_id")
    token.add_argument("--key", required=True, help="the client's private key (PEM)")
    token.add_argument("--scope")
    token.add_argument("--issuer", help="gateway base URL (default GATEWAY_ISSUER)")
    token.add_argument("--json", action="store_true", help="print the whole token response")
    token.set_defaults(func=cmd_token)

    register = sub.add_parser("register", help="the embedded register").add_subparsers(
        dest="register_command", required=True
    )
    seed = register.add_parser("seed", help="build a deterministic synthetic population")
    seed.add_argument("--count", type=int, required=True)
    seed.add_argument("--seed", type=int, default=1)
    seed.set_defaults(func=cmd_register_seed)
    importer = register.add_parser("import", help="load people from JSON Lines or CSV, all or nothing")
    importer.add_argument("file")
    importer.add_argument("--format", choices=["jsonl", "csv"], help="default: from the file's extension")
    importer.add_argument("--skip-bad-lines", action="store_true", help="import the valid lines anyway")
    importer.set_defaults(func=cmd_register_import)

    audit = sub.add_parser("audit", help="the access log, offline").add_subparsers(dest="audit_command", required=True)
    verify = audit.add_parser("verify", help="check the hash chain and signed checkpoints (exit 1 if broken)")
    verify.add_argument("--database-url", help="default: GATEWAY_DATABASE_URL, else SQLite in the data dir")
    verify.add_argument("--schema", help="PostgreSQL schema (default GATEWAY_DATABASE_SCHEMA)")
    verify.add_argument(
        "--public-key",
        action="append",
        type=Path,
        dest="public_keys",
        help="checkpoint public key PEM, repeatable (default: the data dir's)",
    )
    verify.add_argument(
        "--allow-unsealed",
        action="store_true",
        help="a copy of a running log: events after the last checkpoint are not a fault",
    )
    verify.add_argument("--log-dir", type=Path, help="the segment logs (default: <data dir>/log)")
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    verify.add_argument(
        "--witness-vkey",
        action="extend",
        nargs="+",
        dest="witness_vkeys",
        help="a witness's vkey, repeatable (default: GATEWAY_WITNESSES_FILE's)",
    )
    verify.add_argument("--quorum", type=int, help="cosignatures needed (default: the witnesses file's, or all)")
    verify.add_argument(
        "--checkpoint",
        action="append",
        dest="checkpoints",
        metavar="FILE",
        help="a checkpoint kept elsewhere (a note, or a receipt) the log must still hold",
    )
    verify.set_defaults(func=cmd_audit_verify)
    verify_proof = audit.add_parser("verify-proof", help="check a receipt offline with public keys (exit 1 if not)")
    verify_proof.add_argument("file", help="the receipt, as GET /v1/receipts/{transaction_id} returns it")
    verify_proof.add_argument(
        "--vkey",
        action="extend",
        nargs="+",
        dest="vkeys",
        required=True,
        help="the log's vkey (`jamu audit origins`), repeatable",
    )
    verify_proof.add_argument("--witness-vkey", action="extend", nargs="+", dest="witness_vkeys", help="repeatable")
    verify_proof.add_argument("--quorum", type=int, help="cosignatures needed (default: every witness given)")
    verify_proof.add_argument("--transaction-id", help="the transaction the receipt must be for")
    verify_proof.add_argument("--newer", help="a later signed checkpoint of the same log (text file)")
    verify_proof.add_argument("--consistency", help="the consistency proof to --newer (JSON, as the API gives it)")
    verify_proof.set_defaults(func=cmd_audit_verify_proof)
    origins = audit.add_parser("origins", help="print `<origin> <vkey>` of this instance's logs")
    origins.add_argument("--workers", type=int, help="default: GATEWAY_WORKERS")
    origins.set_defaults(func=cmd_audit_origins)
    rotate = audit.add_parser("rotate-key", help="replace the log key (each log continues under a new origin)")
    rotate.add_argument("--workers", type=int, help="default: GATEWAY_WORKERS")
    rotate.set_defaults(func=cmd_audit_rotate_key)
    reindex = audit.add_parser("reindex", help="rebuild the query index from the logs")
    reindex.add_argument("--database-url")
    reindex.add_argument("--schema")
    reindex.add_argument("--log-dir", type=Path, help="the segment logs (default: <data dir>/log)")
    reindex.set_defaults(func=cmd_audit_reindex)
    public_key = audit.add_parser("public-key", help="print the checkpoint public key (PEM) for offline checks")
    public_key.set_defaults(func=cmd_audit_public_key)
    export = audit.add_parser("export", help="stream events as JSON Lines or CSV")
    export.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    export.add_argument("--database-url")
    export.add_argument("--schema")
    export.add_argument("--since", type=_timestamp, help="RFC 3339, inclusive")
    export.add_argument("--until", type=_timestamp, help="RFC 3339, exclusive")
    export.add_argument("--administration")
    export.add_argument("--output", type=Path, help="file to write (default: standard output)")
    export.set_defaults(func=cmd_audit_export)

    alerts = sub.add_parser("alerts", help="the console's alert rules").add_subparsers(
        dest="alerts_command", required=True
    )
    alerts_check = alerts.add_parser("check", help="validate an alert rules file (default: GATEWAY_ALERTS_FILE)")
    alerts_check.add_argument("file", nargs="?")
    alerts_check.set_defaults(func=cmd_alerts_check)
    officers = sub.add_parser("officers", help="the console's local accounts").add_subparsers(
        dest="officers_command", required=True
    )
    add = officers.add_parser("add", help="a new officer: prints an initial password and a TOTP secret, once")
    add.add_argument("login")
    add.add_argument("--role", required=True, choices=("officer", "dpa", "dpo"))
    add.add_argument("--administration", help="the administration of a dpo")
    add.add_argument("--json", action="store_true", help='one line {"login", "password", "otpauth_uri"}')
    reset = officers.add_parser("reset", help="a new password and TOTP secret; the lockout cleared, sessions ended")
    reset.add_argument("login")
    reset.add_argument("--json", action="store_true")
    for name, what in (
        ("disable", "refuse the officer's sign-ins and end their sessions"),
        ("enable", "allow a disabled officer again"),
    ):
        toggle = officers.add_parser(name, help=what)
        toggle.add_argument("login")
    listing = officers.add_parser("list", help="every local account, its role and state")
    listing.add_argument("--json", action="store_true")
    for parser_ in (add, reset, listing, *[officers.choices[n] for n in ("disable", "enable")]):
        parser_.set_defaults(func=cmd_officers)
    witness = sub.add_parser(
        "witness", help="a reference witness of the access log (C2SP tlog-witness)"
    ).add_subparsers(dest="witness_command", required=True)
    init = witness.add_parser("init", help="make the witness's key and print its vkey")
    init.add_argument("--state", required=True, help="the witness's state directory")
    init.add_argument("--name", required=True, help="the witness's name (its vkey's name)")
    init.add_argument("--rotate", action="store_true", help="replace the key (the old one is kept aside)")
    init.set_defaults(func=cmd_witness_init)
    wserve = witness.add_parser("serve", help="answer POST /add-checkpoint")
    wserve.add_argument("--state", required=True)
    wserve.add_argument("--host", default="127.0.0.1")
    wserve.add_argument("--port", type=int, default=8100)
    wserve.add_argument(
        "--log",
        action="extend",
        nargs="+",
        dest="logs",
        required=True,
        metavar="ORIGIN=VKEY",
        help="a log to witness, repeatable",
    )
    wserve.set_defaults(func=cmd_witness_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    args = build_parser().parse_args(argv)
    with contextlib.suppress(ValidationError):  # a command reports bad settings itself, where it reads them
        secure_data_dir(_settings().data_dir)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
