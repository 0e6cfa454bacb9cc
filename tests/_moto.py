"""A moto S3 server in its own process on loopback, for object-storage tests.

The server is a separate process (not moto's in-process mock) because the silo
workers are separate processes too: they reach it over HTTP like a real S3.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
KEY = "fedsilo-test-key"
SECRET = "fedsilo-test-secret"
REGION = "us-east-1"


@dataclass(frozen=True, slots=True)
class MotoS3:
    """Where the fake S3 answers and the fake credentials it accepts."""

    endpoint: str
    key: str = KEY
    secret: str = SECRET
    region: str = REGION

    def storage_options(self, style: str = "client_kwargs") -> dict[str, Any]:
        """Return s3fs storage options in one of the two spellings s3fs accepts."""
        if style == "client_kwargs":
            return {
                "key": self.key,
                "secret": self.secret,
                "client_kwargs": {"endpoint_url": self.endpoint},
            }
        if style == "endpoint_url":
            return {
                "key": self.key,
                "secret": self.secret,
                "endpoint_url": self.endpoint,
            }
        raise ValueError(f"unknown style {style!r}")

    def env(self) -> dict[str, str]:
        """Return the standard AWS variables that point any client at this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.key,
            "AWS_SECRET_ACCESS_KEY": self.secret,
            "AWS_ENDPOINT_URL": self.endpoint,
        }

    def filesystem(self) -> Any:
        """Return an s3fs filesystem on this server (a fresh, uncached instance)."""
        import s3fs

        return s3fs.S3FileSystem(
            key=self.key,
            secret=self.secret,
            endpoint_url=self.endpoint,
            skip_instance_cache=True,
        )

    def make_bucket(self, name: str) -> str:
        """Create a bucket and return its name."""
        self.filesystem().mkdir(name)
        return name


def free_port() -> int:
    """Return a TCP port on loopback that is free right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _answers(endpoint: str) -> bool:
    # No proxy: the request must go straight to loopback.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"{endpoint}/moto-api/", timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@contextlib.contextmanager
def moto_server(log: Path, timeout: float = 30.0) -> Iterator[MotoS3]:
    """Run ``python -m moto.server`` on a free loopback port until the block ends.

    Waits at most ``timeout`` seconds for the server to answer; a port taken by
    someone else between choosing and binding it is retried twice.
    """
    for _attempt in range(3):
        port = free_port()
        endpoint = f"http://{HOST}:{port}"
        with log.open("ab") as sink:
            process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)],
                stdout=sink,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        try:
            deadline = time.monotonic() + timeout
            while process.poll() is None and time.monotonic() < deadline:
                if _answers(endpoint):
                    break
                time.sleep(0.05)
            else:
                if process.poll() is None:
                    raise RuntimeError(
                        f"moto server at {endpoint} did not answer within "
                        f"{timeout:g}s; see {log}"
                    )
                continue  # exited early (port taken?): try another port
            yield MotoS3(endpoint)
            return
        finally:
            _stop(process)
    raise RuntimeError(f"moto server did not start; see {log}")
