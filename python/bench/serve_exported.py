"""Export time, and Predict latency and throughput for exported models beside the example bundle.

Exports a random forest, a gradient-boosted regressor, and one German Credit GBDT pipeline twice:
as the schema form (the estimator over the schema's float matrix) and as the raw-input form (the
whole pipeline, 20 named inputs, 13 of them strings). Measures the two forms in-process (the
`inprocess` criterion bench: µs per row at 1 and 256 rows), then serves everything with the
example bundle (credit_risk v2) from one release daemon and drives each task with h2load
(`apt-get install nghttp2-client`): one connection (serial latency), then 32 connections of one
stream each. Every answer is also counted by the daemon (`modeld_requests_total`); a run with
any non-OK status fails. Bounded: BENCH_SECONDS per measurement (default 5) after a 1 s warm-up.

Usage (from the repository root, after `cargo build --release`):
    .venv/bin/python python/bench/serve_exported.py
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor, RandomForestClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder

from modeld_bundle import export
from modeld_bundle.examples import LABEL, german_credit

REPO = Path(__file__).resolve().parents[2]
SECONDS = int(os.environ.get("BENCH_SECONDS", "5"))


def stubs(work: Path):
    from grpc_tools import protoc

    include = Path(protoc.__file__).parent / "_proto"
    args = ["protoc", f"-I{REPO / 'proto'}", f"-I{include}", f"--python_out={work}"]
    assert protoc.main([*args, str(REPO / "proto/modeld/v1/inference.proto")]) == 0
    sys.path.insert(0, str(work))
    from modeld.v1 import inference_pb2

    return inference_pb2


def frame(message: bytes) -> bytes:
    return b"\0" + len(message).to_bytes(4, "big") + message


def h2load(url: str, body: Path, conns: int, log: Path) -> tuple[float, float, float]:
    log.unlink(missing_ok=True)
    out = subprocess.run(
        [
            "h2load",
            "-t",
            "1",
            "-m",
            "1",
            "-c",
            str(conns),
            "--warm-up-time",
            "1",
            "-D",
            str(SECONDS),
            f"--data={body}",
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
            f"--log-file={log}",
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"finished in [\d.]+s, ([\d.]+) req/s", out).group(1))
    micros = sorted(int(line.split("\t")[2]) for line in log.read_text().splitlines())
    pct = lambda q: micros[min(int(len(micros) * q), len(micros) - 1)] / 1e3  # noqa: E731
    return rps, pct(0.5), pct(0.99)


def failures(admin: str) -> float:
    text = urllib.request.urlopen(f"http://{admin}/metrics").read().decode()
    bad = [
        ln for ln in text.splitlines() if ln.startswith("modeld_requests_total{") and 'code="OK"' not in ln
    ]
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in bad)


def inprocess(root: Path) -> None:
    """The criterion `inprocess` bench on the two GBDT forms: µs per row, preprocessing + run."""
    env = {
        **os.environ,
        "INPROCESS_BUNDLES": f"schema={root / 'gbdt_schema/v1'},raw-input={root / 'gbdt_raw/v1'}",
    }
    out = subprocess.run(
        [
            "cargo",
            "bench",
            "--quiet",
            "--bench",
            "inprocess",
            "--",
            "--warm-up-time",
            "1",
            "--measurement-time",
            "3",
            "preprocess",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    print("\nin-process, German Credit GBDT (100 x depth 3), preprocessing + model run, µs per row")
    print(f"{'form':<12} {'1 row':>8} {'256 rows':>9}")
    units = {"ns": 1e-3, "µs": 1.0, "us": 1.0, "ms": 1e3}
    figures: dict[str, dict[int, float]] = {}
    for m in re.finditer(r"predict/([\w-]+)/preprocess\+run/(\d+)\s+time:\s+\[\S+ \S+ (\S+) (\S+)", out):
        form, rows, median, unit = m.group(1), int(m.group(2)), float(m.group(3)), m.group(4)
        figures.setdefault(form, {})[rows] = median * units[unit] / rows
    for form, per in figures.items():
        print(f"{form:<12} {per.get(1, float('nan')):>8.2f} {per.get(256, float('nan')):>9.2f}")


def wait_ready(admin: str, timeout: float = 120.0) -> None:
    """/readyz answers 200 once every task has a live version."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if urllib.request.urlopen(f"http://{admin}/readyz").status == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            sys.exit("the daemon did not become ready")
        time.sleep(0.05)  # polling a condition


@contextlib.contextmanager
def serving(root: Path, work: Path):
    """The release daemon over `root` for the block (its gRPC and admin addresses); afterwards,
    a run where any call got an error status fails; the daemon is stopped, `work` removed."""
    daemon, grpc, admin = serve(root)
    try:
        yield grpc, admin
        bad = failures(admin)
        if bad:
            sys.exit(f"{bad:.0f} calls were answered with an error status")
        print("every call answered OK (modeld_requests_total)")
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


def serve(root: Path) -> tuple[subprocess.Popen, str, str]:
    """The release daemon over `root` on ports it picks, ready; its gRPC and admin addresses."""
    env = {
        **os.environ,
        "MODELD_MODEL_ROOT": str(root),
        "MODELD_GRPC_ADDR": "127.0.0.1:0",
        "MODELD_ADMIN_ADDR": "127.0.0.1:0",
        "MODELD_HTTP_ADDR": "127.0.0.1:0",
        "MODELD_CONFIG": "/dev/null",
        "MODELD_LOG_FORMAT": "json",
        "MODELD_ORT_LIBRARY": str(REPO / ".ort/libonnxruntime.so.1.31.1"),
    }
    daemon = subprocess.Popen(
        [str(REPO / "target/release/modeld"), "serve"], env=env, stderr=subprocess.PIPE, text=True
    )
    for line in daemon.stderr:
        entry = json.loads(line)
        if entry.get("message") == "listening":
            grpc, admin = entry["grpc"], entry["admin"]
            break
    else:
        sys.exit("the daemon exited before listening")
    # Keep reading the log so the daemon never blocks on a full pipe.
    threading.Thread(target=lambda: [None for _ in daemon.stderr], daemon=True).start()
    wait_ready(admin)
    return daemon, grpc, admin


def main():
    work = Path(tempfile.mkdtemp(prefix="modeld-bench-"))
    pb2 = stubs(work)
    df = german_credit()
    y = (df.pop(LABEL) == "bad").astype(int)
    cats = [c for c in df.columns if not pd.api.types.is_numeric_dtype(df[c])]
    root = work / "models"
    shutil.copytree(REPO / "models" / "credit_risk" / "v2", root / "credit_risk" / "v2")
    forest = Pipeline(
        [
            (
                "prep",
                ColumnTransformer(
                    [("cat", OneHotEncoder(handle_unknown="ignore"), cats)], remainder="passthrough"
                ),
            ),
            ("rf", RandomForestClassifier(n_estimators=100, max_depth=8, random_state=0)),
        ]
    ).fit(df, y)
    amount = df["credit_amount"].astype(float)
    features = df.drop(columns=["credit_amount"])
    regressor = Pipeline(
        [
            ("prep", ColumnTransformer([("cat", OrdinalEncoder(), cats)], remainder="passthrough")),
            ("gbr", GradientBoostingRegressor(n_estimators=100, max_depth=3, random_state=0)),
        ]
    ).fit(features, amount)
    gbdt = Pipeline(
        [
            ("prep", ColumnTransformer([("cat", OrdinalEncoder(), cats)], remainder="passthrough")),
            ("gbdt", GradientBoostingClassifier(n_estimators=100, max_depth=3, random_state=0)),
        ]
    ).fit(df, y)
    print("export time")
    exports = (
        ("forest", forest, df, "auto"),
        ("amount", regressor, features, "auto"),
        ("gbdt_schema", gbdt, df, "schema"),
        ("gbdt_raw", gbdt, df, "onnx"),
    )
    for task, model, sample, mode in exports:
        started = time.monotonic()
        report = export(model, sample, root / task / "v1", task=task, version="v1", mode=mode)
        took = time.monotonic() - started
        print(
            f"  {task:<12} {type(model[-1]).__name__:<27} {report.form:<6} {took:5.2f} s "
            f"({len(report.fields)} fields, {report.golden_rows} golden rows)"
        )
    tasks = ["credit_risk", *(t for t, *_ in exports)]
    for task in tasks:
        (root / task / "current").symlink_to("v2" if task == "credit_risk" else "v1")
    inprocess(root)

    with serving(root, work) as (grpc, admin):
        print(f"\nPredict, one German Credit row of named raw features per call, h2load, {SECONDS} s each")
        print(f"{'task':<12} {'conns':>5} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
        first = df.iloc[0]
        for task in tasks:
            row = pb2.Row(
                row_id="bench",
                features={
                    c: pb2.Value(text=str(v)) if c in cats else pb2.Value(integer=int(v))
                    for c, v in first.items()
                    if not (task == "amount" and c == "credit_amount")
                },
            )
            body = work / f"{task}.bin"
            body.write_bytes(frame(pb2.PredictRequest(task=task, rows=[row]).SerializeToString()))
            for conns in (1, 32):
                rps, p50, p99 = h2load(
                    f"http://{grpc}/modeld.v1.Inference/Predict", body, conns, work / "log.tsv"
                )
                print(f"{task:<12} {conns:>5} {rps:>9.0f} {p50:>8.3f} {p99:>8.3f}")


if __name__ == "__main__":
    main()
