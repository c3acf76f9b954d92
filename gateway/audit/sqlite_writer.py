"""The SQLite access-log writer: a child process that owns every write to the log's SQLite file.

Why a process: SQLite's Python driver lets go of the interpreter lock around every statement, so a
writer thread and the event loop traded the lock several times per commit, and under load that hand-off
cost more CPU than the commit. In its own process the writer chains, inserts and flushes on the other
core, and the gateway pays one pipe write and one read per batch. The gateway reads the answers in the
pipe's callback and settles the batch's requests there, one loop turn sooner than a task reading lines.

Protocol, one JSON object a line each way: first the configuration (file, busy timeout, checkpoint
key, seal interval in events), then requests `{"op": "append", "events": [...]}`, `{"op": "seal",
"older_than_s": s}` or `{"op": "probe"}`, each answered by `{"result": ...}` or `{"error": "..."}` once
its transaction has committed or rolled back. The child ignores SIGINT and SIGTERM: it ends when its
input closes, after the transaction in hand, so a gateway shutting down can still drain and seal.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import logging
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from typing import Any, BinaryIO, TypeVar, cast

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.audit.chain import CheckpointSigner
from gateway.audit.writes import SqliteWrites, Writes, append_events, seal_head
from gateway.storage.database import open_sqlite

_T = TypeVar("_T")
log = logging.getLogger(__name__)


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


Settle = Callable[[], None]


class _Call:
    """One request in flight: its answer resolves `done`, and a successful one first runs `settle`."""

    __slots__ = ("done", "settle")

    def __init__(self, done: asyncio.Future[Any], settle: Settle | None) -> None:
        self.done = done
        self.settle = settle

    def answer(self, line: bytes) -> None:
        if self.done.done():  # given up on (timed out): the child is being killed
            return
        try:
            reply = orjson.loads(line)
        except orjson.JSONDecodeError:
            self.done.set_exception(WriterError(f"the access-log writer answered {line[:80]!r}"))
            return
        if "error" in reply:
            self.done.set_exception(WriterError(reply["error"]))
            return
        if self.settle is not None:
            try:
                self.settle()
            except Exception:  # the caller's bug must not leave the call unanswered
                log.exception("settling an access-log write failed")
        self.done.set_result(reply.get("result"))

    def fail(self, reason: str) -> None:
        if not self.done.done():
            self.done.set_exception(WriterError(reason))


class _Replies(asyncio.SubprocessProtocol):
    """Reads the child's answers as they arrive, in the pipe's own callback: the requests waiting on a
    commit are settled there, not one loop turn later by a task that read the line."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.waiting: collections.deque[_Call] = collections.deque()
        self.closed = False
        self.exited: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def pipe_data_received(self, fd: int, data: bytes | str) -> None:
        if fd != 1:
            return
        self.buffer += data if isinstance(data, bytes) else data.encode()
        while (end := self.buffer.find(b"\n")) >= 0:
            line = bytes(self.buffer[:end])
            del self.buffer[: end + 1]
            if self.waiting:
                self.waiting.popleft().answer(line)

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if fd == 1:  # every answer written before the end has been read: the rest never will be
            self.closed = True
            while self.waiting:
                self.waiting.popleft().fail("the access-log writer exited")

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)


class SqliteWriterProcess:
    """The gateway's side: starts the child on first use (and again after it died), one request at a
    time, each bounded in time; a child that does not answer in time is killed."""

    def __init__(self, path: str, *, timeout_s: float, signer: CheckpointSigner, seal_every: int) -> None:
        self._config = {"path": path, "timeout_s": timeout_s, "seal_every": seal_every}
        self._signer = signer
        self._reply_timeout_s = 2 * timeout_s + 5  # a busy wait, then a flush
        self._process: asyncio.SubprocessTransport | None = None
        self._replies: _Replies | None = None
        self._lock = asyncio.Lock()

    async def _started(self) -> tuple[asyncio.SubprocessTransport, _Replies]:
        process, replies = self._process, self._replies
        if process is None or replies is None or replies.closed or process.get_returncode() is not None:
            if process is not None:
                self._kill(process)
            process, replies = await asyncio.get_running_loop().subprocess_exec(
                _Replies,
                sys.executable,
                "-m",
                "gateway.audit.sqlite_writer",
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=None,
            )
            key = base64.b64encode(self._signer.private_bytes()).decode()  # read-only stores never get here
            self._stdin(process).write(orjson.dumps({**self._config, "key": key}) + b"\n")
            self._process, self._replies = process, replies
        return process, replies

    @staticmethod
    def _stdin(process: asyncio.SubprocessTransport) -> asyncio.WriteTransport:
        pipe = process.get_pipe_transport(0)
        if pipe is None:
            raise ConnectionError("the writer's input is closed")
        return cast(asyncio.WriteTransport, pipe)  # uvloop's pipe transports do not subclass asyncio's

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.get_pid()

    async def call(self, request: dict[str, Any], settle: Settle | None = None) -> Any:
        """Send one request and wait for its answer. `settle`, if given, runs as soon as a successful
        answer is read, before this coroutine resumes."""
        async with self._lock:
            process, replies = await self._started()
            loop = asyncio.get_running_loop()
            call = _Call(loop.create_future(), settle)
            replies.waiting.append(call)

            def expire() -> None:
                if not call.done.done():
                    call.fail("the access-log writer did not answer in time")
                    self._kill(process)

            # A bare timer rather than `asyncio.timeout`, which costs ~5x more: this runs once a batch,
            # and under light load a batch is a single request.
            deadline = loop.call_later(self._reply_timeout_s, expire)
            try:
                self._stdin(process).write(orjson.dumps(request) + b"\n")
                return await call.done
            except (ConnectionError, RuntimeError) as exc:
                self._kill(process)
                raise WriterError(f"the access-log writer is gone: {exc}") from None
            finally:
                deadline.cancel()

    def _kill(self, process: asyncio.SubprocessTransport) -> None:
        if process.get_returncode() is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        process.close()
        if self._process is process:
            self._process, self._replies = None, None

    async def close(self) -> None:
        """Close the child's input and wait for it to finish the transaction in hand."""
        async with self._lock:
            process, replies = self._process, self._replies
            self._process, self._replies = None, None
            if process is None or replies is None or process.get_returncode() is not None:
                if process is not None:
                    process.close()
                return
            self._stdin(process).close()
            try:
                async with asyncio.timeout(self._reply_timeout_s):
                    await asyncio.shield(replies.exited)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await replies.exited
            process.close()


if __name__ == "__main__":
    main()
