//! BatchPredict as batch-labelling jobs use it, and the `modeld label` client.

mod common;

use std::{
    collections::HashMap,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use common::*;
use modeld::pb::{self, row_result::Outcome};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

fn chunk(task: &str, rows: Vec<pb::Row>) -> pb::BatchPredictRequest {
    pb::BatchPredictRequest { task: task.into(), rows, ..Default::default() }
}

/// The golden rows in positional form, and their column names.
fn positional(golden: &[modeld::bundle::golden::GoldenRow]) -> (Vec<String>, Vec<pb::Row>) {
    let columns: Vec<String> = golden[0].row.features.iter().map(|(k, _)| k.clone()).collect();
    let rows = golden
        .iter()
        .map(|g| {
            let wire = to_pb(&g.row);
            let values = columns.iter().map(|c| wire.features[c].clone()).collect();
            pb::Row { row_id: g.row.row_id.clone(), values, ..Default::default() }
        })
        .collect();
    (columns, rows)
}

async fn metric(server: &TestServer, name: &str) -> f64 {
    metric_value(&http_get(server.admin, "/metrics").await.1, name, &[]).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_stream_returns_every_row_once_in_order_equal_to_unary_predict() {
    const ROWS: usize = 100_032;
    const CHUNK: usize = 2_000;
    let root = model_root(Some("v2"));
    let server = TestServer::start_ready(test_config(root.path())).await;
    let mut client = server.client().await;
    let golden = common::golden("v2");
    // The unary answers for each distinct row: what every streamed copy must equal.
    let unary =
        client.predict(predict_request(golden.iter().map(|g| to_pb(&g.row)).collect())).await.unwrap().into_inner();

    // Bulk form: positional values named once by `columns`.
    let (columns, wire) = positional(&golden);
    let (tx, rx) = mpsc::channel(4);
    let producer = tokio::spawn(async move {
        let mut i = 0;
        while i < ROWS {
            let rows = (i..(i + CHUNK).min(ROWS))
                .map(|n| {
                    let mut r = wire[n % wire.len()].clone();
                    r.row_id = format!("r{n}");
                    r
                })
                .collect();
            let mut c = chunk(if i == 0 { TASK } else { "" }, rows);
            if i == 0 {
                c.columns.clone_from(&columns);
            }
            tx.send(c).await.unwrap();
            i += CHUNK;
        }
    });
    let mut stream = client.batch_predict(ReceiverStream::new(rx)).await.unwrap().into_inner();
    let mut next = 0usize;
    while let Some(resp) = stream.message().await.unwrap() {
        assert_eq!(resp.version, "v2");
        for result in resp.results {
            let Some(Outcome::Prediction(p)) = result.outcome else { panic!("row {next} failed") };
            assert_eq!(p.row_id, format!("r{next}"), "every row once, in order");
            let expected = &unary.predictions[next % unary.predictions.len()];
            assert_eq!(p.label, expected.label);
            assert_eq!(p.probabilities, expected.probabilities, "row {next}: stream and unary agree");
            next += 1;
        }
    }
    producer.await.unwrap();
    assert_eq!(next, ROWS);
    let text = http_get(server.admin, "/metrics").await.1;
    assert_eq!(
        metric_value(&text, "modeld_rows_total", &[("task", TASK), ("version", "v2")]),
        Some((ROWS + 64) as f64)
    );
    assert_eq!(metric_value(&text, "modeld_stream_chunks_total", &[("task", TASK)]), Some(ROWS.div_ceil(CHUNK) as f64));
}

#[tokio::test]
async fn positional_rows_with_a_wrong_value_count_end_the_stream_clearly() {
    let root = model_root(Some("v2"));
    let server = TestServer::start_ready(test_config(root.path())).await;
    let mut client = server.client().await;
    let (columns, mut rows) = positional(&common::golden("v2"));
    rows[3].values.pop();
    let mut first = chunk(TASK, rows);
    first.columns = columns;
    let mut stream = client.batch_predict(tokio_stream::iter([first])).await.unwrap().into_inner();
    let err = stream.message().await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(err.message(), "values: row 3 has 19 values for 20 columns");
}

#[tokio::test]
async fn a_flip_mid_stream_does_not_change_the_streams_version() {
    let root = model_root(Some("v1"));
    let server = TestServer::start_ready(test_config(root.path())).await;
    let mut client = server.client().await;
    let golden_v1 = common::golden("v1");
    let rows: Vec<_> = golden_v1.iter().take(8).map(|g| to_pb(&g.row)).collect();
    let (tx, rx) = mpsc::channel(1);
    tx.send(chunk(TASK, rows.clone())).await.unwrap();
    let mut stream = client.batch_predict(ReceiverStream::new(rx)).await.unwrap().into_inner();
    assert_eq!(stream.message().await.unwrap().unwrap().version, "v1");

    point_current(root.path(), "v2");
    let mut probe = server.client().await;
    eventually("v2 live", || {
        let mut probe = probe.clone();
        async move {
            probe.get_version(pb::GetVersionRequest { task: TASK.into() }).await.unwrap().into_inner().version == "v2"
        }
    })
    .await;
    tx.send(chunk("", rows.clone())).await.unwrap();
    let resp = stream.message().await.unwrap().unwrap();
    assert_eq!(resp.version, "v1", "the stream keeps the version it opened with");
    for (result, g) in resp.results.iter().zip(&golden_v1) {
        let Some(Outcome::Prediction(p)) = &result.outcome else { panic!() };
        assert_close(&p.probabilities, &g.probabilities, "v1 after the flip");
    }
    // New calls see v2.
    let unary = probe.predict(predict_request(rows)).await.unwrap().into_inner();
    assert_eq!(unary.version, "v2");
}

#[tokio::test]
async fn a_client_that_stops_reading_holds_a_bounded_amount_of_server_work() {
    let root = model_root(Some("v2"));
    let server = TestServer::start_ready(test_config(root.path())).await;
    let mut client = server.client().await;
    let rows: Vec<_> = common::golden("v2").iter().map(|g| to_pb(&g.row)).cycle().take(1_000).collect();
    let produced = Arc::new(AtomicUsize::new(0));
    let requests = {
        let produced = produced.clone();
        // Up to 100,000 chunks (about 70 GB of rows): far more than any buffer could hold.
        tokio_stream::iter(0..100_000).map(move |i| {
            produced.fetch_add(1, Ordering::Relaxed);
            chunk(if i == 0 { TASK } else { "" }, rows.clone())
        })
    };
    use tokio_stream::StreamExt as _;
    let stream = client.batch_predict(requests).await.unwrap().into_inner();

    // Nobody reads `stream`. The server fills its per-stream buffer and stops reading chunks.
    let cap = (modeld::service::grpc::stream::STREAM_BUFFER + 1) as f64;
    eventually("server buffer full", || async { metric(&server, "modeld_stream_chunks_in_flight").await >= cap }).await;
    // From here on, across many observations, the server never holds more than the cap while
    // the client keeps offering chunks; what it answered sits in transport windows, and the
    // client's writer is held back by flow control long before its 100,000 chunks.
    for _ in 0..500 {
        let text = http_get(server.admin, "/metrics").await.1;
        assert!(metric_value(&text, "modeld_stream_chunks_in_flight", &[]).unwrap() <= cap);
        let answered = metric_value(&text, "modeld_stream_chunks_total", &[("task", TASK)]).unwrap_or(0.0);
        assert!(answered < 1_000.0, "the server stopped reading: {answered} chunks answered");
    }
    assert!(produced.load(Ordering::Relaxed) < 1_000, "HTTP/2 flow control stopped the writer");
    drop(stream);
}

#[tokio::test]
async fn cancelling_a_stream_releases_it() {
    let root = model_root(Some("v2"));
    let server = TestServer::start_ready(test_config(root.path())).await;
    let mut client = server.client().await;
    let rows: Vec<_> = common::golden("v2").iter().map(|g| to_pb(&g.row)).collect();
    let (tx, rx) = mpsc::channel(1);
    tx.send(chunk(TASK, rows.clone())).await.unwrap();
    let mut stream = client.batch_predict(ReceiverStream::new(rx)).await.unwrap().into_inner();
    stream.message().await.unwrap().unwrap();
    assert_eq!(metric(&server, "modeld_streams_open").await, 1.0);
    drop(stream);
    drop(tx);
    eventually("open streams back to zero", || async { metric(&server, "modeld_streams_open").await == 0.0 }).await;
    eventually("no chunk held", || async { metric(&server, "modeld_stream_chunks_in_flight").await == 0.0 }).await;
}

#[tokio::test]
async fn too_many_streams_is_resource_exhausted_and_too_many_rows_is_invalid_argument() {
    let root = model_root(Some("v2"));
    let mut config = test_config(root.path());
    config.max_streams = 1;
    config.max_rows = 100;
    let server = TestServer::start_ready(config).await;
    let mut client = server.client().await;
    let row = to_pb(&common::golden("v2")[0].row);

    let (tx, rx) = mpsc::channel(1);
    tx.send(chunk(TASK, vec![row.clone()])).await.unwrap();
    let mut first = client.batch_predict(ReceiverStream::new(rx)).await.unwrap().into_inner();
    first.message().await.unwrap().unwrap();
    let err = client.batch_predict(tokio_stream::iter([chunk(TASK, vec![row.clone()])])).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    drop((tx, first));
    eventually("stream slot free", || async { metric(&server, "modeld_streams_open").await == 0.0 }).await;

    let mut big = client.batch_predict(tokio_stream::iter([chunk(TASK, vec![row; 101])])).await.unwrap().into_inner();
    let err = big.message().await.unwrap_err();
    // Not retryable as sent, so the same code as in Predict.
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(err.message(), "rows: 101 rows exceed the limit of 100 per chunk");
}

#[tokio::test]
async fn shutdown_answers_the_chunk_in_hand_then_ends_open_streams() {
    let root = model_root(Some("v2"));
    let server = TestServer::start_ready(test_config(root.path())).await;
    let mut client = server.client().await;
    let rows: Vec<_> = common::golden("v2").iter().map(|g| to_pb(&g.row)).collect();
    let (tx, rx) = mpsc::channel(1);
    let mut stream = client.batch_predict(ReceiverStream::new(rx)).await.unwrap().into_inner();
    let sent = rows.len();
    tx.send(chunk(TASK, rows)).await.unwrap();
    assert_eq!(stream.message().await.unwrap().unwrap().results.len(), sent);
    let stopped = tokio::spawn(server.stop());
    let err = stream.message().await.expect_err("the stream ends with a status");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    stopped.await.unwrap().unwrap();
    drop(tx);
}

#[tokio::test]
async fn label_writes_every_good_row_and_reports_the_bad_line() {
    let root = model_root(Some("v2"));
    let server = TestServer::start_ready(test_config(root.path())).await;
    let golden = common::golden("v2");
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("rows.csv");
    let names: Vec<String> = golden[0].row.features.iter().map(|(k, _)| k.clone()).collect();
    let mut csv = format!("row_id,{}\n", names.join(","));
    for (i, g) in golden.iter().enumerate() {
        let values: HashMap<_, _> = g.row.features.iter().cloned().collect();
        let cells: Vec<String> = names
            .iter()
            .map(|n| match &values[n] {
                modeld::schema::OwnedValue::Text(s) => format!("\"{s}\""),
                modeld::schema::OwnedValue::Integer(v) => v.to_string(),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        csv.push_str(&format!("{},{}\n", g.row.row_id, cells.join(",")));
        if i == 10 {
            csv.push_str("a broken line,with,three fields\n"); // file line 13
        }
    }
    std::fs::write(&input, csv).unwrap();
    let output = dir.path().join("out.jsonl");
    let mut label = Command::new(env!("CARGO_BIN_EXE_modeld"));
    label
        .args(["label", "--addr", &format!("http://{}", server.grpc), "--task", TASK, "--chunk-rows", "7"])
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(&output);
    // Off the test's runtime thread, which the in-process server needs to answer.
    let out = tokio::task::spawn_blocking(move || label.output().unwrap()).await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("rows.csv:13:"), "the bad line is reported with its number: {stderr}");
    let n = golden.len();
    assert!(
        stderr.contains(&format!("labelled {n} rows (0 row errors, 1 bad input lines) with version v2")),
        "{stderr}"
    );

    let records: Vec<serde_json::Value> =
        std::fs::read_to_string(&output).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(records.len(), n + 1, "one record per input line");
    assert_eq!(records[11]["line"], 13);
    let good: Vec<_> = records.iter().filter(|r| r.get("label").is_some()).collect();
    assert_eq!(good.len(), n);
    for (r, g) in good.iter().zip(&golden) {
        assert_eq!(r["row_id"], g.row.row_id.as_str());
        assert_eq!(r["label"], g.label.as_str());
        assert_eq!(r["version"], "v2");
        let probs: Vec<f32> =
            r["probabilities"].as_array().unwrap().iter().map(|p| p.as_f64().unwrap() as f32).collect();
        assert_close(&probs, &g.probabilities, &g.row.row_id);
    }
}
