//! `modeld validate` passes the shipped bundles and names the cause on broken copies.

mod common;

use std::{path::Path, process::Command};

use common::*;

fn validate(dir: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_modeld")).arg("validate").arg(dir).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// A writable copy of a shipped version.
fn copy_of(version: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_version(version, dir.path());
    dir
}

#[test]
fn shipped_bundles_pass() {
    for v in ["v1", "v2"] {
        let (ok, out) = validate(&repo_models().join(TASK).join(v));
        assert!(ok, "{v}: {out}");
        let rows = common::all_golden(v).len();
        assert!(out.contains("PASS") && out.contains(&format!("{rows} rows match")), "{out}");
    }
}

#[test]
fn corrupted_model_fails_naming_the_model() {
    let dir = copy_of("v2");
    let mut bytes = std::fs::read(dir.path().join("model.onnx")).unwrap();
    let mid = bytes.len() / 2;
    bytes.truncate(mid);
    std::fs::write(dir.path().join("model.onnx"), bytes).unwrap();
    reseal(dir.path());
    let (ok, out) = validate(dir.path());
    assert!(!ok);
    assert!(out.contains("FAIL") && out.contains("model.onnx: cannot open model"), "{out}");
}

#[test]
fn manifest_mismatch_fails_naming_the_file() {
    let dir = copy_of("v1");
    edit(dir.path(), "evaluation.json", |t| t.replace("0.72", "0.99"));
    let (ok, out) = validate(dir.path());
    assert!(!ok);
    assert!(out.contains("MANIFEST.sha256: evaluation.json: sha256 is"), "{out}");
}

#[test]
fn missing_file_fails_naming_it() {
    let dir = copy_of("v1");
    std::fs::remove_file(dir.path().join("golden.jsonl")).unwrap();
    let (ok, out) = validate(dir.path());
    assert!(!ok);
    assert!(out.contains("cannot read golden.jsonl"), "{out}");
}

#[test]
fn golden_mismatch_fails_naming_the_line() {
    let dir = copy_of("v1");
    edit(dir.path(), "golden.jsonl", |t| {
        let mut lines: Vec<String> = t.lines().map(str::to_owned).collect();
        let mut row: serde_json::Value = serde_json::from_str(&lines[2]).unwrap();
        let p0 = row["probabilities"][0].as_f64().unwrap();
        row["probabilities"][0] = serde_json::json!(p0 - 0.001);
        row["probabilities"][1] = serde_json::json!(1.0 - p0 + 0.001);
        lines[2] = row.to_string();
        lines.join("\n") + "\n"
    });
    reseal(dir.path());
    let (ok, out) = validate(dir.path());
    assert!(!ok);
    assert!(out.contains("golden.jsonl line 3 (row_id `sample-2`)") && out.contains("differ from golden"), "{out}");
}

#[test]
fn schema_width_disagreeing_with_the_model_fails() {
    // v2 is ordinal-encoded: dropping the last field and its column leaves 19 columns for a 20-wide model.
    let dir = copy_of("v2");
    drop_one_column(dir.path());
    let (ok, out) = validate(dir.path());
    assert!(!ok);
    assert!(out.contains("feature_schema.yaml declares 19 columns but model.onnx takes 20"), "{out}");
}

#[test]
fn a_score_baseline_that_cannot_be_watched_fails_naming_it() {
    type Change = fn(&mut serde_json::Value);
    let cases: [(&str, Change); 3] = [
        ("describes `points`, but modeld observes the model's output", |b| b["score"] = "points".into()),
        ("21 edges need 20 counts, got 19", |b| {
            b["counts"].as_array_mut().unwrap().pop();
        }),
        ("edges must be finite and strictly ascending", |b| b["edges"][3] = serde_json::json!(0.0)),
    ];
    for (reason, change) in cases {
        let dir = copy_of("v2");
        edit(dir.path(), "evaluation.json", |t| {
            let mut doc: serde_json::Value = serde_json::from_str(&t).unwrap();
            change(&mut doc["score_baseline"]);
            doc.to_string()
        });
        reseal(dir.path());
        let (ok, out) = validate(dir.path());
        assert!(!ok, "{reason}: {out}");
        assert!(out.contains(&format!("evaluation.json: score_baseline: {reason}")), "{out}");
    }
}
