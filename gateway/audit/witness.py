"""The log's witnesses (C2SP tlog-witness): who they are (`GATEWAY_WITNESSES_FILE`) and the client that
gets each new checkpoint cosigned.

After every checkpoint the gateway signs, each witness that has not cosigned it is sent `old <size>`, a
consistency proof from the size it last cosigned, and the checkpoint. A witness that answers `409` with
its size is asked again from that size. Cosignatures are checked against the witness's keys, kept with
the checkpoint (`witnessed.jsonl`), and the checkpoint is *published* once `quorum` witnesses signed it.
Unreachable witnesses are retried every `retry_s` (5 s) with the latest checkpoint: one cosignature covers
every earlier size, since the proof spans the gap. The log never waits for them: it goes on appending and
signing, and the witness lag (seconds since the oldest checkpoint not yet published) is a metric, in
`/readyz` and in the integrity report.

A witness that holds a size larger than the log, or cannot verify consistency from its size (`422`), has
seen a different history: the log was restored from an older copy or forked. That is alarmed, never
acted on by itself: a `409` is not signed, and one witness's word must not stop the register.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gateway.audit import notes
from gateway.metrics import Metrics

log = logging.getLogger(__name__)
SIZE_TYPE = "text/x.tlog.size"
MAX_RESPONSE = 64 * 1024


class WitnessEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=255)
    url: str = Field(pattern=r"^https?://[^\s]+$", max_length=2048)
    vkey: str | list[str]  # several while a witness rotates its key: either one's cosignature counts

    @field_validator("vkey")
    @classmethod
    def _vkeys(cls, value: str | list[str]) -> list[str]:
        values = [value] if isinstance(value, str) else value
        if not values:
            raise ValueError("at least one vkey")
        for vkey in values:
            try:
                verifier = notes.Verifier.parse(vkey)
            except notes.NoteError as exc:
                raise ValueError(f"not a vkey: {exc}") from None
            if verifier.kind != notes.COSIGNATURE:
                raise ValueError("a witness's vkey is a cosignature key (type 0x04)")
        return values

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        try:
            url = httpx.URL(value)
        except (httpx.InvalidURL, ValueError) as exc:
            raise ValueError(f"not a URL: {exc}") from None
        if not url.host:
            raise ValueError("a witness's URL names its host")
        return value

    @model_validator(mode="after")
    def _named(self) -> WitnessEntry:
        for vkey in self.verifiers():
            if vkey.name != self.name:
                raise ValueError(f"the vkey names {vkey.name!r}, not the witness {self.name!r}")
        return self

    def verifiers(self) -> list[notes.Verifier]:
        values = [self.vkey] if isinstance(self.vkey, str) else self.vkey
        return [notes.Verifier.parse(vkey) for vkey in values]


class WitnessesFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    quorum: int = Field(ge=1)
    witnesses: list[WitnessEntry] = Field(min_length=1, max_length=32)

    @model_validator(mode="after")
    def _consistent(self) -> WitnessesFile:
        names = [w.name for w in self.witnesses]
        if len(set(names)) != len(names):
            raise ValueError("witness names are unique")
        if self.quorum > len(self.witnesses):
            raise ValueError(f"a quorum of {self.quorum} among {len(self.witnesses)} witnesses can never be met")
        return self

    def verifiers(self) -> list[notes.Verifier]:
        return [v for w in self.witnesses for v in w.verifiers()]


def load_witnesses(path: Path) -> WitnessesFile:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        return WitnessesFile.model_validate(raw)
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: cannot be read: {exc}") from None
    except ValidationError as exc:
        lines = [f"{path}: {'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
        raise ValueError("\n".join(lines)) from None


def cosigners(note: str, witnesses: WitnessesFile) -> set[str]:
    """The witnesses whose cosignature on `note` holds."""
    try:
        _, good = notes.verified(note, witnesses.verifiers())
    except notes.NoteError:
        return set()
    return {signature.name for signature in good}


def _own_cosignatures(note: str, answer: str, verifiers: list[notes.Verifier]) -> str | None:
    """The signature lines of `answer` made by `verifiers` on `note`'s checkpoint, all checked; None when
    there is none, or one of theirs does not verify."""
    lines = "".join(line + "\n" for line in answer.splitlines() if line.startswith("\u2014 "))
    try:
        text, _ = notes.parse(note)
        _, good = notes.verified(text + "\n" + lines, verifiers)
    except notes.NoteError:
        return None
    return "".join(signature.line() for signature in good)


@dataclass
class _Witness:
    entry: WitnessEntry
    size: int | None = None  # the size it last cosigned, as far as we know
    cosigned: int = -1  # the size of our checkpoint it last cosigned
    last_ok: float = 0.0
    problem: str | None = None  # why the last request failed
    conflict: str | None = None  # evidence of another history of the log (kept until it cosigns again)


@dataclass
class Published:
    size: int
    note: str
    at: float


@dataclass
class WitnessClient:
    """Gets one log's checkpoints cosigned. `consistency(old, new)` reads the log's stored tree;
    `record(size, note)` keeps a checkpoint with its cosignatures."""

    witnesses: WitnessesFile
    origin: str
    consistency: Callable[[int, int], list[bytes]]
    record: Callable[[int, str], None]
    http: httpx.AsyncClient
    metrics: Metrics
    timeout_s: float = 3.0
    retry_s: float = 5.0
    min_interval_s: float = 1.0
    _last_round: float = 0.0
    _state: list[_Witness] = field(default_factory=list)
    _latest: tuple[str, int, float] | None = None  # (note, size, signed at)
    _gathered: dict[int, dict[str, str]] = field(default_factory=dict)  # size → witness → cosignature lines
    _unpublished: deque[tuple[int, float]] = field(default_factory=lambda: deque(maxlen=100_000))
    published: Published | None = None
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        self._state = [_Witness(entry) for entry in self.witnesses.witnesses]

    def checkpoint_signed(self, note: str, size: int) -> None:
        """The log signed a new checkpoint (called by the store, on the loop)."""
        now = time.time()
        self._latest = (note, size, now)
        self._unpublished.append((size, now))
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="access-log-witnesses")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def lag(self) -> float:
        """Seconds since the oldest checkpoint that has not reached its quorum was signed (0 when none)."""
        return time.time() - self._unpublished[0][1] if self._unpublished else 0.0

    def status(self) -> list[dict[str, Any]]:
        return [
            {
                "name": w.entry.name,
                "cosigned_size": w.size,
                "problem": w.problem,
                "last_cosignature_s_ago": None if not w.last_ok else round(time.time() - w.last_ok, 1),
            }
            for w in self._state
        ]

    def problems(self) -> list[str]:
        """Evidence a witness holds another history of the log (not mere unreachability: see `lag`)."""
        return [f"witness {w.entry.name}: {w.conflict}" for w in self._state if w.conflict]

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.retry_s)
            self._wake.clear()
            # At most a round a second: the latest checkpoint's cosignature covers every earlier one.
            await asyncio.sleep(max(0.0, self.min_interval_s - (time.monotonic() - self._last_round)))
            self._last_round = time.monotonic()
            try:
                await self.round()
            except Exception as exc:  # never let one bad answer stop the witnessing
                log.warning("witness round failed: %s", exc)
            self.metrics.audit_witness_lag.set(self.lag())

    async def round(self) -> None:
        """Ask every witness that has not cosigned the latest checkpoint; keep what they sign. A round
        that outlives its checkpoint (a slow witness, a busy log) still keeps and publishes what it got:
        the next round asks for the newer one."""
        if self._latest is None:
            return
        note, size, _ = self._latest
        pending = [w for w in self._state if w.cosigned != size]
        if not pending:
            return
        gathered = await asyncio.gather(*(self._submit(w, note, size) for w in pending), return_exceptions=True)
        answers = [None if isinstance(a, BaseException) else a for a in gathered]
        lines = self._gathered.setdefault(size, {})
        for witness, signed in zip(pending, answers, strict=True):
            if signed:
                lines[witness.entry.name] = signed
        for older in [s for s in self._gathered if s < size]:
            del self._gathered[older]  # a newer checkpoint's cosignatures cover every earlier size
        if not any(answers):
            return
        full = note + "".join(lines[name] for name in sorted(lines))
        await asyncio.to_thread(self.record, size, full)
        if len(lines) >= self.witnesses.quorum and (self.published is None or size > self.published.size):
            self.published = Published(size, full, time.time())
            self.metrics.audit_witness_published_size.set(size)
            while self._unpublished and self._unpublished[0][0] <= size:
                self._unpublished.popleft()  # newer checkpoints wait: their lag counts from the first of them

    async def _post(self, witness: _Witness, body: str) -> tuple[int, str, str]:
        """(status, content type, body) of one request: the whole exchange bounded in time and the answer
        in size (a witness is not trusted to stop talking)."""
        async with asyncio.timeout(self.timeout_s):
            # No compression: a small encoded answer must not inflate past the limit before it is counted.
            async with self.http.stream(
                "POST",
                witness.entry.url.rstrip("/") + "/add-checkpoint",
                content=body,
                headers={"content-type": "text/plain; charset=utf-8", "accept-encoding": "identity"},
            ) as response:
                if response.headers.get("content-encoding", "identity").lower() != "identity":
                    raise httpx.DecodingError("the witness's answer is encoded")
                data = b""
                async for chunk in response.aiter_raw():
                    data += chunk
                    if len(data) > MAX_RESPONSE:
                        raise httpx.DecodingError("the witness's answer is too large")
                return response.status_code, response.headers.get("content-type", ""), data.decode("utf-8", "replace")

    async def ahead_of(self, note: str, size: int) -> str | None:
        """Why the log must not go on under its origin: witnesses already cosigned a larger tree of it than
        its last checkpoint (`note`, over `size` entries) — the log was restored from an older copy. Asked
        once, before the first signature. A witness's size is not signed, so it takes the quorum and more
        than half of the witnesses to say so."""
        ahead = []
        answers = await asyncio.gather(*(self._held(w, note, size) for w in self._state))
        for witness, answer in zip(self._state, answers, strict=True):
            if answer is not None and answer > size:
                ahead.append(f"{witness.entry.name} at {answer}")
        if len(ahead) >= self.witnesses.quorum and 2 * len(ahead) > len(self._state):
            return (
                f"restored from an older copy: its last checkpoint covers {size} entries, witnesses hold more "
                f"({', '.join(ahead)})"
            )
        return None

    async def _held(self, witness: _Witness, note: str, size: int) -> int | None:
        """The size a witness holds of this log, asked with the log's own last checkpoint (`old` its size:
        a witness at that size cosigns it again, any other answers 409 with its size)."""
        try:
            status, kind, text = await self._post(witness, f"old {size}\n\n{note}")
        except Exception:  # unreachable, or an answer that makes no sense: it says nothing
            return None
        if status == 200:
            return size
        match = re.fullmatch(r"(0|[1-9][0-9]{0,18})\n", text) if status == 409 and kind.startswith(SIZE_TYPE) else None
        return None if match is None else int(match.group(1))

    async def _submit(self, witness: _Witness, note: str, size: int) -> str | None:
        """One witness's cosignature lines for the checkpoint, or None (the reason kept in `problem`)."""
        old = witness.size or 0
        for _ in range(3):
            if old > size:
                self._fault(
                    witness,
                    f"it holds this log at size {old}, larger than the log's {size}: "
                    "the log was restored from an older copy or forked",
                )
                return None
            try:
                proof = await asyncio.to_thread(self.consistency, old, size)
            except (LookupError, ValueError) as exc:
                self._fault(witness, f"no consistency proof from its size {old}: {exc}", alarm=False)
                return None
            body = f"old {old}\n" + "".join(f"{base64.b64encode(h).decode()}\n" for h in proof) + "\n" + note
            try:
                status, kind, text = await self._post(witness, body)
            except Exception as exc:  # unreachable, too slow, too long, or not HTTP at all: one witness's failure
                self.metrics.audit_witness_failures.labels(witness.entry.name).inc()
                self._fault(witness, f"unreachable ({type(exc).__name__})", alarm=False)
                return None
            if status == 409 and kind.startswith(SIZE_TYPE):
                match = re.fullmatch(r"(0|[1-9][0-9]{0,18})\n", text)
                if match is None:
                    self._fault(witness, "a 409 without a size")
                    return None
                their = int(match.group(1))
                if their == old:  # its size is the one we sent: it holds another tree, or ours does not extend it
                    self._fault(
                        witness,
                        f"it holds another tree at size {their}, which this log does not "
                        "extend: the log was restored from an older copy or forked",
                    )
                    return None
                witness.size, old = their, their
                continue
            if status == 422:
                self._fault(
                    witness,
                    f"it cannot verify that this log extends the checkpoint it holds (size "
                    f"{old}): the log was restored from an older copy or forked",
                )
                return None
            if status != 200:
                self.metrics.audit_witness_failures.labels(witness.entry.name).inc()
                self._fault(witness, f"answered {status}", alarm=False)
                return None
            own = _own_cosignatures(note, text, witness.entry.verifiers())
            if own is None:
                self._fault(witness, "its answer carries no valid cosignature")
                return None
            witness.size, witness.cosigned, witness.last_ok = size, size, time.time()
            witness.problem = witness.conflict = None
            return own
        self._fault(witness, "its size kept changing")
        return None

    def _fault(self, witness: _Witness, problem: str, *, alarm: bool = True) -> None:
        if witness.problem != problem:
            (log.critical if alarm else log.warning)(
                "access log %s: witness %s: %s", self.origin, witness.entry.name, problem
            )
        witness.problem = problem
        witness.size = None  # what it said is not kept: the next try asks it again from 0
        if alarm:
            witness.conflict = problem
            self.metrics.audit_witness_conflicts.labels(witness.entry.name).inc()
        return None
