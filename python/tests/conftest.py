"""Fixtures: the modeld binary under test, a real daemon on loopback, and gRPC stubs generated
from the project's own proto at test time."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

import grpc
import pytest

REPO = Path(__file__).resolve().parents[2]


def modeld_binary() -> Path:
    path = Path(os.environ.get("MODELD_BIN", REPO / "target" / "debug" / "modeld"))
    if not path.is_file():
        pytest.fail(f"{path} not found: build modeld first (cargo build) or set MODELD_BIN")
    return path


def ort_library() -> str:
    default = REPO / ".ort" / "libonnxruntime.so.1.31.1"
    return os.environ.get("MODELD_ORT_LIBRARY", str(default))


def reseal(bundle: Path) -> None:
    """Rewrites MANIFEST.sha256 after a test edited the bundle's files."""
    import hashlib

    lines = []
    for line in (bundle / "MANIFEST.sha256").read_text().splitlines():
        name = line.split()[1]
        lines.append(f"{hashlib.sha256((bundle / name).read_bytes()).hexdigest()}  {name}\n")
    (bundle / "MANIFEST.sha256").write_text("".join(lines))


def modeld(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "MODELD_ORT_LIBRARY": ort_library()}
    done = subprocess.run([str(modeld_binary()), *args], env=env, capture_output=True, text=True, timeout=120)
    if check and done.returncode != 0:
        pytest.fail(f"modeld {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done


@pytest.fixture(scope="session")
def pb(tmp_path_factory):
    """modeld.v1 message and stub modules, compiled from proto/ with grpc_tools."""
    import importlib.util

    out = tmp_path_factory.mktemp("stubs")
    include = Path(importlib.util.find_spec("grpc_tools").origin).parent / "_proto"
    proto = REPO / "proto"
    # In a process of its own: protoc's C++ protobuf must not meet another library's copy
    # (ortools, loaded by optbinning) in this one.
    rc = subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{proto}",
            f"-I{include}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            str(proto / "modeld" / "v1" / "inference.proto"),
        ],
        check=False,
    ).returncode
    assert rc == 0, "protoc failed"
    sys.path.insert(0, str(out))
    from modeld.v1 import inference_pb2, inference_pb2_grpc

    return inference_pb2, inference_pb2_grpc


class Daemon:
    """`modeld serve` over a model root, on ports it picks; stopped with SIGTERM."""

    def __init__(self, root: Path, settings: dict[str, str] | None = None):
        env = {
            **os.environ,
            "MODELD_ORT_LIBRARY": ort_library(),
            "MODELD_MODEL_ROOT": str(root),
            "MODELD_GRPC_ADDR": "127.0.0.1:0",
            "MODELD_ADMIN_ADDR": "127.0.0.1:0",
            "MODELD_HTTP_ADDR": "127.0.0.1:0",
            "MODELD_CONFIG": "/dev/null",
            "MODELD_LOG_FORMAT": "json",
            **(settings or {}),
        }
        self.proc = subprocess.Popen(
            [str(modeld_binary()), "serve"],
            env=env,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._drain, daemon=True).start()
        self.grpc = None
        self.http = None
        while self.grpc is None:
            try:
                line = self.lines.get(timeout=60)
            except queue.Empty:
                self.stop()
                pytest.fail("modeld did not report listening within 60 s")
            if line is None:
                pytest.fail("modeld exited before listening")
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if entry.get("message") == "listening":
                self.grpc = entry["grpc"]
                self.http = entry.get("http") or None
                self.admin = entry.get("admin")

    def wait_serving(self, pb, tasks, timeout=120.0, loaded=()):
        """Waits until every task has a live version and the versions in `loaded` are loaded
        (bundles load in the background; kept versions after the live one)."""
        import time

        pb2, stubs = pb
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.grpc) as channel:
            stub = stubs.InferenceStub(channel)
            while True:
                health = stub.Health(pb2.HealthRequest())
                live = {t.task for t in health.tasks if t.serving}
                versions = {v for t in health.tasks for v in t.loaded_versions}
                if set(tasks) <= live and set(loaded) <= versions:
                    return
                failed = [f"{t.task}: {t.last_error}" for t in health.tasks if not t.serving and t.last_error]
                if failed:
                    pytest.fail("bundles failed to load:\n" + "\n".join(failed))
                if time.monotonic() > deadline:
                    pytest.fail(f"tasks not serving after {timeout} s: {health}")
                time.sleep(0.05)  # polling a condition, not timing anything

    def _drain(self):
        for line in self.proc.stderr:
            self.lines.put(line)
        self.lines.put(None)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)
