"""The Open Inference Protocol (KServe V2) through the kserve SDK's REST and gRPC clients,
unchanged. Run in a process of its own: the SDK's protocol module and tritonclient's define the
same protobuf symbols and cannot be loaded together."""

from __future__ import annotations

import asyncio

from conftest import TASK, assert_same, columns, metadata
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig


def kserve_request(cols, version=None):
    inputs = []
    for name, (datatype, array) in cols.items():
        tensor = InferInput(name=name, shape=list(array.shape), datatype=datatype)
        tensor.set_data_from_numpy(array, binary_data=False)
        inputs.append(tensor)
    return InferRequest(model_name=TASK, infer_inputs=inputs, request_id="k-1", model_version=version)


def test_kserve_sdk_rest_and_grpc_clients_score_every_row_like_predict(daemon, table, expected):
    cols = columns(table, metadata(daemon))

    async def both():
        rest = InferenceRESTClient(RESTConfig(protocol="v2", retries=0))
        grpc_client = InferenceGRPCClient(daemon.grpc)
        try:
            by_rest = await rest.infer(f"http://{daemon.http}", kserve_request(cols), model_name=TASK)
            by_grpc = await grpc_client.infer(kserve_request(cols))
            ready = await grpc_client.is_model_ready(TASK)
            return by_rest, by_grpc, ready
        finally:
            await grpc_client.close()
            await rest.close()

    by_rest, by_grpc, ready = asyncio.run(both())
    assert ready
    for response in (by_rest, by_grpc):
        outputs = {o.name: o.as_numpy() for o in response.outputs}
        assert_same(outputs["label"], outputs["probabilities"], expected)
        assert response.model_name == TASK
