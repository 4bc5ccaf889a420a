"""The Open Inference Protocol (KServe V2) through tritonclient, unchanged and with its defaults:
gRPC (raw tensor contents) and HTTP (Triton's binary tensor extension). Every German Credit row
gets gRPC Predict's answer; bad calls get the documented status and a message naming the
problem."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from conftest import TASK, assert_same, columns, metadata
from tritonclient.utils import InferenceServerException

TRITON = {"grpc": triton_grpc, "http": triton_http}


def client(daemon, kind):
    return TRITON[kind].InferenceServerClient(daemon.grpc if kind == "grpc" else daemon.http)


def triton_inputs(module, cols, binary=True):
    inputs = []
    for name, (datatype, array) in cols.items():
        tensor = module.InferInput(name, list(array.shape), datatype)
        if module is triton_http:
            tensor.set_data_from_numpy(array, binary_data=binary)
        else:
            tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


@pytest.mark.parametrize("kind", ["grpc", "http"])
def test_tritonclient_defaults_score_every_row_like_predict(daemon, table, expected, kind):
    cols = columns(table, metadata(daemon))
    result = client(daemon, kind).infer(TASK, triton_inputs(TRITON[kind], cols))
    assert result.as_numpy("probabilities").shape == (len(table), 2)
    assert result.as_numpy("probabilities").dtype == np.float32
    assert_same(result.as_numpy("label"), result.as_numpy("probabilities"), expected)


def test_tritonclient_http_json_tensors_and_requested_outputs(daemon, table, expected):
    cols = columns(table, metadata(daemon))
    outputs = [triton_http.InferRequestedOutput("probabilities", binary_data=False)]
    result = client(daemon, "http").infer(
        TASK, triton_inputs(triton_http, cols, binary=False), outputs=outputs
    )
    assert result.as_numpy("label") is None, "only the requested output is sent"
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected[1], rtol=0, atol=1e-6)
    # A version pin is a model version.
    pinned = client(daemon, "grpc").infer(TASK, triton_inputs(triton_grpc, cols), model_version="v2")
    assert pinned.get_response().model_version == "v2"


def test_health_and_metadata_through_tritonclient(daemon):
    for kind in ("grpc", "http"):
        c = client(daemon, kind)
        assert c.is_server_live() and c.is_server_ready() and c.is_model_ready(TASK)
        assert not c.is_model_ready(TASK, model_version="9")
        server = c.get_server_metadata()
        name = server.name if kind == "grpc" else server["name"]
        assert name == "modeld"
    meta = metadata(daemon)
    assert meta["versions"] == ["v2"]
    assert len(meta["inputs"]) == 20
    assert [(o["name"], o["datatype"], o["shape"]) for o in meta["outputs"]] == [
        ("label", "BYTES", [-1]),
        ("probabilities", "FP32", [-1, 2]),
    ]


def bad_calls(cols):
    """(what, model, version, inputs edit, outputs, grpc status, http status, words)."""
    age = "age_in_years"

    def retype(c):
        c = dict(c)
        c[age] = ("FP64", c[age][1].astype(np.float64))
        c["purpose"] = ("FP64", np.zeros(len(c["purpose"][1])))
        return c

    def reshape(c):
        c = dict(c)
        c[age] = ("INT64", c[age][1][:-1])
        return c

    def extra(c):
        c = dict(c)
        c["shoe_size"] = ("INT64", np.ones(len(c[age][1]), dtype=np.int64))
        return c

    return [
        ("wrong datatype", TASK, "", retype, None, "INVALID_ARGUMENT", "400", "datatype FP64 does not fit"),
        ("mismatched shapes", TASK, "", reshape, None, "INVALID_ARGUMENT", "400", "rows but"),
        ("unknown input", TASK, "", extra, None, "INVALID_ARGUMENT", "400", "unknown input `shoe_size`"),
        ("unknown output", TASK, "", None, "score", "INVALID_ARGUMENT", "400", "unknown output `score`"),
        ("unknown model", "fraud", "", None, None, "NOT_FOUND", "404", "fraud"),
        ("unknown version", TASK, "9", None, None, "NOT_FOUND", "404", "no version `9`"),
    ]


@pytest.mark.parametrize("kind", ["grpc", "http"])
def test_bad_calls_get_their_status_and_name_the_problem(daemon, table, kind):
    cols = columns(table.head(3), metadata(daemon))
    module = TRITON[kind]
    for what, model, version, edit, output, grpc_status, http_status, words in bad_calls(cols):
        inputs = triton_inputs(module, edit(cols) if edit else cols)
        outputs = [module.InferRequestedOutput(output)] if output else None
        with pytest.raises(InferenceServerException) as raised:
            client(daemon, kind).infer(model, inputs, model_version=version, outputs=outputs)
        e = raised.value
        assert e.status() == (f"StatusCode.{grpc_status}" if kind == "grpc" else http_status), (what, e)
        assert words in e.message(), (what, e.message())
