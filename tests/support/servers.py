"""Real server processes on loopback for end-to-end tests, each bounded in time and stopped by itself."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from gateway.observability import logging_config

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (httpx.HTTPError, OSError):
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{what} did not come up within {timeout} s")


class GatewayProcess:
    """`uvicorn` serving an app factory in a child process, on a free loopback port."""

    def __init__(
        self,
        env: dict[str, str],
        factory: str = "tests.support.probe_app:create",
        port: int | None = None,
        extra_args: list[str] | None = None,
        prefix: list[str] | None = None,
    ) -> None:
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "GATEWAY_ISSUER": self.base_url, **env}
        self.factory = factory
        self.extra_args = extra_args or []
        self.prefix = prefix or []  # e.g. ["nice", "-n", "10"]
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None

    def start(self, log_path: Path) -> GatewayProcess:
        self.log_path = log_path
        log_config = log_path.with_name(log_path.name + ".logging.json")
        log_config.write_text(json.dumps(logging_config("json")))  # as `jamu serve` logs
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    *self.prefix,
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "--factory",
                    self.factory,
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--no-access-log",
                    "--no-proxy-headers",
                    "--timeout-graceful-shutdown",
                    "3",
                    "--log-config",
                    str(log_config),
                    *self.extra_args,
                ],
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

        def up() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited: {self.logs()}")
            return httpx.get(f"{self.base_url}/healthz", timeout=1).status_code == 200

        wait_until(up, 30, "gateway")
        return self

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self.proc = None


class RedisProcess:
    """A throwaway `redis-server` keeping nothing on disk."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available() -> bool:
        return shutil.which("redis-server") is not None

    def start(self) -> RedisProcess:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def up() -> bool:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")

        wait_until(up, 10, "redis-server")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None


class PostgresProcess:
    """A throwaway PostgreSQL cluster (initdb + pg_ctl) on a free loopback port, trust auth."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.datadir = workdir / "pgdata"
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @staticmethod
    def available() -> bool:
        return shutil.which("initdb") is not None and shutil.which("pg_ctl") is not None

    def start(self) -> PostgresProcess:
        """Raises RuntimeError with PostgreSQL's own words when it cannot run here (e.g. as root)."""
        init = subprocess.run(
            ["initdb", "-D", str(self.datadir), "-U", "postgres", "--auth=trust", "-N"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed: {init.stderr.strip()[-300:]}")
        start = subprocess.run(
            [
                "pg_ctl",
                "-D",
                str(self.datadir),
                "-w",
                "-t",
                "30",
                "-l",
                str(self.datadir / "log"),
                "start",
                "-o",
                f"-p {self.port} -h 127.0.0.1 -k {self.datadir} -c fsync=off",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if start.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {start.stderr.strip()[-300:]}")
        return self

    def stop(self) -> None:
        subprocess.run(
            ["pg_ctl", "-D", str(self.datadir), "-m", "fast", "-w", "stop"],
            capture_output=True,
            timeout=60,
            check=False,
        )


class ThreadedServer:
    """A small ASGI app served by uvicorn in a background thread on a loopback port (fake peers)."""

    def __init__(self, app: Any, what: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.what = what
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> None:
        self.thread.start()
        wait_until(lambda: self.server.started, 10, self.what)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
