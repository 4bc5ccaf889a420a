"""OpenTelemetry traces against a real OTLP receiver: a caller's W3C trace context is continued
over gRPC metadata and HTTP headers, each call's span carries the RPC conventions' attributes and
child spans for preprocessing, the wait for a model slot and the model run, the trace id reaches
the log and the audit log, the sampler is honoured, and a collector that is down changes nothing
for callers."""

from __future__ import annotations

import json
import secrets
import urllib.request

import grpc
from conftest import TASK, Daemon, free_port, golden_features


def traceparent(sampled: bool = True) -> tuple[str, str, str]:
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}", trace_id, span_id


def wire_rows(pb2, features_list):
    rows = []
    for i, features in enumerate(features_list):
        values = {}
        for name, v in features.items():
            values[name] = pb2.Value(text=v) if isinstance(v, str) else pb2.Value(integer=int(v))
        rows.append(pb2.Row(row_id=f"r{i}", features=values))
    return rows


def daemon(model_root, phoenix_endpoint: str, project: str, **settings) -> Daemon:
    env = {
        "MODELD_TASKS": TASK,
        "OTEL_EXPORTER_OTLP_ENDPOINT": phoenix_endpoint,
        "OTEL_SERVICE_NAME": "modeld-under-test",
        # Phoenix files spans under this resource attribute's project.
        "OTEL_RESOURCE_ATTRIBUTES": f"openinference.project.name={project}",
        **settings,
    }
    return Daemon(model_root, env)


def by_trace(spans, trace_id):
    return [s for s in spans if s["trace_id"] == trace_id]


def test_grpc_call_continues_the_callers_trace_with_its_steps(phoenix, model_root, pb, tmp_path):
    pb2, stubs = pb
    audit = tmp_path / "audit.jsonl"
    d = daemon(model_root, phoenix.otlp, "grpc", MODELD_AUDIT_PATH=str(audit))
    try:
        d.wait_serving(pb, [TASK])
        header, trace_id, caller_span = traceparent()
        with grpc.insecure_channel(d.grpc) as channel:
            stub = stubs.InferenceStub(channel)
            request = pb2.PredictRequest(
                task=TASK, rows=wire_rows(pb2, golden_features(2)), request_id="traced"
            )
            answer = stub.Predict(request, metadata=[("traceparent", header)])
        assert len(answer.predictions) == 2
        spans = phoenix.wait_for("grpc", lambda s: len(by_trace(s, trace_id)) >= 4, "the call's four spans")
    finally:
        d.stop()
    mine = {s["name"]: s for s in by_trace(spans, trace_id)}
    assert set(mine) == {"modeld.v1.Inference/Predict", "preprocess", "wait for model slot", "model run"}
    server = mine["modeld.v1.Inference/Predict"]
    assert server["parent_span_id"] == caller_span, "the caller's span is the parent"
    assert server["attrs"] == {
        "rpc.system": "grpc",
        "rpc.service": "modeld.v1.Inference",
        "rpc.method": "Predict",
        "rpc.grpc.status_code": 0,
        "modeld.task": TASK,
        "modeld.version": "v2",
        "modeld.rows": 2,
    }
    steps = [mine[n] for n in ("preprocess", "wait for model slot", "model run")]
    for step in steps:
        assert step["parent_span_id"] == server["span_id"]
        assert step["attrs"] == {"modeld.task": TASK, "modeld.version": "v2", "modeld.rows": 2}
        assert server["start_time_unix_nano"] <= step["start_time_unix_nano"]
        assert step["start_time_unix_nano"] <= step["end_time_unix_nano"] <= server["end_time_unix_nano"]
    # The steps follow one another.
    assert steps[0]["end_time_unix_nano"] <= steps[1]["start_time_unix_nano"] + 1000
    assert steps[1]["end_time_unix_nano"] <= steps[2]["start_time_unix_nano"] + 1000
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [r["trace_id"] for r in records if r["request_id"] == "traced"] == [trace_id]


def test_http_call_joins_the_trace_and_its_rejection_is_logged_with_it(phoenix, model_root, pb):
    d = daemon(model_root, phoenix.otlp, "http", MODELD_LOG="info,modeld=debug")
    try:
        d.wait_serving(pb, [TASK])
        good, good_trace, caller_span = traceparent()
        bad, bad_trace, _ = traceparent()
        for header, rows in ((good, golden_features(1)), (bad, [{"age_in_years": "old"}])):
            request = urllib.request.Request(
                f"http://{d.http}/v1/tasks/{TASK}/predict",
                data=json.dumps({"rows": rows}).encode(),
                headers={"content-type": "application/json", "traceparent": header},
            )
            try:
                urllib.request.urlopen(request, timeout=30).close()
            except urllib.error.HTTPError as e:
                assert e.code == 400
        spans = phoenix.wait_for(
            "http", lambda s: by_trace(s, good_trace) and by_trace(s, bad_trace), "both calls' spans"
        )
    finally:
        d.stop()
    served = [s for s in by_trace(spans, good_trace) if s["name"] == "POST /v1/tasks/{task}/predict"]
    assert len(served) == 1 and served[0]["parent_span_id"] == caller_span
    assert served[0]["attrs"]["http.route"] == "POST /v1/tasks/{task}/predict"
    refused = [s for s in by_trace(spans, bad_trace) if s["name"] == "POST /v1/tasks/{task}/predict"]
    assert [s["attrs"].get("error.type") for s in refused] == ["INVALID_ARGUMENT"]
    logged = []
    while not d.lines.empty():
        line = d.lines.get()
        if line:
            try:
                logged.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    rejected = [e for e in logged if e.get("message") == "prediction rejected"]
    assert [e.get("trace_id") for e in rejected] == [bad_trace], rejected


def test_the_sampler_follows_the_caller_and_the_ratio(phoenix, model_root, pb, tmp_path):
    """parentbased_traceidratio at 0: calls that start a trace here are not exported, a caller's
    sampled trace is; every call still names its trace in the audit log."""
    pb2, stubs = pb
    audit = tmp_path / "audit.jsonl"
    settings = {
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0",
        "MODELD_AUDIT_PATH": str(audit),
    }
    d = daemon(model_root, phoenix.otlp, "sampled", **settings)
    try:
        d.wait_serving(pb, [TASK])
        rows = wire_rows(pb2, golden_features(1))
        with grpc.insecure_channel(d.grpc) as channel:
            stub = stubs.InferenceStub(channel)
            for i in range(10):
                stub.Predict(pb2.PredictRequest(task=TASK, rows=rows, request_id=f"root-{i}"))
            header, trace_id, _ = traceparent()
            stub.Predict(
                pb2.PredictRequest(task=TASK, rows=rows, request_id="joined"),
                metadata=[("traceparent", header)],
            )
        # Spans leave in order: once the last call's are in, the earlier ones would be too.
        spans = phoenix.wait_for("sampled", lambda s: len(by_trace(s, trace_id)) >= 4, "the sampled call")
    finally:
        d.stop()
    records = {r["request_id"]: r for r in map(json.loads, audit.read_text().splitlines())}
    assert records["joined"]["trace_id"] == trace_id
    roots = {records[f"root-{i}"]["trace_id"] for i in range(10)}
    assert len(roots) == 10 and all(len(t) == 32 for t in roots), "each call starts a trace of its own"
    assert {s["trace_id"] for s in spans} == {trace_id}


def test_a_collector_that_is_down_changes_nothing_for_callers(model_root, pb):
    pb2, stubs = pb
    nobody = f"http://127.0.0.1:{free_port()}"
    d = daemon(model_root, nobody, "down", OTEL_EXPORTER_OTLP_TIMEOUT="1000")
    d.wait_serving(pb, [TASK])
    rows = wire_rows(pb2, golden_features(4))
    with grpc.insecure_channel(d.grpc) as channel:
        stub = stubs.InferenceStub(channel)
        for _ in range(300):
            header, _, _ = traceparent()
            answer = stub.Predict(
                pb2.PredictRequest(task=TASK, rows=rows), metadata=[("traceparent", header)], timeout=5
            )
            assert len(answer.predictions) == 4
    # Shutdown still ends cleanly (stop waits a bounded time): the final flush gives up.
    d.stop()
    assert d.proc.returncode == 0
