"""Fixtures for the Open Inference Protocol client tests: a real daemon serving the example
bundle, the German Credit table, and gRPC Predict's answers to compare with.

These tests run in their own environment (requirements.txt): the protocol's clients pin
libraries the export package pins differently (the kserve SDK needs pandas < 3)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest

PYTHON = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PYTHON))

from tests.conftest import REPO, Daemon, pb  # noqa: E402, F401  (pb is a fixture)

TASK = "credit_risk"
LABEL = "creditability"


def german_credit():
    """The German Credit table, loaded by the export package's own loader (pandas and pip
    only), without importing the package and its converters."""
    path = PYTHON / "modeld_bundle" / "examples.py"
    spec = importlib.util.spec_from_file_location("modeld_examples", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.german_credit()


@pytest.fixture(scope="session")
def table():
    return german_credit().drop(columns=[LABEL])


@pytest.fixture(scope="session")
def daemon(tmp_path_factory, pb):  # noqa: F811  (the fixture imported above)
    root = tmp_path_factory.mktemp("models")
    shutil.copytree(REPO / "models" / TASK / "v2", root / TASK / "v2")
    (root / TASK / "current").symlink_to("v2")
    d = Daemon(root)
    d.wait_serving(pb, [TASK])
    yield d
    d.stop()


@pytest.fixture(scope="session")
def expected(daemon, pb, table):  # noqa: F811
    """gRPC Predict's labels and probabilities for every row of the table."""
    pb2, stubs = pb
    rows = []
    for i, record in enumerate(table.to_dict(orient="records")):
        features = {}
        for name, value in record.items():
            if isinstance(value, str):
                features[name] = pb2.Value(text=value)
            else:
                features[name] = pb2.Value(integer=int(value))
        rows.append(pb2.Row(row_id=str(i), features=features))
    with grpc.insecure_channel(daemon.grpc) as channel:
        answer = stubs.InferenceStub(channel).Predict(pb2.PredictRequest(task=TASK, rows=rows))
    labels = np.array([p.label for p in answer.predictions], dtype=object)
    probabilities = np.array([list(p.probabilities) for p in answer.predictions], dtype=np.float32)
    return labels, probabilities


def metadata(daemon):
    """The model metadata, read over REST with no client library."""
    with urllib.request.urlopen(f"http://{daemon.http}/v2/models/{TASK}", timeout=30) as answer:
        return json.load(answer)


def columns(table, meta):
    """One array per model input, typed as the model metadata says."""
    out = {}
    for tensor in meta["inputs"]:
        name, datatype = tensor["name"], tensor["datatype"]
        dtype = object if datatype == "BYTES" else np.int64
        assert datatype in ("BYTES", "INT64"), f"{name}: {datatype}"
        out[name] = (datatype, table[name].to_numpy().astype(dtype))
    return out


def assert_same(labels, probabilities, expected):
    want_labels, want_probabilities = expected
    got = [v.decode() if isinstance(v, bytes) else v for v in np.asarray(labels).reshape(-1)]
    assert got == list(want_labels)
    np.testing.assert_allclose(np.asarray(probabilities), want_probabilities, rtol=0, atol=1e-6)
