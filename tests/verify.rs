//! `modeld verify`, the release pipeline's last gate, against a real server.

mod common;

use common::*;
use modeld::clients::verify::{self, VerifyArgs, VerifyError};

fn args(server: &TestServer, bundle: &std::path::Path, wait_secs: u64) -> VerifyArgs {
    VerifyArgs {
        addrs: vec![format!("http://{}", server.grpc)],
        bundle: bundle.to_owned(),
        task: None,
        wait_secs,
        rollout: None,
        auth: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_once_the_bundle_is_live_and_its_golden_rows_match() {
    let root = model_root(Some("v1"));
    let server = TestServer::start(test_config(root.path())).await;
    let v1 = repo_models().join(TASK).join("v1");
    // Started before the bundle is loaded: verify waits for SERVING instead of failing.
    let verified = verify::run(&args(&server, &v1, 30)).await.expect("v1 verifies");
    assert_eq!(verified.len(), 1);
    assert_eq!(verified[0].version, "v1");
    assert_eq!(verified[0].rows, all_golden("v1").len());

    // The release flips to v2: verify waits for the reload, then v2's golden rows must match.
    point_current(root.path(), "v2");
    let v2 = repo_models().join(TASK).join("v2");
    let verified = verify::run(&args(&server, &v2, 30)).await.expect("v2 verifies after the flip");
    assert_eq!(verified[0].version, "v2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_when_another_version_stays_live() {
    let root = model_root(Some("v1"));
    let server = TestServer::start_ready(test_config(root.path())).await;
    let v2 = repo_models().join(TASK).join("v2");
    match verify::run(&args(&server, &v2, 1)).await {
        Err(VerifyError::NotLive { expected, last, .. }) => {
            assert_eq!(expected, "version v2");
            assert!(last.contains("version v1"), "{last}");
        }
        other => panic!("expected NotLive, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_when_served_answers_differ_from_the_golden_rows() {
    let root = model_root(Some("v2"));
    let server = TestServer::start_ready(test_config(root.path())).await;
    // The same version name, but golden rows that the served model does not produce: what a
    // deployment serving a different build of "v2" looks like from outside.
    let elsewhere = tempfile::tempdir().unwrap();
    let bundle = elsewhere.path().join(TASK).join("v2");
    copy_version("v2", &bundle);
    edit(&bundle, "golden.jsonl", |text| text.replacen("\"probabilities\": [", "\"probabilities\": [0.5, ", 1));
    match verify::run(&args(&server, &bundle, 5)).await {
        Err(VerifyError::Mismatch { mismatches, .. }) => {
            assert_eq!(mismatches.len(), 1, "{mismatches:?}");
            assert!(mismatches[0].starts_with("golden line 1:"), "{mismatches:?}");
        }
        other => panic!("expected Mismatch, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_clearly_when_nothing_listens() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let v1 = repo_models().join(TASK).join("v1");
    let args = VerifyArgs {
        addrs: vec![format!("http://{addr}")],
        bundle: v1,
        task: None,
        wait_secs: 1,
        rollout: None,
        auth: Default::default(),
    };
    match verify::run(&args).await {
        Err(e @ VerifyError::NotLive { .. }) => assert!(e.to_string().contains("health check failed"), "{e}"),
        other => panic!("expected NotLive, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_step_verifies_once_its_policy_is_live_and_the_pinned_version_answers() {
    let root = model_root(Some("v1"));
    let server = TestServer::start_ready(test_config(root.path())).await;
    let v2 = repo_models().join(TASK).join("v2");
    let scratch = tempfile::tempdir().unwrap();
    let policy = scratch.path().join("rollout.yaml");
    std::fs::write(&policy, "shadow: [v2]\n").unwrap();
    let mut step = args(&server, &v2, 1);
    step.rollout = Some(policy.clone());

    // Not published to the server yet: not live.
    match verify::run(&step).await {
        Err(VerifyError::NotLive { expected, last, .. }) => {
            assert!(expected.starts_with("rollout policy sha256 "), "{expected}");
            assert!(last.contains("rollout policy sha256 none"), "{last}");
        }
        other => panic!("expected NotLive, got {other:?}"),
    }
    std::fs::copy(&policy, root.path().join(TASK).join("rollout.yaml")).unwrap();
    step.wait_secs = 30;
    let verified = verify::run(&step).await.expect("the shadow step verifies");
    assert_eq!(verified[0].version, "v2", "pinned to the shadow version; v1 stays live");
}
