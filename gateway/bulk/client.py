"""The client side of bulk jobs, for `jamu jobs`: submit a file (streamed, with its checksum), follow the
job with a progress bar, write the results. Plain HTTP against the public API (docs/contract.md §16), nothing
the gateway's own internals offer."""

from __future__ import annotations

import base64
import hashlib
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import httpx

PIECE = 1024 * 1024
ENDED = ("completed", "failed", "cancelled")


class JobError(Exception):
    """The gateway refused; the message is its problem's detail."""


def file_digest(path: Path) -> tuple[str, int]:
    """The file's SHA-256 and its number of lines (a last line without its newline counts)."""
    digest, lines, last = hashlib.sha256(), 0, b"\n"
    with open(path, "rb") as handle:
        while piece := handle.read(PIECE):
            digest.update(piece)
            lines += piece.count(b"\n")
            last = piece[-1:]
    return digest.hexdigest(), lines + (last != b"\n")


def _pieces(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        while piece := handle.read(PIECE):
            yield piece


def _check(response: httpx.Response, *expected: int) -> dict[str, Any]:
    if response.status_code not in expected:
        try:
            doc = response.json()
            detail = f"{doc.get('code')}: {doc.get('detail')}"
        except ValueError:
            detail = response.text[:200]
        raise JobError(f"HTTP {response.status_code} {detail}")
    answer: dict[str, Any] = response.json()
    return answer


class JobsClient:
    """`token` is asked again whenever the gateway answers 401: a job outlives an access token."""

    def __init__(self, base_url: str, token: Callable[[], str], *, timeout_s: float = 60.0) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=timeout_s)
        self._token_source = token
        self._token = token()

    def close(self) -> None:
        self.http.close()

    def _send(
        self, method: str, url: str, *, retry: bool = True, headers: dict[str, str] | None = None, **kwargs: Any
    ) -> httpx.Response:
        response = self.http.request(
            method, url, headers={**(headers or {}), "Authorization": f"Bearer {self._token}"}, **kwargs
        )
        if response.status_code == 401 and retry:  # the token expired: a new one, and once more
            self._token = self._token_source()
            response = self.http.request(
                method, url, headers={**(headers or {}), "Authorization": f"Bearer {self._token}"}, **kwargs
            )
        return response

    def refresh(self) -> None:
        self._token = self._token_source()

    def submit(self, path: Path, spec: dict[str, Any], *, key: str | None = None) -> dict[str, Any]:
        """Create the job, declaring its record count (so a job over the day's allowance is refused before
        the upload), and upload the file once. The Idempotency-Key defaults to the file's and the request's
        digest and the day: the same submission the same day finds the same job."""
        sha, lines = file_digest(path)
        records = lines - 1 if spec["format"] == "csv" else lines
        spec = {**spec, "records": max(records, 1)}
        day = datetime.now(UTC).date().isoformat()
        key = key or hashlib.sha256(f"{sha}:{sorted(spec.items())}:{day}".encode()).hexdigest()
        job = _check(self._send("POST", "/v1/verification-jobs", json=spec, headers={"Idempotency-Key": key}), 201)
        if job["status"] == "awaiting_input":
            digest = base64.b64encode(bytes.fromhex(sha)).decode()
            media = "text/csv" if spec["format"] == "csv" else "application/x-ndjson"
            headers = {"Content-Type": media, "Content-Digest": f"sha-256=:{digest}:"}
            upload: dict[str, Any] = {"content": _pieces(path), "timeout": None, "headers": headers, "retry": False}
            response = self._send("PUT", job["input_url"], **upload)
            if response.status_code == 401:  # the file is read once per send: a new token, then again
                self.refresh()
                response = self._send("PUT", job["input_url"], **{**upload, "content": _pieces(path)})
            _check(response, 202)
        return job

    def status(self, job_id: str) -> dict[str, Any]:
        return _check(self._send("GET", f"/v1/verification-jobs/{job_id}"), 200)

    def cancel(self, job_id: str) -> dict[str, Any]:
        return _check(self._send("DELETE", f"/v1/verification-jobs/{job_id}"), 200)

    def follow(self, job_id: str, out: TextIO | None = sys.stderr, every_s: float = 0.5) -> dict[str, Any]:
        while True:
            status = self.status(job_id)
            if out is not None:
                out.write("\r" + progress_line(status))
                out.flush()
            if status["status"] in ENDED:
                if out is not None:
                    out.write("\n")
                return status
            time.sleep(every_s)

    def download(self, job_id: str, kind: str, path: Path) -> int:
        """The results (or errors) streamed to `path`; the number of bytes written."""
        written = 0
        self.status(job_id)  # a fresh token before a long download
        with self.http.stream(
            "GET", f"/v1/verification-jobs/{job_id}/{kind}", headers={"Authorization": f"Bearer {self._token}"}
        ) as response:
            if response.status_code != 200:
                response.read()
                _check(response, 200)
            with open(path, "wb") as handle:
                for piece in response.iter_bytes():
                    handle.write(piece)
                    written += len(piece)
        return written


def progress_line(status: dict[str, Any], width: int = 30) -> str:
    total, done = status.get("total") or 0, status.get("processed") or 0
    share = done / total if total else 0.0
    bar = "#" * int(share * width) + "." * (width - int(share * width))
    eta = status.get("eta_s")
    tail = f" eta {eta:.0f}s" if isinstance(eta, int | float) and status["status"] == "running" else ""
    return (
        f"[{bar}] {share:6.1%} {done:,}/{total:,} records, {status.get('errors') or 0:,} invalid, "
        f"{status['status']}{tail}   "
    )
