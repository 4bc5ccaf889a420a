//! Predict and BatchPredict against the shipped bundles: every golden row, order and ids.

mod common;

use common::*;
use modeld::pb::{self, row_result::Outcome};

async fn golden_rows_match(version: &str) {
    let root = model_root(Some(version));
    let server = TestServer::start_ready(test_config(root.path())).await;
    let mut client = server.client().await;
    for g in golden(version) {
        let mut req = predict_request(vec![to_pb(&g.row)]);
        req.request_id = format!("golden-{}", g.line);
        let resp = client.predict(req).await.expect("golden row is valid").into_inner();
        assert_eq!(resp.version, version);
        assert_eq!(resp.task, TASK);
        assert_eq!(resp.request_id, format!("golden-{}", g.line));
        assert_eq!(resp.class_names, ["good", "bad"]);
        let p = &resp.predictions[0];
        assert_eq!(p.row_id, g.row.row_id);
        assert_eq!(p.label, g.label, "line {}", g.line);
        assert_close(&p.probabilities, &g.probabilities, &format!("{version} line {}", g.line));
    }
}

#[tokio::test]
async fn v1_answers_every_golden_row() {
    golden_rows_match("v1").await;
}

#[tokio::test]
async fn v2_answers_every_golden_row() {
    golden_rows_match("v2").await;
}

#[tokio::test]
async fn multi_row_requests_keep_order_and_row_ids() {
    let root = model_root(Some("v2"));
    let server = TestServer::start_ready(test_config(root.path())).await;
    let mut client = server.client().await;
    let mut rows = golden("v2");
    rows.reverse();
    let wire: Vec<_> = rows
        .iter()
        .enumerate()
        .map(|(i, g)| {
            let mut r = to_pb(&g.row);
            r.row_id = format!("r{i}");
            r
        })
        .collect();
    let resp = client.predict(predict_request(wire)).await.unwrap().into_inner();
    assert_eq!(resp.predictions.len(), rows.len());
    for (i, (p, g)) in resp.predictions.iter().zip(&rows).enumerate() {
        assert_eq!(p.row_id, format!("r{i}"));
        assert_eq!(p.label, g.label);
        assert_close(&p.probabilities, &g.probabilities, &format!("row {i}"));
    }
}

#[tokio::test]
async fn large_requests_run_off_the_async_workers_with_the_same_results() {
    // 64 golden rows x 40 = 2,560 rows: far above the inline bound, so this takes the blocking path.
    let root = model_root(Some("v1"));
    let server = TestServer::start_ready(test_config(root.path())).await;
    let mut client = server.client().await;
    let rows = golden("v1");
    let wire: Vec<_> = (0..40).flat_map(|_| rows.iter().map(|g| to_pb(&g.row))).collect();
    let resp = client.predict(predict_request(wire)).await.unwrap().into_inner();
    assert_eq!(resp.predictions.len(), 40 * rows.len());
    for (p, g) in resp.predictions.iter().zip(rows.iter().cycle()) {
        assert_eq!(p.label, g.label);
        assert_close(&p.probabilities, &g.probabilities, &g.row.row_id);
    }
}

#[tokio::test]
async fn batch_predict_answers_chunks_in_order_with_per_row_errors() {
    let root = model_root(Some("v2"));
    let server = TestServer::start_ready(test_config(root.path())).await;
    let mut client = server.client().await;
    let rows = golden("v2");
    let mut chunks = Vec::new();
    for (c, part) in rows.chunks(10).enumerate() {
        let mut wire: Vec<_> = part.iter().map(|g| to_pb(&g.row)).collect();
        // One bad row per chunk: it gets an error, its neighbours their predictions.
        let mut bad = wire[0].clone();
        bad.row_id = format!("bad-{c}");
        bad.features.insert("age_in_years".into(), pb::Value { kind: Some(pb::value::Kind::Text("old".into())) });
        wire.insert(1, bad);
        chunks.push(pb::BatchPredictRequest {
            task: if c == 0 { TASK.into() } else { String::new() },
            rows: wire,
            ..Default::default()
        });
    }
    let n_chunks = chunks.len();
    let mut stream = client.batch_predict(tokio_stream::iter(chunks)).await.unwrap().into_inner();
    let mut golden_iter = rows.iter();
    let mut answered = 0;
    while let Some(resp) = stream.message().await.unwrap() {
        assert_eq!(resp.chunk_index, answered as u64);
        assert_eq!(resp.version, "v2");
        for (i, result) in resp.results.iter().enumerate() {
            match (i, result.outcome.as_ref().unwrap()) {
                (1, Outcome::Error(e)) => {
                    assert_eq!(e.row_id, format!("bad-{answered}"));
                    assert_eq!((e.row_index, e.field.as_str()), (1, "age_in_years"));
                    assert!(e.reason.contains("expected integer, got text"), "{}", e.reason);
                }
                (_, Outcome::Prediction(p)) => {
                    let g = golden_iter.next().unwrap();
                    assert_eq!(p.row_id, g.row.row_id);
                    assert_eq!(p.label, g.label);
                    assert_close(&p.probabilities, &g.probabilities, &g.row.row_id);
                }
                (i, other) => panic!("row {i}: unexpected {other:?}"),
            }
        }
        answered += 1;
    }
    assert_eq!(answered, n_chunks);
    assert!(golden_iter.next().is_none(), "every good row was answered");
}
