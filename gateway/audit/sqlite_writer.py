"""The SQLite access-log writer: a child process that owns every write to the log's SQLite file.

Why a process: SQLite's Python driver lets go of the interpreter lock around every statement, so a
writer thread and the event loop traded the lock several times per commit, and under load that hand-off
cost more CPU than the commit. In its own process the writer chains, inserts and flushes on the other
core, and the gateway pays one pipe write and one read per batch.

Protocol, one JSON object a line each way: first the configuration (file, busy timeout, checkpoint
key, seal interval in events), then requests `{"op": "append", "events": [...]}`, `{"op": "seal",
"older_than_s": s}` or `{"op": "probe"}`, each answered by `{"result": ...}` or `{"error": "..."}` once
its transaction has committed or rolled back. The child ignores SIGINT and SIGTERM: it ends when its
input closes, after the transaction in hand, so a gateway shutting down can still drain and seal.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import signal
import sqlite3
import sys
from collections.abc import Callable
from typing import Any, BinaryIO, TypeVar

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.audit.chain import CheckpointSigner
from gateway.audit.writes import SqliteWrites, Writes, append_events, seal_head
from gateway.storage.database import open_sqlite

_T = TypeVar("_T")


class WriterError(Exception):
    """The writer could not commit (its message says why), or is gone."""


def _transaction(connection: sqlite3.Connection, work: Callable[[Writes], _T]) -> _T:
    connection.execute("BEGIN IMMEDIATE")
    try:
        result = work(SqliteWrites(connection))
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                connection.execute("ROLLBACK")
        raise
    return result


def _probe(writes: Writes) -> None:
    """Taking the writers' lock and reading the head proves an append could commit now."""
    writes.head()


def _work(request: dict[str, Any], signer: CheckpointSigner, seal_every: int) -> Callable[[Writes], Any]:
    if request["op"] == "append":
        events = request["events"]
        return lambda writes: append_events(writes, signer, events, seal_every)
    if request["op"] == "seal":
        older_than_s = request["older_than_s"]
        return lambda writes: seal_head(writes, signer, older_than_s)
    return _probe


def serve(requests: BinaryIO, replies: BinaryIO) -> None:
    """The child's loop: one transaction per request, answered when it is on disk."""
    config = orjson.loads(requests.readline())
    connection = open_sqlite(config["path"], config["timeout_s"])
    signer = CheckpointSigner(Ed25519PrivateKey.from_private_bytes(base64.b64decode(config["key"])))
    seal_every: int = config["seal_every"]
    try:
        for line in requests:
            request = orjson.loads(line)
            try:
                reply = {"result": _transaction(connection, _work(request, signer, seal_every))}
            except (sqlite3.Error, ValueError, KeyError) as exc:
                reply = {"error": f"{type(exc).__name__}: {exc}"}
            replies.write(orjson.dumps(reply) + b"\n")
            replies.flush()
    finally:
        connection.close()


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with contextlib.suppress(BrokenPipeError):
        serve(sys.stdin.buffer, sys.stdout.buffer)


class SqliteWriterProcess:
    """The gateway's side: starts the child on first use (and again after it died), one request at a
    time, each bounded in time; a child that does not answer in time is killed."""

    def __init__(self, path: str, *, timeout_s: float, signer: CheckpointSigner, seal_every: int) -> None:
        self._config = {"path": path, "timeout_s": timeout_s, "seal_every": seal_every}
        self._signer = signer
        self._reply_timeout_s = 2 * timeout_s + 5  # a busy wait, then a flush
        self._process: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()

    async def _started(self) -> asyncio.subprocess.Process:
        process = self._process
        if process is None or process.returncode is not None:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gateway.audit.sqlite_writer",
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
            assert process.stdin is not None
            key = base64.b64encode(self._signer.private_bytes()).decode()  # read-only stores never get here
            process.stdin.write(orjson.dumps({**self._config, "key": key}) + b"\n")
            self._process = process
        return process

    async def call(self, request: dict[str, Any]) -> Any:
        async with self._lock:
            process = await self._started()
            assert process.stdin is not None and process.stdout is not None
            try:
                process.stdin.write(orjson.dumps(request) + b"\n")
                async with asyncio.timeout(self._reply_timeout_s):
                    line = await process.stdout.readline()
            except TimeoutError:
                self._kill(process)
                raise WriterError("the access-log writer did not answer in time") from None
            except (ConnectionError, RuntimeError) as exc:
                self._kill(process)
                raise WriterError(f"the access-log writer is gone: {exc}") from None
            if not line:
                self._kill(process)
                raise WriterError("the access-log writer exited")
        reply = orjson.loads(line)
        if "error" in reply:
            raise WriterError(reply["error"])
        return reply["result"]

    def _kill(self, process: asyncio.subprocess.Process) -> None:
        if process.returncode is None:
            process.kill()
        self._process = None

    async def close(self) -> None:
        """Close the child's input and wait for it to finish the transaction in hand."""
        async with self._lock:
            process, self._process = self._process, None
            if process is None or process.returncode is not None:
                return
            assert process.stdin is not None
            process.stdin.close()
            try:
                async with asyncio.timeout(self._reply_timeout_s):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()


if __name__ == "__main__":
    main()
