"""Runtime settings, read from `GATEWAY_*` environment variables (docs/contract.md §10).

Everything the gateway needs to start is here with a safe default, so `jamu serve` works on a fresh
machine; production sets the database, Redis and issuer explicitly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, StringConstraints, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

SigningAlgorithm = Literal["Ed25519", "ES256"]


class Settings(BaseSettings):
    """The gateway's configuration. Extra knobs beyond docs/contract.md §10 are documented in docs/configuration.md."""

    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore", frozen=True)

    policies_dir: Path = Path("./policies")
    data_dir: Path = Path("./var")
    database_url: str | None = None
    redis_url: str | None = None
    issuer: str = "http://127.0.0.1:8000"
    connectors_file: Path | None = None
    signing_key_file: Path | None = None
    trusted_issuers_file: Path | None = None
    root_path: Annotated[str, StringConstraints(pattern=r"^(/[A-Za-z0-9._~-]+)*$")] = ""
    trusted_proxies: str = ""
    metrics_port: int | None = Field(None, ge=1, le=65535)
    metrics_host: str = "127.0.0.1"  # the chart sets 0.0.0.0, for the scraper on the cluster network

    signing_alg: SigningAlgorithm = "Ed25519"
    token_lifetime_s: int = Field(300, ge=30, le=3600)
    clock_leeway_s: int = Field(30, ge=0, le=300)
    client_assertion_max_lifetime_s: int = Field(300, ge=30, le=3600)
    max_body_bytes: int = Field(64 * 1024, ge=1024)
    max_token_bytes: int = Field(8 * 1024, ge=512)
    token_cache_size: int = Field(10_000, ge=0)
    jwks_refresh_interval_s: float = Field(60.0, ge=0)
    jwks_max_age_s: float = Field(300.0, gt=0)
    jwks_fetch_timeout_s: float = Field(3.0, gt=0)
    redis_key_prefix: str = "jamu:"
    redis_timeout_s: float = Field(0.25, gt=0)
    replicas: int = Field(1, ge=1, le=1000)
    redis_retry_s: float = Field(2.0, gt=0)
    unauthenticated_rate_limits: str = "burst:20/1s,hourly:1200/1h"
    unauthenticated_total_rate_limits: str = "burst:200/1s,hourly:100000/1h"
    database_schema: Annotated[str, StringConstraints(pattern=r"^[a-z_][a-z0-9_]{0,62}$")] | None = None
    database_timeout_s: float = Field(5.0, gt=0)
    subject_key_file: Path | None = None
    pseudonym_key_file: Path | None = None
    checkpoint_key_file: Path | None = None
    console_key_file: Path | None = None  # seals TOTP secrets, signs sign-in cookies: one for all replicas
    log_format: Literal["json", "text"] = "json"
    policy_reload_interval_s: float = Field(5.0, ge=0)
    audit_seal_every: int = Field(1000, ge=1)
    audit_seal_interval_s: float = Field(1.0, gt=0)
    audit_max_batch: int = Field(512, ge=1, le=10_000)
    # The access log's origin (docs/contract.md §13): a schema-less URL, no spaces, no `+` (C2SP signed-note).
    log_origin: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._~:/@%-]{0,190}$")] | None = None
    workers: int = Field(1, ge=1, le=256)  # set by `jamu serve --workers N`: an explicit origin gets /<slot>
    audit_segment_bytes: int = Field(64 * 1024 * 1024, ge=64 * 1024)
    witnesses_file: Path | None = None  # the access log's outside witnesses and quorum (docs/contract.md §13)
    witness_timeout_s: float = Field(3.0, gt=0)
    witness_retry_s: float = Field(5.0, gt=0, le=5)  # an unreachable witness is asked again this often
    # Past this, witnesses that have not reached their quorum make /readyz report "degraded" (never
    # "failing": verification goes on) and the integrity report names the stretch not yet witnessed.
    witness_max_lag_s: float = Field(300.0, gt=0)
    audit_index_max_lag_s: float = Field(2.0, gt=0)  # audit reads answer 503 while the index is further behind
    # Bulk verification jobs (docs/contract.md §16). Their files live under `jobs_dir` (shared by every process
    # that runs jobs); `bulk_workers` chunks run at once in this process (0: it runs none, it only takes
    # uploads and answers status).
    jobs_dir: Path | None = None
    bulk_workers: int = Field(1, ge=0, le=64)
    bulk_chunk_records: int = Field(2000, ge=1, le=100_000)
    bulk_max_records: int = Field(10_000_000, ge=1)
    bulk_max_upload_bytes: int = Field(4 * 1024**3, ge=1024)
    bulk_lease_s: float = Field(60.0, gt=0)  # a chunk not renewed within this is taken over
    bulk_results_days: float = Field(7.0, gt=0)
    # Push of life events (docs/contract.md §15, docs/life-events.md): the waits between attempts, in seconds
    # (the last repeats), how long an event is retried before it is set aside, one attempt's timeout.
    events_retry_backoff_s: str = "5,300,1800,7200,18000,36000,50400,72000,86400"
    events_retry_horizon_s: float = Field(72 * 3600.0, gt=0)
    events_push_timeout_s: float = Field(15.0, gt=0, le=120)
    events_poll_s: float = Field(1.0, gt=0, le=60)
    # The officers' console (docs/contract.md §14, docs/console.md): alert rules, and sign-in through OpenID Connect
    # when an issuer is set (local accounts from `jamu officers` otherwise).
    alerts_file: Path | None = None
    # Password sign-ins per source address, on top of GATEWAY_UNAUTHENTICATED_RATE_LIMITS: each costs an argon2
    # check (tens of milliseconds of CPU and 64 MiB), so far fewer are allowed than for an API call; room
    # for an agency's officers behind one address (each account's own lockout stops guessing).
    console_login_rate_limits: str = "minute:30/1m,hourly:300/1h"
    console_alert_poll_s: float = Field(1.0, gt=0, le=60)
    console_oidc_issuer: str | None = None
    console_oidc_client_id: str | None = None
    console_oidc_client_secret: str | None = None
    console_oidc_role_claim: str = "jamu_role"
    console_oidc_administration_claim: str = "jamu_administration"
    console_oidc_login_claim: str = "sub"  # stable and unique at its provider (a username may change hands)

    @field_validator("issuer")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL")
        return value.rstrip("/")

    @property
    def signing_key_path(self) -> Path:
        return self.signing_key_file or self.data_dir / "keys" / "signing-key.pem"

    @property
    def subject_key_path(self) -> Path:
        return self.subject_key_file or self.keys_dir / "subject-key"

    @property
    def pseudonym_key_path(self) -> Path:
        return self.pseudonym_key_file or self.keys_dir / "pseudonym-key"

    @property
    def checkpoint_key_path(self) -> Path:
        return self.checkpoint_key_file or self.keys_dir / "checkpoint-key.pem"

    @field_validator("events_retry_backoff_s")
    @classmethod
    def _backoff(cls, value: str) -> str:
        try:
            waits = [float(part) for part in value.split(",")]
        except ValueError:
            raise ValueError("a comma-separated list of seconds, e.g. 5,300,1800") from None
        if not waits or len(waits) > 100 or any(not 0 <= w <= 7 * 86400 for w in waits):
            raise ValueError("1 to 100 waits, each 0 to 604800 seconds")
        return value

    @model_validator(mode="after")
    def _lease_outlives_a_write(self) -> Settings:
        # A chunk taken over must find its earlier events settled: a write is settled within its timeout.
        if self.bulk_lease_s < 4 * self.database_timeout_s:
            raise ValueError("GATEWAY_BULK_LEASE_S must be at least 4 x GATEWAY_DATABASE_TIMEOUT_S")
        return self

    @property
    def jobs_path(self) -> Path:
        return self.jobs_dir or self.data_dir / "jobs"

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "log"

    @property
    def events_backoff(self) -> tuple[float, ...]:
        return tuple(float(part) for part in self.events_retry_backoff_s.split(","))

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / "keys"

    @property
    def token_endpoint(self) -> str:
        return f"{self.issuer}/oauth2/token"

    @property
    def audience(self) -> str:
        """The audience our own access tokens carry and protected routes demand."""
        return self.issuer
