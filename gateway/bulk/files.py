"""A job's files under the jobs directory: its input while it runs, then one results file and one errors
file per chunk, each written whole (synced, then renamed into place), so a chunk's results exist entirely
or not at all, whatever happens to the process that wrote them."""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import uuid
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import anyio

from gateway.audit.segments import fsync_dir

READ_BYTES = 256 * 1024


class JobFiles:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._identity: str | None = None

    @property
    def identity(self) -> str:
        """This jobs directory's id, made once: a job records where its input is, and only workers that
        see the same directory (this host, or a shared volume) take its chunks."""
        if self._identity is None:
            ensure_private_dir(self.root)
            path = self.root / ".id"
            with contextlib.suppress(FileExistsError):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as handle:
                    handle.write(uuid.uuid4().hex)
                    handle.flush()
                    os.fsync(handle.fileno())
            self._identity = path.read_text().strip()
        return self._identity

    def directory(self, job_id: str) -> Path:
        return self.root / job_id

    def input_path(self, job_id: str, name: str) -> Path:
        return self.directory(job_id) / name

    def start_upload(self, job_id: str) -> Upload:
        """A new, private file for one upload in progress (concurrent uploads never share a file)."""
        ensure_private_dir(self.root)
        ensure_private_dir(self.directory(job_id))
        return Upload(self.directory(job_id), os.urandom(8).hex())

    def read_range(self, job_id: str, name: str, start: int, end: int) -> bytes:
        with open(self.input_path(job_id, name), "rb") as handle:
            handle.seek(start)
            return handle.read(end - start)

    def _part(self, job_id: str, kind: str, n: int) -> Path:
        return self.directory(job_id) / f"{kind}-{n:08d}"

    def write_chunk(self, job_id: str, n: int, results: Iterable[bytes], errors: Iterable[bytes]) -> None:
        for kind, lines in (("errors", errors), ("results", results)):
            final = self._part(job_id, kind, n)
            temporary = final.with_name(final.name + ".tmp")
            with open(temporary, "wb") as handle:
                handle.writelines(lines)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, final)
        fsync_dir(self.directory(job_id))

    def has_results(self, job_id: str, chunks: list[int]) -> bool:
        return all(self._part(job_id, "results", n).exists() for n in chunks)

    async def stream(self, job_id: str, kind: str, chunks: list[int], header: bytes) -> AsyncIterator[bytes]:
        """The chunks' files of one kind, in order, a piece at a time (never the whole file in memory)."""
        if header:
            yield header
        for n in chunks:
            try:
                handle = await anyio.open_file(self._part(job_id, kind, n), "rb")
            except FileNotFoundError:
                return  # deleted meanwhile (retention): the stream ends short rather than failing mid-way
            async with handle:
                while piece := await handle.read(READ_BYTES):
                    yield piece

    def delete_input(self, job_id: str, name: str | None = None) -> None:
        """The job's input (it holds NINs); `name`: only that file (an upload that was not accepted)."""
        directory = self.directory(job_id)
        # An upload still streaming (upload-*) is its request's to keep or discard.
        paths = [directory / name] if name else list(directory.glob("input-*"))
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def sweep_uploads(self, older_than: float) -> None:
        """Uploads left unfinished (their process died mid-stream) and last written before `older_than`."""
        for path in self.root.glob("*/upload-*"):
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime < older_than:
                    path.unlink()

    def delete(self, job_id: str) -> None:
        shutil.rmtree(self.directory(job_id), ignore_errors=True)


class Upload:
    """One upload's file: written as it streams, then kept under its final name or discarded; whatever
    fails on the way, `discard` leaves nothing behind and closes the file once."""

    def __init__(self, directory: Path, token: str) -> None:
        self.directory = directory
        self.partial = directory / f"upload-{token}"
        self.name = f"input-{token}"
        self._fd: int | None = os.open(self.partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        # Writes run in worker threads: a discard (a cancelled request) waits for the write in flight,
        # so the descriptor is never closed under it.
        self._lock = threading.Lock()

    def write(self, data: bytes) -> None:
        with self._lock:
            if self._fd is None:
                raise FileNotFoundError(self.partial)  # discarded meanwhile
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]

    def keep(self) -> str:
        """Synced and renamed into place; its name, which the job records."""
        with self._lock:
            if self._fd is None:
                raise FileNotFoundError(self.partial)
            fd, self._fd = self._fd, None
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(self.partial, self.directory / self.name)
        fsync_dir(self.directory)
        return self.name

    def discard(self, keep_input: bool = False) -> None:
        """Nothing of the upload left (`keep_input`: the input it became, if the job took it, stays)."""
        with self._lock:
            if self._fd is not None:
                fd, self._fd = self._fd, None
                with contextlib.suppress(OSError):
                    os.close(fd)
            for path in (self.partial, *(() if keep_input else (self.directory / self.name,))):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()


def ensure_private_dir(directory: Path) -> None:
    """Input files hold NINs: only the gateway's user reads them."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
