"""What traces cost: unary Predict with tracing off, on at a sampling ratio of 0.01 and at 1.0.

One run: a real OTLP receiver (Arize Phoenix, from the trace tests' environment,
`make .venv-traces/.installed`) on loopback, and the release daemon started five ways over the
example models: no OTLP endpoint; `OTEL_TRACES_SAMPLER=traceidratio` with
`OTEL_TRACES_SAMPLER_ARG` 0.01 and 1.0, exporting to Phoenix; and the same two ratios exporting
to an address where no collector listens. The receiver shares the machine's cores with the
daemon and h2load, so the Phoenix rows include what ingesting the spans costs it; the rows
without a collector show the daemon's own cost of building and queueing spans (and that a
collector that is down slows nothing); the receiver is stopped (SIGSTOP) while they run.
h2load (`apt-get install nghttp2-client`) drives Predict with one German Credit row per call at
32 connections of one stream each. The cases alternate over ROUNDS rounds and the best round of
each is reported. Every answer is counted by the daemon; a run with any non-OK status fails.
Bounded: BENCH_SECONDS per measurement.

Usage (from the repository root, after `cargo build --release`):
    .venv/bin/python python/bench/tracing.py
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serve_exported import REPO, failures, frame, h2load, serve, stubs  # noqa: E402

from modeld_bundle.examples import LABEL, german_credit  # noqa: E402

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "2"))
CASES = (
    ("tracing off", None, False),
    ("0.01, Phoenix", "0.01", True),
    ("1.0, Phoenix", "1.0", True),
    ("0.01, no collector", "0.01", False),
    ("1.0, no collector", "1.0", False),
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def phoenix(work: Path) -> tuple[subprocess.Popen, int]:
    binary = REPO / ".venv-traces" / "bin" / "phoenix"
    if not binary.exists():
        sys.exit(f"{binary} not found: make .venv-traces/.installed")
    http, grpc = free_port(), free_port()
    env = {
        **os.environ,
        "PHOENIX_WORKING_DIR": str(work / "phoenix"),
        "PHOENIX_HOST": "127.0.0.1",
        "PHOENIX_PORT": str(http),
        "PHOENIX_GRPC_PORT": str(grpc),
        "PHOENIX_TELEMETRY_ENABLED": "false",
    }
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    proc = subprocess.Popen([str(binary), "serve"], env=env, **quiet)
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{http}/healthz", timeout=2).close()
            return proc, grpc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                sys.exit("phoenix did not start")
            time.sleep(0.2)  # polling a condition


def measure(ratio: str | None, otlp: int, body: Path, log: Path) -> tuple[float, float, float]:
    """h2load against a fresh daemon exporting to port `otlp` at `ratio` (None: tracing off)."""
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG"):
        os.environ.pop(name, None)
    if ratio is not None:
        os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{otlp}"
        os.environ["OTEL_TRACES_SAMPLER"] = "traceidratio"
        os.environ["OTEL_TRACES_SAMPLER_ARG"] = ratio
    os.environ["MODELD_TASKS"] = "credit_risk"
    daemon, grpc, admin = serve(REPO / "models")
    try:
        got = h2load(f"http://{grpc}/modeld.v1.Inference/Predict", body, 32, log)
        bad = failures(admin)
        if bad:
            sys.exit(f"{bad:.0f} calls were answered with an error status")
        return got
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=60)


def main():
    work = Path(tempfile.mkdtemp(prefix="modeld-bench-"))
    pb2 = stubs(work)
    first = german_credit().drop(columns=[LABEL]).iloc[0]
    value = lambda v: pb2.Value(text=v) if isinstance(v, str) else pb2.Value(integer=int(v))  # noqa: E731
    features = {c: value(v) for c, v in first.items()}
    body = work / "predict.bin"
    request = pb2.PredictRequest(task="credit_risk", rows=[pb2.Row(row_id="bench", features=features)])
    body.write_bytes(frame(request.SerializeToString()))
    receiver, otlp = phoenix(work)
    try:
        best: dict[str, tuple[float, float, float]] = {}
        for _ in range(ROUNDS):
            for name, ratio, received in CASES:
                # The receiver runs only for its own cases: a backlog of spans it is still
                # ingesting must not take CPU from the other cases' measurements.
                receiver.send_signal(signal.SIGCONT if received else signal.SIGSTOP)
                got = measure(ratio, otlp if received else free_port(), body, work / "log.tsv")
                if name not in best or got[0] > best[name][0]:
                    best[name] = got
    finally:
        receiver.send_signal(signal.SIGCONT)
        receiver.terminate()
        receiver.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)
    seconds = os.environ.get("BENCH_SECONDS", "5")
    print(f"Predict, one German Credit row per call, 32 connections, h2load, {ROUNDS} rounds of {seconds} s")
    print(f"{'sampling, receiver':<20} {'req/s':>9} {'vs off':>7} {'p50 ms':>7} {'p99 ms':>7}")
    off = best["tracing off"][0]
    for name, _, _ in CASES:
        rps, p50, p99 = best[name]
        print(f"{name:<20} {rps:>9.0f} {rps / off:>7.1%} {p50:>7.3f} {p99:>7.3f}")


if __name__ == "__main__":
    main()
