//! Bad input gets INVALID_ARGUMENT naming the field (or NOT_FOUND), and the daemon keeps serving.

mod common;

use std::time::Duration;

use common::*;
use modeld::pb::{self, value::Kind};
use tonic::Code;

fn good_row() -> pb::Row {
    to_pb(&golden("v1")[0].row)
}

fn with(mut row: pb::Row, field: &str, kind: Option<Kind>) -> pb::Row {
    row.features.insert(field.into(), pb::Value { kind });
    row
}

fn without(mut row: pb::Row, field: &str) -> pb::Row {
    row.features.remove(field);
    row
}

#[tokio::test]
async fn each_bad_value_is_rejected_naming_row_and_field() {
    let root = model_root(Some("v1"));
    let server = TestServer::start_ready(test_config(root.path())).await;
    let mut client = server.client().await;

    let cases: Vec<(&str, pb::Row, &str, &str)> = vec![
        ("missing required", without(good_row(), "age_in_years"), "age_in_years", "required field is missing"),
        ("explicit null", with(good_row(), "age_in_years", None), "age_in_years", "required field is missing"),
        (
            "wrong type",
            with(good_row(), "age_in_years", Some(Kind::Text("forty".into()))),
            "age_in_years",
            "expected integer, got text",
        ),
        (
            "not an integer",
            with(good_row(), "age_in_years", Some(Kind::Number(40.5))),
            "age_in_years",
            "expected an integer, got 40.5",
        ),
        ("NaN", with(good_row(), "credit_amount", Some(Kind::Number(f64::NAN))), "credit_amount", "must be finite"),
        (
            "infinite",
            with(good_row(), "credit_amount", Some(Kind::Number(f64::INFINITY))),
            "credit_amount",
            "must be finite",
        ),
        (
            "out of range",
            with(good_row(), "age_in_years", Some(Kind::Integer(7))),
            "age_in_years",
            "out of range [18, 120]",
        ),
        (
            "unknown category",
            with(good_row(), "housing", Some(Kind::Text("castle".into()))),
            "housing",
            "unknown category `castle`",
        ),
        (
            "categorical as number",
            with(good_row(), "housing", Some(Kind::Integer(1))),
            "housing",
            "expected text, got integer",
        ),
        ("unknown field", with(good_row(), "agee", Some(Kind::Integer(40))), "agee", "unknown field"),
    ];
    for (case, row, field, reason) in cases {
        let mut bad = row;
        bad.row_id = "applicant-7".into();
        // The bad row is second: the whole request is rejected and the message names row 1.
        let err = client.predict(predict_request(vec![good_row(), bad])).await.expect_err(case);
        assert_eq!(err.code(), Code::InvalidArgument, "{case}: {err:?}");
        let msg = err.message();
        assert!(msg.contains("row 1 (row_id `applicant-7`)"), "{case}: {msg}");
        assert!(msg.contains(&format!("field `{field}`")), "{case}: {msg}");
        assert!(msg.contains(reason), "{case}: {msg}");
    }

    // Still serving, and unseen values of a field with a fallback are accepted.
    let resp = client
        .predict(predict_request(vec![with(good_row(), "purpose", Some(Kind::Text("yacht".into())))]))
        .await
        .expect("fallback category is accepted");
    assert_eq!(resp.get_ref().predictions.len(), 1);
    // Optional fields take their default.
    let resp = client.predict(predict_request(vec![without(good_row(), "telephone")])).await.expect("default applies");
    assert_eq!(resp.get_ref().version, "v1");
}

#[tokio::test]
async fn malformed_requests_are_rejected_clearly() {
    let root = model_root(Some("v2"));
    let server = TestServer::start_ready(test_config(root.path())).await;
    let mut client = server.client().await;

    let err = client.predict(predict_request(vec![])).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(err.message(), "rows: at least one row is required");

    let mut no_task = predict_request(vec![good_row()]);
    no_task.task.clear();
    let err = client.predict(no_task).await.unwrap_err();
    assert_eq!((err.code(), err.message()), (Code::InvalidArgument, "task: must name a task"));

    let mut unknown = predict_request(vec![good_row()]);
    unknown.task = "fraud".into();
    let err = client.predict(unknown).await.unwrap_err();
    assert_eq!((err.code(), err.message()), (Code::NotFound, "unknown task `fraud`"));

    let mut pinned = predict_request(vec![to_pb(&golden("v2")[0].row)]);
    pinned.version = "v9".into();
    let err = client.predict(pinned).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(err.message().contains("`v9`"));

    let err = client.get_version(pb::GetVersionRequest { task: "fraud".into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // Too many rows for one request.
    let mut config = test_config(root.path());
    config.max_rows = 3;
    let small = TestServer::start_ready(config).await;
    let err = small.client().await.predict(predict_request(vec![good_row(); 4])).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("rows: 4 rows exceed the limit of 3"), "{}", err.message());

    // The first server still answers good requests after all of that.
    let ok = client.predict(predict_request(vec![to_pb(&golden("v2")[0].row)])).await.unwrap();
    assert_eq!(ok.get_ref().predictions[0].label, golden("v2")[0].label);
}

#[tokio::test]
async fn a_call_unanswered_by_its_deadline_gets_deadline_exceeded() {
    let root = model_root(Some("v2"));
    let row = to_pb(&common::golden("v2")[0].row);

    // The server's own limit: the request never completes, so its answer is due at 200 ms.
    let mut config = test_config(root.path());
    config.request_timeout = Duration::from_millis(200);
    let server = TestServer::start_ready(config).await;
    let held = HalfSentCall::start(server.grpc, &predict_request(vec![row.clone()]), &[]).await;
    assert_eq!(held.answer().await.1, "4", "DEADLINE_EXCEEDED, not tonic's CANCELLED");
    drop(server);

    // A caller's shorter grpc-timeout wins over the server's (an hour here; the bound below
    // fails the test long before that if the caller's deadline were ignored).
    let mut config = test_config(root.path());
    config.request_timeout = Duration::from_secs(3600);
    let server = TestServer::start_ready(config).await;
    let held = HalfSentCall::start(server.grpc, &predict_request(vec![row.clone()]), &[("grpc-timeout", "100m")]).await;
    let status =
        tokio::time::timeout(Duration::from_secs(20), held.answer()).await.expect("answered at the caller's deadline");
    assert_eq!(status.1, "4");
    // A call that completes within its deadline is answered as usual.
    let mut request = tonic::Request::new(predict_request(vec![row]));
    request.set_timeout(Duration::from_secs(30));
    let answer = server.client().await.predict(request).await.unwrap().into_inner();
    assert_eq!(answer.predictions.len(), 1);
}

#[tokio::test]
async fn a_request_that_is_not_protobuf_is_invalid_argument_and_the_daemon_serves_on() {
    let root = model_root(Some("v2"));
    let server = TestServer::start_ready(test_config(root.path())).await;
    // Wire type 7 does not exist: no message decodes from these bytes.
    let held = HalfSentCall::start_raw(server.grpc, &[0xff, 0xff, 0xff, 0xff], &[]).await;
    assert_eq!(held.finish().await.1, "3", "INVALID_ARGUMENT, not tonic's INTERNAL");
    let answer = server.client().await.predict(predict_request(vec![good_row()])).await.unwrap().into_inner();
    assert_eq!(answer.predictions.len(), 1);
}

#[tokio::test]
async fn a_stream_chunk_that_is_not_protobuf_ends_the_stream_with_invalid_argument() {
    let root = model_root(Some("v2"));
    let server = TestServer::start_ready(test_config(root.path())).await;
    let held =
        HalfSentCall::start_at(server.grpc, "/modeld.v1.Inference/BatchPredict", &[0xff, 0xff, 0xff, 0xff], &[]).await;
    // The caller hears why its stream ended, rather than a clean end of stream.
    assert_eq!(held.finish().await.1, "3");
    // Counted once the stream's task has ended, just after the caller got the status.
    let admin = server.admin;
    eventually("the failed stream is counted", || async move {
        let text = http_get(admin, "/metrics").await.1;
        let failed = [("method", "BatchPredict"), ("code", "INVALID_ARGUMENT")];
        metric_value(&text, "modeld_requests_total", &failed) == Some(1.0)
    })
    .await;
}

#[tokio::test]
async fn a_message_over_max_message_bytes_is_resource_exhausted() {
    let root = model_root(Some("v2"));
    let mut config = test_config(root.path());
    config.max_message_bytes = 16 << 10;
    let server = TestServer::start_ready(config).await;
    let mut client = server.client().await;
    let huge = with(good_row(), "purpose", Some(Kind::Text("x".repeat(64 << 10))));

    let err = client.predict(predict_request(vec![huge.clone()])).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("over max_message_bytes"), "{}", err.message());

    let chunk = pb::BatchPredictRequest { task: TASK.into(), rows: vec![huge], ..Default::default() };
    let mut stream = client.batch_predict(tokio_stream::iter([chunk])).await.unwrap().into_inner();
    let err = stream.message().await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");

    // A request within the limit is served as before.
    let answer = client.predict(predict_request(vec![good_row()])).await.unwrap().into_inner();
    assert_eq!(answer.predictions.len(), 1);
}
