"""The SQLite writer process: a dead or interrupted child costs one batch at most, never the chain."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest
import uvloop
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.audit.chain import ChainVerifier, CheckpointSigner
from gateway.audit.record import AccessRecord
from gateway.audit.sqlite_writer import SqliteWriterProcess, WriterError
from gateway.audit.store import AccessLogStore
from gateway.storage.database import create_engine, database_url, migrate

SIGNER = CheckpointSigner(Ed25519PrivateKey.generate())


def events(n: int) -> list[dict]:
    records = [AccessRecord(operation="verify", administration="ceni", trace_id="0" * 32) for _ in range(n)]
    for rec in records:
        rec.finish(200)
    return [r.event() for r in records]


def child_pid(store: AccessLogStore) -> int:
    writer = store._process
    assert isinstance(writer, SqliteWriterProcess) and writer.pid is not None
    return writer.pid


async def chain_ok(store: AccessLogStore) -> int:
    verifier = ChainVerifier(await store.checkpoints(), {SIGNER.key_id: SIGNER.public_key}, require_sealed=True)
    async for event in store.stream():
        verifier.feed(event)
    report = verifier.finish()
    assert report.ok, report.problems
    return report.events_checked


@pytest.fixture
async def store(tmp_path: Path) -> AccessLogStore:
    engine = create_engine(database_url(None, tmp_path), statement_timeout_s=2.0)
    await migrate(engine)
    made = AccessLogStore(engine, SIGNER, seal_every=1000)
    yield made
    await made.close()


@pytest.mark.slow
async def test_a_writer_killed_mid_batch_fails_that_batch_and_a_new_one_takes_over(store: AccessLogStore) -> None:
    await store.append(events(3))
    pid = child_pid(store)
    os.kill(pid, signal.SIGSTOP)
    pending = asyncio.create_task(store.append(events(2)))
    await asyncio.sleep(0.2)
    os.kill(pid, signal.SIGKILL)  # dies with the batch in hand, uncommitted
    with pytest.raises(WriterError, match="exited"):
        await pending  # refused, so its requests are not answered as if logged
    await store.append(events(4))
    assert child_pid(store) != pid
    os.kill(child_pid(store), signal.SIGKILL)  # dies between batches
    await asyncio.sleep(0.2)
    await store.append(events(1))  # the next batch simply starts a new one
    assert await store.seal() is True
    assert await chain_ok(store) == 8


@pytest.mark.slow
async def test_the_writer_ignores_interrupts_and_ends_when_its_input_closes(store: AccessLogStore) -> None:
    await store.append(events(1))
    pid = child_pid(store)
    os.kill(pid, signal.SIGINT)  # Ctrl-C reaches the whole process group
    os.kill(pid, signal.SIGTERM)
    await asyncio.sleep(0.2)
    await store.append(events(2))
    assert child_pid(store) == pid  # the same child, still serving
    await store.seal()
    await store.close()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # it ended once its input closed


@pytest.mark.slow
async def test_a_writer_that_does_not_answer_is_killed(tmp_path: Path) -> None:
    engine = create_engine(database_url(None, tmp_path), statement_timeout_s=0.1)
    await migrate(engine)
    store = AccessLogStore(engine, SIGNER)
    try:
        await store.append(events(1))
        pid = child_pid(store)
        os.kill(pid, signal.SIGSTOP)  # alive but silent
        writer = store._process
        usual, writer._reply_timeout_s = writer._reply_timeout_s, 0.5
        with pytest.raises(WriterError, match="in time"):
            await store.append(events(1))
        await asyncio.sleep(0.2)
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
        writer._reply_timeout_s = usual  # a new child needs its interpreter's start-up time
        await store.append(events(1))  # a new child
        assert child_pid(store) != pid
    finally:
        await store.close()


@pytest.mark.slow
def test_the_writer_serves_under_uvloop_as_the_gateway_runs(tmp_path: Path) -> None:
    """The served gateway runs uvloop, whose pipe transports are not asyncio's own classes."""

    async def scenario() -> None:
        engine = create_engine(database_url(None, tmp_path), statement_timeout_s=2.0)
        await migrate(engine)
        store = AccessLogStore(engine, SIGNER, seal_every=1000)
        try:
            settled: list[int] = []
            await store.append(events(2), lambda: settled.append(2))
            pid = child_pid(store)
            os.kill(pid, signal.SIGKILL)
            await asyncio.sleep(0.2)
            await store.append(events(1), lambda: settled.append(1))  # a new child takes over
            assert child_pid(store) != pid and settled == [2, 1]
            assert await store.seal() is True
            assert await chain_ok(store) == 3
        finally:
            await store.close()

    uvloop.run(scenario())
