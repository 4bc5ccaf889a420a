//! The example scorecard (`models/credit_scorecard`) through the real server: scores equal the
//! golden ones, reason codes follow their rule, and streams, HTTP and `modeld label` carry both.

mod common;

use std::process::Command;

use common::*;
use modeld::{bundle::golden, pb, schema::Schema};

const CARD: &str = "credit_scorecard";

fn card_golden() -> Vec<golden::GoldenRow> {
    let text = std::fs::read_to_string(repo_models().join(CARD).join("v1").join("golden.jsonl")).unwrap();
    golden::parse(&text).unwrap()
}

fn card_schema() -> Schema {
    Schema::parse(&std::fs::read_to_string(repo_models().join(CARD).join("v1").join("feature_schema.yaml")).unwrap())
        .unwrap()
}

async fn card_server() -> TestServer {
    let mut config = test_config(&repo_models());
    config.tasks = vec![CARD.to_owned()];
    TestServer::start_ready(config).await
}

fn request(rows: &[golden::GoldenRow], reason_codes: u32) -> pb::PredictRequest {
    pb::PredictRequest {
        task: CARD.into(),
        rows: rows.iter().map(|g| to_pb(&g.row)).collect(),
        reason_codes,
        ..Default::default()
    }
}

#[tokio::test]
async fn scores_match_golden_and_reasons_rank_points_lost() {
    let server = card_server().await;
    let golden = card_golden();
    let schema = card_schema();
    let mut client = server.client().await;
    let answer = client.predict(request(&golden, 3)).await.unwrap().into_inner();
    assert_eq!(answer.predictions.len(), golden.len());
    let mut with_three = 0;
    for (p, g) in answer.predictions.iter().zip(&golden) {
        let want = g.score.expect("scorecard golden rows carry a score");
        assert!((p.score.unwrap() - want).abs() <= 1e-6, "{}: {:?} vs {want}", g.row.row_id, p.score);
        assert_close(&p.probabilities, &g.probabilities, &g.row.row_id);
        assert!(p.reasons.len() <= 3);
        with_three += usize::from(p.reasons.len() == 3);
        let lost: Vec<f64> = p.reasons.iter().map(|r| r.best_points - r.points).collect();
        assert!(lost.iter().all(|l| *l > 0.0), "{}: fields that lost nothing are left out", g.row.row_id);
        assert!(lost.windows(2).all(|w| w[0] >= w[1]), "{}: worst first: {lost:?}", g.row.row_id);
        for r in &p.reasons {
            let field = schema.field_index(&r.field).expect("a schema field");
            let table = schema.bins(field).expect("a binned field");
            assert_eq!(r.best_points, table.best_points());
            assert!(table.labels().iter().any(|l| **l == r.bin), "{}: bin {}", r.field, r.bin);
        }
    }
    assert!(with_three > golden.len() / 2, "most applicants lose points on three fields or more");

    // Not asked for: none, and the same score.
    let plain = client.predict(request(&golden[..5], 0)).await.unwrap().into_inner();
    for (p, q) in plain.predictions.iter().zip(&answer.predictions) {
        assert!(p.reasons.is_empty());
        assert_eq!(p.score, q.score);
    }
}

#[tokio::test]
async fn streams_http_and_label_carry_score_and_reasons() {
    let server = card_server().await;
    let golden: Vec<_> = card_golden().into_iter().take(20).collect();
    let mut client = server.client().await;
    let unary = client.predict(request(&golden, 2)).await.unwrap().into_inner().predictions;

    let chunks = vec![
        pb::BatchPredictRequest {
            task: CARD.into(),
            rows: golden[..10].iter().map(|g| to_pb(&g.row)).collect(),
            reason_codes: 2,
            ..Default::default()
        },
        pb::BatchPredictRequest { rows: golden[10..].iter().map(|g| to_pb(&g.row)).collect(), ..Default::default() },
    ];
    let mut stream = client.batch_predict(tokio_stream::iter(chunks)).await.unwrap().into_inner();
    let mut streamed = Vec::new();
    while let Some(answer) = stream.message().await.unwrap() {
        for r in answer.results {
            match r.outcome {
                Some(pb::row_result::Outcome::Prediction(p)) => streamed.push(p),
                other => panic!("{other:?}"),
            }
        }
    }
    assert_eq!(streamed, unary, "the first chunk's reason_codes hold for the stream");

    let rows: Vec<_> = golden.iter().map(|g| json_row(&g.row)).collect();
    let body = serde_json::json!({"rows": rows, "reason_codes": 2});
    let (status, answer) = post(server.http, &format!("/v1/tasks/{CARD}/predict"), &body).await;
    assert_eq!(status, 200, "{answer}");
    for (p, want) in answer["predictions"].as_array().unwrap().iter().zip(&unary) {
        assert_eq!(p["score"].as_f64(), want.score);
        let fields: Vec<&str> = p["reasons"].as_array().unwrap().iter().map(|r| r["field"].as_str().unwrap()).collect();
        assert_eq!(fields, want.reasons.iter().map(|r| r.field.as_str()).collect::<Vec<_>>());
    }

    // `modeld label`: a JSONL file in, CSV out with the score and two reason columns.
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("rows.jsonl");
    let lines: Vec<String> = golden
        .iter()
        .map(|g| serde_json::json!({"row_id": g.row.row_id, "features": json_row(&g.row)}).to_string())
        .collect();
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let output = dir.path().join("out.csv");
    let mut label = Command::new(env!("CARGO_BIN_EXE_modeld"));
    label
        .args(["label", "--addr", &format!("http://{}", server.grpc), "--task", CARD, "--reason-codes", "2"])
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(&output);
    let out = tokio::task::spawn_blocking(move || label.output().unwrap()).await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut reader = csv::Reader::from_path(&output).unwrap();
    let header: Vec<String> = reader.headers().unwrap().iter().map(str::to_owned).collect();
    assert_eq!(header, ["row_id", "label", "p_good", "p_bad", "score", "reason_1", "reason_2", "version", "error"]);
    let records: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(records.len(), golden.len());
    for (r, want) in records.iter().zip(&unary) {
        assert_eq!(r[4].parse::<f64>().unwrap(), want.score.unwrap());
        assert_eq!(&r[5], want.reasons.first().map_or("", |x| x.field.as_str()));
        assert_eq!(&r[6], want.reasons.get(1).map_or("", |x| x.field.as_str()));
    }
}

#[tokio::test]
async fn audit_records_keep_the_score_and_the_reasons_given() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    let mut config = test_config(&repo_models());
    config.tasks = vec![CARD.to_owned()];
    config.audit = Some(audit_to(&log));
    let server = TestServer::start_ready(config).await;
    let golden = card_golden();
    let mut call = request(&golden[..2], 2);
    call.request_id = "card-1".into();
    let answer = server.client().await.predict(call).await.unwrap().into_inner();
    server.stop().await.unwrap(); // flushes the log

    let text = std::fs::read_to_string(modeld::telemetry::audit::log_files(&log)[0].clone()).unwrap();
    let record: serde_json::Value = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|r| r["request_id"] == "card-1")
        .unwrap();
    for (row, p) in record["rows"].as_array().unwrap().iter().zip(&answer.predictions) {
        let outputs = &row["outputs"]["v1"];
        assert_eq!(outputs["score"].as_f64(), p.score);
        let reasons = outputs["reasons"].as_array().unwrap();
        assert_eq!(reasons.len(), p.reasons.len());
        for (r, want) in reasons.iter().zip(&p.reasons) {
            assert_eq!(r["field"], want.field.as_str());
            assert_eq!(r["bin"], want.bin.as_str());
            assert_eq!(r["points"].as_f64(), Some(want.points));
            assert_eq!(r["best_points"].as_f64(), Some(want.best_points));
        }
    }
}
