"""grpcio, the client most Python callers use, against modeld with mutual TLS and a callers
file: a certificate identity lets a caller in, a bearer token decides over it, a wrong token is
UNAUTHENTICATED, and a caller without a certificate or without TLS does not get an answer."""

from __future__ import annotations

import hashlib
import json
import time

import grpc
import pytest
import trustme
from conftest import REPO, Daemon

TASK = "credit_risk"


def golden_rows(pb2, n: int = 5):
    rows, labels = [], []
    with open(REPO / "models" / TASK / "v2" / "golden.jsonl") as f:
        for line in list(f)[:n]:
            g = json.loads(line)
            features = {}
            for name, value in g["features"].items():
                if isinstance(value, bool):
                    features[name] = pb2.Value(flag=value)
                elif isinstance(value, int):
                    features[name] = pb2.Value(integer=value)
                elif isinstance(value, float):
                    features[name] = pb2.Value(number=value)
                else:
                    features[name] = pb2.Value(text=value)
            rows.append(pb2.Row(row_id=g["row_id"], features=features))
            labels.append(g["label"])
    return rows, labels


@pytest.fixture(scope="module")
def secured(tmp_path_factory, pb):
    pb2, stubs = pb
    pki = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    client = ca.issue_cert("python-client")
    server.private_key_pem.write_to_path(str(pki / "server.key"))
    server.cert_chain_pems[0].write_to_path(str(pki / "server.crt"))
    ca.cert_pem.write_to_path(str(pki / "ca.pem"))
    token_sha256 = hashlib.sha256(b"py-token").hexdigest()
    (pki / "callers.yaml").write_text(
        "callers:\n"
        f"  - {{name: engine, token_sha256: {token_sha256}, tasks: [{TASK}]}}\n"
        "  - {name: notebook, identity: python-client, tasks: [other-task]}\n"
    )
    daemon = Daemon(
        REPO / "models",
        {
            "MODELD_TASKS": TASK,
            "MODELD_TLS_CERT": str(pki / "server.crt"),
            "MODELD_TLS_KEY": str(pki / "server.key"),
            "MODELD_TLS_CLIENT_CA": str(pki / "ca.pem"),
            "MODELD_CALLERS_FILE": str(pki / "callers.yaml"),
        },
    )
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca.cert_pem.bytes(),
        private_key=client.private_key_pem.bytes(),
        certificate_chain=client.cert_chain_pems[0].bytes(),
    )
    channel = grpc.secure_channel(daemon.grpc, credentials)
    stub = stubs.InferenceStub(channel)
    deadline = time.monotonic() + 120
    while not any(t.serving for t in stub.Health(pb2.HealthRequest()).tasks):
        assert time.monotonic() < deadline, "not serving after 120 s"
        time.sleep(0.05)  # polling a condition, not timing anything
    yield daemon, stub, ca
    channel.close()
    daemon.stop()


def test_a_token_over_mutual_tls_is_answered_and_checked_per_task(secured, pb):
    pb2, _ = pb
    _, stub, _ = secured
    rows, labels = golden_rows(pb2)
    request = pb2.PredictRequest(task=TASK, rows=rows)
    answer = stub.Predict(request, metadata=[("authorization", "Bearer py-token")])
    assert [p.label for p in answer.predictions] == labels

    with pytest.raises(grpc.RpcError) as denied:
        stub.Predict(request)  # the certificate's caller may call other-task only
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "caller `notebook` may not call task `credit_risk`" in denied.value.details()

    with pytest.raises(grpc.RpcError) as wrong:
        stub.Predict(request, metadata=[("authorization", "Bearer guessed")])
    assert wrong.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_no_client_certificate_or_no_tls_gets_no_answer(secured, pb):
    pb2, stubs = pb
    daemon, _, ca = secured
    rows, _ = golden_rows(pb2, 1)
    request = pb2.PredictRequest(task=TASK, rows=rows)
    metadata = [("authorization", "Bearer py-token")]
    without_cert = grpc.ssl_channel_credentials(root_certificates=ca.cert_pem.bytes())
    for channel in (grpc.secure_channel(daemon.grpc, without_cert), grpc.insecure_channel(daemon.grpc)):
        with channel, pytest.raises(grpc.RpcError) as refused:
            stubs.InferenceStub(channel).Predict(request, metadata=metadata, timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
