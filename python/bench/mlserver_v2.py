"""modeld's V2 gRPC face beside MLServer's, request for request, in one run.

Fits the example model (credit_risk v2: ordinal encoding and 100 gradient-boosted trees, the
pipeline and split of training/pipelines.py) and serves it with MLServer's scikit-learn runtime,
and serves the committed v2 bundle of the same pipeline with the modeld release binary. Both get
the same V2 `ModelInfer` call built with MLServer's own protobuf module: one German Credit row,
20 input tensors with typed contents (13 BYTES, 7 INT64), asking for the class probabilities
(MLServer decodes the inputs as one pandas row, `content_type: pd`, its text inputs as `str`;
modeld ignores these parameters). h2load (`apt-get install nghttp2-client`) drives each at 32
connections, one stream each, after one checked call per server; the same probabilities are
required of both.

Bounded: BENCH_SECONDS per measurement (default 5) after a 1 s warm-up.

Usage (from the repository root, after `cargo build --release`):
    make .venv-mlserver/.installed && .venv-mlserver/bin/python python/bench/mlserver_v2.py
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import grpc
import joblib
import numpy as np
from mlserver.grpc import dataplane_pb2 as pb
from mlserver.grpc import dataplane_pb2_grpc as stubs

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "training"))
from pipelines import example_models, split  # noqa: E402

TASK = "credit_risk"
SECONDS = int(os.environ.get("BENCH_SECONDS", "5"))
CONNECTIONS = 32


def german_credit():
    """The table, by the export package's loader (pandas and pip only)."""
    path = REPO / "python" / "modeld_bundle" / "examples.py"
    spec = importlib.util.spec_from_file_location("modeld_examples", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.german_credit(), module.LABEL


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{what} exited before it was ready")
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)  # polling a condition, not timing anything
    sys.exit(f"{what} not ready after 120 s")


def request(row) -> pb.ModelInferRequest:
    inputs = []
    for name, value in row.items():
        tensor = pb.ModelInferRequest.InferInputTensor(name=name, shape=[1])
        if isinstance(value, str):
            tensor.datatype = "BYTES"
            tensor.contents.bytes_contents.append(value.encode())
            # MLServer's codec hands BYTES over as bytes unless told they are text.
            tensor.parameters["content_type"].string_param = "str"
        else:
            tensor.datatype = "INT64"
            tensor.contents.int64_contents.append(int(value))
        inputs.append(tensor)
    return pb.ModelInferRequest(
        model_name=TASK,
        inputs=inputs,
        outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="predict_proba")],
        parameters={"content_type": pb.InferParameter(string_param="pd")},
    )


def probabilities(response: pb.ModelInferResponse) -> np.ndarray:
    output = response.outputs[0]
    if response.raw_output_contents:
        dtype = np.float64 if output.datatype == "FP64" else np.float32
        return np.frombuffer(response.raw_output_contents[0], dtype=dtype)
    c = output.contents
    return np.array(list(c.fp64_contents) or list(c.fp32_contents))


def h2load(address: str, body: Path, work: Path) -> tuple[float, float, float]:
    log = work / "requests.tsv"
    log.unlink(missing_ok=True)
    out = subprocess.run(
        ["h2load", "-t", "1", "-m", "1", "-c", str(CONNECTIONS), "--warm-up-time", "1", "-D", str(SECONDS)]
        + [f"--data={body}", "-H", "content-type: application/grpc", "-H", "te: trailers"]
        + [f"--log-file={log}", f"http://{address}/inference.GRPCInferenceService/ModelInfer"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    failed = re.search(r"(\d+) failed", out)
    assert failed and failed.group(1) == "0", out
    rps = float(re.search(r"finished in [^,]+, ([\d.]+) req/s", out).group(1))
    micros = sorted(int(line.split("\t")[2]) for line in log.read_text().splitlines())
    pct = lambda q: micros[min(int(len(micros) * q), len(micros) - 1)] / 1e3  # noqa: E731
    return rps, pct(0.50), pct(0.99)


def main() -> None:
    binary = REPO / "target" / "release" / "modeld"
    if not binary.is_file():
        sys.exit("build modeld first: cargo build --release")
    if shutil.which("h2load") is None:
        sys.exit("h2load not found: apt-get install nghttp2-client")
    work = Path(tempfile.mkdtemp(prefix="mlserver-bench-"))
    df, label = german_credit()
    x_train, _, y_train, _ = split(df, label)
    _, pipeline = example_models(x_train)["v2"]
    pipeline.fit(x_train, y_train)

    served = work / "mlserver"
    (served / TASK).mkdir(parents=True)
    joblib.dump(pipeline, served / TASK / "model.joblib")
    (served / TASK / "model-settings.json").write_text(
        json.dumps(
            {
                "name": TASK,
                "implementation": "mlserver_sklearn.SKLearnModel",
                "parameters": {"uri": "./model.joblib"},
            }
        )
    )
    ml_http, ml_grpc, ml_metrics = free_port(), free_port(), free_port()
    (served / "settings.json").write_text(
        json.dumps(
            {"http_port": ml_http, "grpc_port": ml_grpc, "metrics_port": ml_metrics, "host": "127.0.0.1"}
        )
    )
    root = work / "models"
    shutil.copytree(REPO / "models" / TASK / "v2", root / TASK / "v2")
    (root / TASK / "current").symlink_to("v2")
    md_grpc, md_http, md_admin = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "MODELD_ORT_LIBRARY": str(REPO / ".ort" / "libonnxruntime.so.1.31.1"),
        "MODELD_MODEL_ROOT": str(root),
        "MODELD_CONFIG": "/dev/null",
        "MODELD_GRPC_ADDR": f"127.0.0.1:{md_grpc}",
        "MODELD_HTTP_ADDR": f"127.0.0.1:{md_http}",
        "MODELD_ADMIN_ADDR": f"127.0.0.1:{md_admin}",
        "MODELD_INFERENCE_THREADS": "2",
        "MODELD_LOG": "warn",
    }
    # Its own process group: MLServer runs its inference workers as child processes.
    mlserver = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlserver")), "start", str(served)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    modeld = subprocess.Popen(
        [str(binary), "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_ready(f"http://127.0.0.1:{ml_http}/v2/models/{TASK}/ready", mlserver, "MLServer")
        wait_ready(f"http://127.0.0.1:{md_admin}/readyz", modeld, "modeld")
        message = request(x_train.iloc[0].to_dict())
        body = work / "infer.bin"
        encoded = message.SerializeToString()
        body.write_bytes(b"\0" + len(encoded).to_bytes(4, "big") + encoded)

        def modeld_message():
            # modeld names its outputs; the rest of the call is byte for byte the same.
            m = pb.ModelInferRequest()
            m.CopyFrom(message)
            del m.outputs[:]
            m.outputs.add(name="probabilities")
            return m

        expected = pipeline.predict_proba(x_train.iloc[[0]])[0]
        answers = {}
        for name, port, call in (("MLServer", ml_grpc, message), ("modeld", md_grpc, modeld_message())):
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                answers[name] = probabilities(stubs.GRPCInferenceServiceStub(channel).ModelInfer(call))
            np.testing.assert_allclose(answers[name], expected, atol=1e-5, err_msg=name)
        md_body = work / "infer-modeld.bin"
        encoded = modeld_message().SerializeToString()
        md_body.write_bytes(b"\0" + len(encoded).to_bytes(4, "big") + encoded)

        print(
            f"V2 gRPC ModelInfer, one German Credit row (20 typed tensors), {CONNECTIONS} connections, h2load"
        )
        print(f"{'server':<10} {'req/s':>10} {'p50 ms':>9} {'p99 ms':>9}")
        figures = {}
        for name, port, path in (("modeld", md_grpc, md_body), ("MLServer", ml_grpc, body)):
            figures[name] = h2load(f"127.0.0.1:{port}", path, work)
            rps, p50, p99 = figures[name]
            print(f"{name:<10} {rps:>10.0f} {p50:>9.3f} {p99:>9.3f}")
        ratio = figures["modeld"][0] / figures["MLServer"][0]
        print(f"\nmodeld answers {ratio:.0f}x the calls per second of MLServer")
    finally:
        modeld.terminate()
        modeld.wait(timeout=30)
        os.killpg(mlserver.pid, signal.SIGTERM)
        try:
            mlserver.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(mlserver.pid, signal.SIGKILL)
            mlserver.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
