"""A job's files under the jobs directory: its input while it runs, then one results file and one errors
file per chunk, each written whole (synced, then renamed into place), so a chunk's results exist entirely
or not at all, whatever happens to the process that wrote them."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import anyio

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

    def open_upload(self, job_id: str, token: str) -> int:
        """A new, private file for one upload in progress (concurrent uploads never share a file)."""
        ensure_private_dir(self.root)
        ensure_private_dir(self.directory(job_id))
        return os.open(self.directory(job_id) / f"upload-{token}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)

    def keep_upload(self, job_id: str, token: str, fd: int) -> str:
        """The upload, synced, under its final name (returned), which the job then records."""
        os.fsync(fd)
        os.close(fd)
        name = f"input-{token}"
        os.replace(self.directory(job_id) / f"upload-{token}", self.directory(job_id) / name)
        _fsync_dir(self.directory(job_id))
        return name

    def drop_upload(self, job_id: str, token: str, fd: int) -> None:
        with contextlib.suppress(OSError):
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            (self.directory(job_id) / f"upload-{token}").unlink()

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
        _fsync_dir(self.directory(job_id))

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
        paths = [directory / name] if name else [*directory.glob("input-*"), *directory.glob("upload-*")]
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def delete(self, job_id: str) -> None:
        shutil.rmtree(self.directory(job_id), ignore_errors=True)


def ensure_private_dir(directory: Path) -> None:
    """Input files hold NINs: only the gateway's user reads them."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
