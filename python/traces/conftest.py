"""Fixtures for the trace tests: a real OTLP receiver (Arize Phoenix, from PyPI) on loopback,
and daemons exporting to it.

These tests run in their own environment (requirements.txt): Phoenix pins a large set of
libraries of its own."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

PYTHON = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PYTHON))

from tests.conftest import REPO, Daemon, pb  # noqa: E402, F401  (pb is a fixture)

TASK = "credit_risk"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Phoenix:
    """`phoenix serve` on two free loopback ports: OTLP/gRPC in, REST out."""

    def __init__(self, workdir: Path):
        self.http_port, self.grpc_port = free_port(), free_port()
        env = {
            **os.environ,
            "PHOENIX_WORKING_DIR": str(workdir),
            "PHOENIX_HOST": "127.0.0.1",
            "PHOENIX_PORT": str(self.http_port),
            "PHOENIX_GRPC_PORT": str(self.grpc_port),
            "PHOENIX_TELEMETRY_ENABLED": "false",
        }
        phoenix = Path(sys.executable).with_name("phoenix")
        self.log = open(workdir / "phoenix.log", "w")  # noqa: SIM115  (closed in stop)
        self.proc = subprocess.Popen(
            [str(phoenix), "serve"], env=env, stdout=self.log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 120
        while not self._healthy():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail("phoenix did not start:\n" + (workdir / "phoenix.log").read_text()[-3000:])
            time.sleep(0.2)  # polling a condition, not timing anything

    @property
    def otlp(self) -> str:
        return f"http://127.0.0.1:{self.grpc_port}"

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/healthz", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def spans(self, project: str) -> list[dict]:
        """Every span the receiver stored for `project`, attributes flattened to a dict."""
        url = f"http://127.0.0.1:{self.http_port}/v1/projects/{project}/spans/otlpv1?limit=1000"
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                data = json.load(r)["data"]
        except urllib.error.HTTPError as e:
            if e.code == 404:  # no span of the project has arrived yet
                return []
            raise
        for span in data:
            span["attrs"] = {
                a["key"]: next(v for v in a["value"].values() if v is not None)
                for a in span["attributes"] or []
            }
        return data

    def wait_for(self, project: str, ready, what: str, timeout: float = 60.0) -> list[dict]:
        """Polls the receiver until `ready(spans)`; fails naming `what` after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            spans = self.spans(project)
            if ready(spans):
                return spans
            if time.monotonic() > deadline:
                pytest.fail(f"{what}: not in the receiver after {timeout} s; it holds {spans}")
            time.sleep(0.2)  # polling a condition, not timing anything

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


@pytest.fixture(scope="session")
def phoenix(tmp_path_factory):
    p = Phoenix(tmp_path_factory.mktemp("phoenix"))
    yield p
    p.stop()


@pytest.fixture(scope="session")
def model_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    shutil.copytree(REPO / "models" / TASK / "v2", root / TASK / "v2")
    (root / TASK / "current").symlink_to("v2")
    return root


def golden_features(n: int) -> list[dict]:
    """The first `n` golden rows of the example bundle that carry every field."""
    lines = (REPO / "models" / TASK / "v2" / "golden.jsonl").read_text().splitlines()
    rows = [json.loads(line)["features"] for line in lines]
    full = max(len(r) for r in rows)
    return [r for r in rows if len(r) == full][:n]
