"""The HTTP/JSON face from a Python HTTP client (urllib, no third-party client): every German Credit
golden row through both routes gets gRPC Predict's probabilities; the OpenAPI document validates,
and every route it lists (the V2 REST routes too) answers with a body valid against the schema it
documents."""

from __future__ import annotations

import gzip
import json
import urllib.error
import urllib.request

import grpc
import pytest
from conftest import REPO, Daemon
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

TASK = "credit_risk"
GOLDEN = [
    json.loads(line)
    for line in (REPO / "models" / TASK / "v2" / "golden.jsonl").read_text().splitlines()
    if line
]


@pytest.fixture(scope="module")
def daemon(pb):
    d = Daemon(REPO / "models", {"MODELD_TASKS": TASK})
    try:
        d.wait_serving(pb, [TASK])
        yield d
    finally:
        d.stop()


def call(daemon, method, path, body=None, headers=None):
    """One HTTP call: status, headers and the parsed JSON answer."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://{daemon.http}{path}", data=data, method=method)
    request.add_header("content-type", "application/json")
    for k, v in (headers or {}).items():
        request.add_header(k, v)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            raw, status, head = response.read(), response.status, response.headers
    except urllib.error.HTTPError as e:
        raw, status, head = e.read(), e.code, e.headers
    if head.get("content-encoding") == "gzip":
        raw = gzip.decompress(raw)
    return status, head, json.loads(raw)


def grpc_probabilities(daemon, pb):
    pb2, stubs = pb
    rows = []
    for g in GOLDEN:
        row = pb2.Row()
        for name, value in g["features"].items():
            if isinstance(value, str):
                row.features[name].text = value
            elif isinstance(value, int):
                row.features[name].integer = value
            else:
                row.features[name].number = value
        rows.append(row)
    with grpc.insecure_channel(daemon.grpc) as channel:
        answer = stubs.InferenceStub(channel).Predict(pb2.PredictRequest(task=TASK, rows=rows))
    return [list(p.probabilities) for p in answer.predictions]


def assert_close(got, expected):
    assert len(got) == len(expected)
    assert max(abs(a - b) for a, b in zip(got, expected, strict=True)) <= 1e-5, (got, expected)


def test_every_golden_row_gets_grpc_answers_on_both_routes(daemon, pb):
    expected = grpc_probabilities(daemon, pb)
    rows = [g["features"] for g in GOLDEN]
    status, _, answer = call(daemon, "POST", f"/v1/tasks/{TASK}/predict", {"rows": rows})
    assert status == 200, answer
    assert answer["version"] == "v2"
    for got, want, golden in zip(answer["predictions"], expected, GOLDEN, strict=True):
        assert_close(got["probabilities"], want)
        assert_close(got["probabilities"], golden["probabilities"])
    status, _, answer = call(daemon, "POST", f"/v1/models/{TASK}:predict", {"instances": rows})
    assert status == 200, answer
    assert len(answer["predictions"]) == len(GOLDEN)
    for got, want in zip(answer["predictions"], expected, strict=True):
        assert_close(got["probabilities"], want)


def test_errors_are_json_with_the_documented_status(daemon):
    row = dict(GOLDEN[0]["features"], age_in_years="old")
    status, _, answer = call(
        daemon, "POST", f"/v1/tasks/{TASK}/predict", {"rows": [GOLDEN[0]["features"], row]}
    )
    assert status == 400
    assert answer["code"] == "INVALID_ARGUMENT"
    assert (answer["row"], answer["field"]) == (1, "age_in_years")
    status, _, answer = call(daemon, "POST", "/v1/tasks/nope/predict", {"rows": [row]})
    assert (status, answer["code"]) == (404, "NOT_FOUND")


def test_openapi_document_is_valid_and_every_route_answers_as_documented(daemon):
    status, _, doc = call(daemon, "GET", "/openapi.json")
    assert status == 200
    validate(doc)  # raises on an invalid OpenAPI 3.1 document

    def check(schema, body):
        # Component references resolve inside the document.
        Draft202012Validator({**schema, "components": doc["components"]}).validate(body)

    row = GOLDEN[0]["features"]
    # The same row as V2 tensors: one per field, typed as the model metadata gives them.
    tensors = [
        {"name": k, "datatype": "BYTES" if isinstance(v, str) else "INT64", "shape": [1], "data": [v]}
        for k, v in row.items()
    ]
    examples = {
        ("post", "/v1/tasks/{task}/predict"): {"rows": [row], "row_ids": ["r1"], "request_id": "q"},
        ("post", "/v1/models/{task}:predict"): {"instances": [row]},
        ("post", "/v2/models/{model}/infer"): {"id": "q", "inputs": tensors},
        ("post", "/v2/models/{model}/versions/{version}/infer"): {"inputs": tensors},
    }

    def fill(path, task):
        return path.replace("{task}", task).replace("{model}", task).replace("{version}", "v2")

    answered = 0
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            body = examples.get((method, path))
            status, _, answer = call(daemon, method.upper(), fill(path, TASK), body)
            assert status == 200, (path, answer)
            check(operation["responses"]["200"]["content"]["application/json"]["schema"], answer)
            answered += 1
            # The documented error shape, for routes that can fail on the task.
            if "{task}" in path or "{model}" in path:
                status, _, error = call(daemon, method.upper(), fill(path, "nope"), body)
                assert status == 404
                check(operation["responses"]["404"]["content"]["application/json"]["schema"], error)
    assert answered == 14


def test_gzip_request_and_response(daemon):
    body = gzip.compress(json.dumps({"rows": [GOLDEN[0]["features"]]}).encode())
    request = urllib.request.Request(
        f"http://{daemon.http}/v1/tasks/{TASK}/predict", data=body, method="POST"
    )
    request.add_header("content-type", "application/json")
    request.add_header("content-encoding", "gzip")
    request.add_header("accept-encoding", "gzip")
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.headers["content-encoding"] == "gzip"
        answer = json.loads(gzip.decompress(response.read()))
    assert_close(answer["predictions"][0]["probabilities"], GOLDEN[0]["probabilities"])
