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


def model_class(name):
    import kserve.models as kserve_models
    import kubernetes.client.models as k8s

    return getattr(kserve_models, name, None) or getattr(k8s, name)


def unknown_fields(value, type_name, path):
    """Every key of `value` that the SDK's model of `type_name` (generated from the CRDs'
    published OpenAPI schema) does not define, with its path."""
    # The generators spell containers `list[T]`/`dict(str, T)` or `List[T]`/`Dict[str, T]`.
    if type_name.lower().startswith("list["):
        return [p for i, v in enumerate(value) for p in unknown_fields(v, type_name[5:-1], f"{path}[{i}]")]
    if type_name.lower().startswith(("dict(", "dict[")):
        inner = type_name[5:-1].split(", ", 1)[1]
        return [p for k, v in value.items() for p in unknown_fields(v, inner, f"{path}.{k}")]
    if type_name in ("str", "int", "bool", "float", "object", "datetime"):
        return []
    if type_name in ("IntOrString", "Quantity"):
        return []
    cls = model_class(type_name)
    by_key = {key: attr for attr, key in cls.attribute_map.items()}
    found = []
    for key, v in value.items():
        if key not in by_key:
            found.append(f"{path}.{key}")
        else:
            found.extend(unknown_fields(v, cls.openapi_types[by_key[key]], f"{path}.{key}"))
    return found


def test_kserve_manifests_carry_only_published_fields_and_what_kserve_needs():
    import yaml
    from conftest import REPO

    kinds = {
        "ServingRuntime": "V1alpha1ServingRuntime",
        "ClusterServingRuntime": "V1alpha1ClusterServingRuntime",
        "InferenceService": "V1beta1InferenceService",
    }
    docs = {}
    for path in sorted((REPO / "deploy" / "kserve").glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        assert unknown_fields(doc, kinds[doc["kind"]], path.name) == []
        docs[doc["metadata"]["name"], doc["kind"]] = doc
    rest = docs["modeld", "ServingRuntime"]["spec"]
    grpc = docs["modeld-grpc", "ServingRuntime"]["spec"]
    assert docs["modeld", "ClusterServingRuntime"]["spec"] == rest
    for spec, protocol, port_name, port in ((rest, "v2", "http1", 8080), (grpc, "grpc-v2", "h2c", 8081)):
        assert spec["protocolVersions"] == [protocol]
        (container,) = spec["containers"]
        assert container["name"] == "kserve-container"
        assert "--bundle-dir=/mnt/models" in container["args"] and "--tasks={{.Name}}" in container["args"]
        # Serverless mode routes exactly one port: the one this runtime's protocol listens on.
        assert container["ports"] == [{"name": port_name, "containerPort": port, "protocol": "TCP"}]
        env = {e["name"]: e["value"] for e in container["env"]}
        listening = env["MODELD_HTTP_ADDR" if protocol == "v2" else "MODELD_GRPC_ADDR"]
        assert listening == f"0.0.0.0:{port}"
    isvc = docs["german-credit", "InferenceService"]["spec"]["predictor"]["model"]
    formats = {f["name"] for f in rest["supportedModelFormats"]}
    assert isvc["modelFormat"]["name"] in formats and isvc["runtime"] == "modeld"
    assert isvc["protocolVersion"] == "v2"
