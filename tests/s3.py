"""A real S3-protocol server for the tests: moto's server mode, in a process of its own (so a test can
stop it and start it again on the same port, as an outage would)."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx

from orchestrator.comfy.worker import free_port


class S3Server:
    access_key = "medialab-test"
    secret_key = "medialab-test-secret"

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> S3Server:
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                httpx.get(f"http://{self.endpoint}/", timeout=1)
                return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("moto server did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def settings(self) -> dict[str, str]:
        return {"storage": "s3", "s3_endpoint": self.endpoint, "s3_access_key": self.access_key,
                "s3_secret_key": self.secret_key, "s3_bucket": "medialab-test"}
