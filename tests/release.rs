//! The release flow as it runs in production, on one machine: `deploy/release-model.sh`
//! validates and publishes a bundle to storage and writes the `CURRENT` pointer; the chart's
//! sync sidecar script (`charts/modeld/files/modeld-sync.sh`) pulls it into the model root and
//! flips `current`; a real server hot-swaps; `modeld verify` gates the release; a failed
//! release is rolled back.
//!
//! Storage is a local directory, or S3: the AWS CLI against an S3-compatible server (moto) on
//! 127.0.0.1. The S3 tests are `#[ignore]`d because they need those two programs on PATH;
//! `make test` installs them (deploy/tools-requirements.txt) and runs the ignored tests.

mod common;

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::Arc,
};

use common::*;

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

enum Storage {
    Dir,
    S3 { endpoint: String, _server: KillOnDrop },
}

/// Storage, the pod's model root and the release record, in one temp dir.
struct Site {
    dir: tempfile::TempDir,
    storage: Storage,
}

const BUCKET: &str = "modeld-releases";

impl Site {
    fn with_dir() -> Site {
        let site = Site { dir: tempfile::tempdir().unwrap(), storage: Storage::Dir };
        std::fs::create_dir_all(site.dir.path().join("bucket")).unwrap();
        site.prepare()
    }

    /// An S3-compatible server on a free loopback port, with an empty bucket.
    fn with_s3() -> Site {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let server = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server on PATH (make test installs it)");
        let storage = Storage::S3 { endpoint: format!("http://127.0.0.1:{port}"), _server: KillOnDrop(server) };
        let site = Site { dir: tempfile::tempdir().unwrap(), storage };
        // Bounded: the server takes about a second to start.
        let made = (0..100).any(|_| {
            let ok = site.aws(&["s3", "mb", &format!("s3://{BUCKET}")]).status.success();
            if !ok {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            ok
        });
        assert!(made, "S3 server did not come up");
        site.prepare()
    }

    fn prepare(self) -> Site {
        // As in the pod, where the sidecar creates it before modeld starts.
        std::fs::create_dir_all(self.models().join(TASK)).unwrap();
        self
    }

    fn models(&self) -> PathBuf {
        self.dir.path().join("models")
    }

    fn storage_url(&self) -> String {
        match &self.storage {
            Storage::Dir => self.dir.path().join("bucket").display().to_string(),
            Storage::S3 { .. } => format!("s3://{BUCKET}/modeld"),
        }
    }

    /// What the scripts need to reach the storage.
    fn storage_env(&self, command: &mut Command) {
        if let Storage::S3 { endpoint, .. } = &self.storage {
            command
                .env("AWS_ENDPOINT_URL", endpoint)
                .env("AWS_ACCESS_KEY_ID", "modeld-test")
                .env("AWS_SECRET_ACCESS_KEY", "modeld-test")
                .env("AWS_DEFAULT_REGION", "us-east-1");
        }
    }

    fn aws(&self, args: &[&str]) -> Output {
        let mut command = Command::new("aws");
        command.args(args);
        self.storage_env(&mut command);
        command.output().expect("aws on PATH (make test installs it)")
    }

    /// An object of the task's storage, or None when it does not exist.
    fn object(&self, key: &str) -> Option<String> {
        let url = format!("{}/{TASK}/{key}", self.storage_url());
        match self.storage {
            Storage::Dir => std::fs::read_to_string(url).ok(),
            Storage::S3 { .. } => {
                let out = self.aws(&["s3", "cp", &url, "-"]);
                out.status.success().then(|| String::from_utf8(out.stdout).unwrap())
            }
        }
    }

    fn pointer(&self) -> String {
        self.object("CURRENT").unwrap_or_default().trim().to_owned()
    }

    fn record(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("release.env")).unwrap_or_default()
    }

    /// The release script for `bundle`, with storage set.
    fn release_command(&self, bundle: &Path, version: &str) -> Command {
        let mut command = Command::new("bash");
        command
            .arg(repo().join("deploy/release-model.sh"))
            .args([TASK, version])
            .env("STORAGE_URL", self.storage_url())
            .env("MODELD", env!("CARGO_BIN_EXE_modeld"))
            .env("BUNDLE_DIR", bundle)
            .env("RELEASE_RECORD", self.dir.path().join("release.env"))
            .current_dir(repo());
        self.storage_env(&mut command);
        command
    }

    /// Runs the release script for `bundle` against the server at `grpc`.
    fn release(&self, bundle: &Path, version: &str, grpc: std::net::SocketAddr, wait_secs: u32) -> Output {
        let mut command = self.release_command(bundle, version);
        command.env("VERIFY_ADDRS", format!("http://{grpc}")).env("WAIT_SECS", wait_secs.to_string());
        command.output().unwrap()
    }

    fn sync_command(&self) -> Command {
        let mut command = Command::new("bash");
        command
            .arg(repo().join("charts/modeld/files/modeld-sync.sh"))
            .env("SYNC_URL", self.storage_url())
            .env("TASK", TASK)
            .env("MODEL_ROOT", self.models());
        self.storage_env(&mut command);
        command
    }

    /// The sync sidecar, polling every second until dropped.
    fn sidecar(&self) -> KillOnDrop {
        let child =
            self.sync_command().env("SYNC_INTERVAL_SECONDS", "1").stderr(Stdio::null()).spawn().expect("sync sidecar");
        KillOnDrop(child)
    }

    /// One pass of the sync sidecar.
    fn sync_once(&self) -> Output {
        self.sync_command().env("SYNC_ONCE", "true").output().unwrap()
    }
}

fn shipped(version: &str) -> PathBuf {
    repo_models().join(TASK).join(version)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs a release in a blocking thread, so the test server's runtime keeps serving.
async fn release(site: &Arc<Site>, bundle: PathBuf, version: &str, grpc: std::net::SocketAddr, wait: u32) -> Output {
    let (site, version) = (site.clone(), version.to_owned());
    tokio::task::spawn_blocking(move || site.release(&bundle, &version, grpc, wait)).await.unwrap()
}

/// A server with v1 released and live, and no sync sidecar running any more.
async fn serving_v1_without_sidecar(site: &Arc<Site>) -> TestServer {
    let server = TestServer::start(test_config(&site.models())).await;
    let _sidecar = site.sidecar();
    let out = release(site, shipped("v1"), "v1", server.grpc, 60).await;
    assert!(out.status.success(), "release v1 failed:\n{}", stderr(&out));
    server
}

async fn releases_go_live_through_storage_and_the_sync_sidecar(site: Site) {
    let site = Arc::new(site);
    let server = TestServer::start(test_config(&site.models())).await;
    let _sidecar = site.sidecar();

    // First release: nothing was live before.
    let out = release(&site, shipped("v1"), "v1", server.grpc, 60).await;
    assert!(out.status.success(), "release v1 failed:\n{}", stderr(&out));
    assert_eq!(site.pointer(), "v1");
    assert!(site.record().contains("LIVE_VERSION=v1\nRESULT=released"), "{}", site.record());

    // Second release: v2 is published beside v1, the pointer moves, the pod hot-swaps.
    let out = release(&site, shipped("v2"), "v2", server.grpc, 60).await;
    assert!(out.status.success(), "release v2 failed:\n{}", stderr(&out));
    assert_eq!(site.pointer(), "v2");
    assert!(site.record().contains("PREVIOUS_VERSION=v1\nLIVE_VERSION=v2\n"), "{}", site.record());
    assert!(site.object("v1/MANIFEST.sha256").is_some(), "v1 stays published for rollback");
    assert_eq!(std::fs::read_link(site.models().join(TASK).join("current")).unwrap(), Path::new("v2"));
    let mut client = server.client().await;
    let live = client.get_version(modeld::pb::GetVersionRequest { task: TASK.into() }).await.unwrap();
    assert_eq!(live.into_inner().version, "v2");
}

async fn a_release_that_never_goes_live_is_rolled_back(site: Site) {
    let site = Arc::new(site);
    let server = serving_v1_without_sidecar(&site).await;
    // The sidecar is gone: v2 is published and pointed at, but no pod ever serves it.
    let out = release(&site, shipped("v2"), "v2", server.grpc, 2).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("not serving credit_risk version v2"), "{}", stderr(&out));
    assert_eq!(site.pointer(), "v1", "the pointer is restored");
    assert!(site.record().contains("LIVE_VERSION=v1\nRESULT=rolled-back"), "{}", site.record());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_storage_releases_go_live() {
    releases_go_live_through_storage_and_the_sync_sidecar(Site::with_dir()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_storage_failed_release_is_rolled_back() {
    a_release_that_never_goes_live_is_rolled_back(Site::with_dir()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs aws and moto_server on PATH; make test runs it"]
async fn s3_storage_releases_go_live() {
    let site = tokio::task::spawn_blocking(Site::with_s3).await.unwrap();
    releases_go_live_through_storage_and_the_sync_sidecar(site).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs aws and moto_server on PATH; make test runs it"]
async fn s3_storage_failed_release_is_rolled_back() {
    let site = tokio::task::spawn_blocking(Site::with_s3).await.unwrap();
    a_release_that_never_goes_live_is_rolled_back(site).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_or_conflicting_bundles_are_stopped_before_anything_changes() {
    let site = Arc::new(Site::with_dir());
    let server = serving_v1_without_sidecar(&site).await;

    // A bundle failing validation is never published.
    let scratch = tempfile::tempdir().unwrap();
    let broken = scratch.path().join("v3");
    copy_version("v2", &broken);
    std::fs::write(broken.join("version.txt"), "v3\n").unwrap();
    edit(&broken, "golden.jsonl", |t| t.replacen("\"label\": \"", "\"label\": \"x", 1));
    reseal(&broken);
    let out = release(&site, broken, "v3", server.grpc, 2).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("failed validation"), "{}", stderr(&out));
    assert!(site.object("v3/MANIFEST.sha256").is_none(), "nothing published");

    // Different bytes under a version name already published are refused.
    let impostor = scratch.path().join("v1");
    copy_version("v2", &impostor);
    std::fs::write(impostor.join("version.txt"), "v1\n").unwrap();
    reseal(&impostor);
    let out = release(&site, impostor, "v1", server.grpc, 2).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("already holds a different bundle"), "{}", stderr(&out));
    assert_eq!(site.pointer(), "v1");

    // Publish only: the version is stored for a later release, nothing moves.
    let out = site.release_command(&shipped("v2"), "v2").env("ROLLOUT", "none").output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(site.object("v2/MANIFEST.sha256").is_some());
    assert_eq!(site.pointer(), "v1");
    assert!(site.record().contains("RESULT=published"), "{}", site.record());
}

#[test]
fn the_sidecar_refuses_a_download_that_does_not_match_its_manifest() {
    let site = Site::with_dir();
    let task = PathBuf::from(site.storage_url()).join(TASK);
    copy_version("v1", &task.join("v1"));
    std::fs::write(task.join("CURRENT"), "v1\n").unwrap();
    assert!(site.sync_once().status.success());
    // A torn or tampered upload: a file differs from the manifest published with it.
    copy_version("v2", &task.join("v2"));
    std::fs::write(task.join("v2").join("evaluation.json"), "{}").unwrap();
    std::fs::write(task.join("CURRENT"), "v2\n").unwrap();
    let out = site.sync_once();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("does not match its MANIFEST.sha256"), "{}", stderr(&out));
    assert_eq!(std::fs::read_link(site.models().join(TASK).join("current")).unwrap(), Path::new("v1"));
    assert!(!site.models().join(TASK).join("v2").exists());
}

/// Runs a rollout step (`STAGE`, with extra environment) in a blocking thread.
async fn step(site: &Arc<Site>, version: &str, grpc: std::net::SocketAddr, wait: u32, env: &[(&str, &str)]) -> Output {
    let (site, version) = (site.clone(), version.to_owned());
    let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    tokio::task::spawn_blocking(move || {
        let mut command = site.release_command(&shipped(&version), &version);
        command.env("VERIFY_ADDRS", format!("http://{grpc}")).env("WAIT_SECS", wait.to_string()).envs(env);
        command.output().unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_storage_rollout_steps() {
    a_version_goes_live_in_steps_shadow_then_share_then_champion(Site::with_dir()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs aws and moto_server on PATH; make test runs it"]
async fn s3_storage_rollout_steps() {
    let site = tokio::task::spawn_blocking(Site::with_s3).await.unwrap();
    a_version_goes_live_in_steps_shadow_then_share_then_champion(site).await;
}

async fn a_version_goes_live_in_steps_shadow_then_share_then_champion(site: Site) {
    let site = Arc::new(site);
    let server = TestServer::start(test_config(&site.models())).await;
    let sidecar = site.sidecar();
    let out = release(&site, shipped("v1"), "v1", server.grpc, 60).await;
    assert!(out.status.success(), "release v1 failed:\n{}", stderr(&out));
    let mut client = server.client().await;
    let version = |mut client: modeld::pb::inference_client::InferenceClient<tonic::transport::Channel>| async move {
        client.get_version(modeld::pb::GetVersionRequest { task: TASK.into() }).await.unwrap().into_inner()
    };

    // Shadow: v2 is published and scores in v1's shadow; v1 stays live.
    let out = step(&site, "v2", server.grpc, 60, &[("STAGE", "shadow")]).await;
    assert!(out.status.success(), "shadow step failed:\n{}", stderr(&out));
    assert!(
        site.record().contains("STAGE=shadow\nPREVIOUS_VERSION=v1\nLIVE_VERSION=v1\nRESULT=shadow"),
        "{}",
        site.record()
    );
    assert_eq!(site.object("rollout.yaml").as_deref(), Some("shadow: [v2]\n"));
    assert_eq!(site.pointer(), "v1");
    let live = version(client.clone()).await;
    assert_eq!((live.version.as_str(), live.rollout.unwrap().shadow_versions), ("v1", vec!["v2".to_owned()]));

    // A share: half the callers, by row id.
    let out = step(&site, "v2", server.grpc, 60, &[("STAGE", "share"), ("SHARE", "0.5")]).await;
    assert!(out.status.success(), "share step failed:\n{}", stderr(&out));
    let split = version(client.clone()).await.rollout.unwrap().split;
    let split: Vec<(String, f64)> = split.into_iter().map(|s| (s.version, s.weight)).collect();
    assert_eq!(split, [("v1".to_owned(), 0.5), ("v2".to_owned(), 0.5)]);
    let mut request = predict_request(vec![to_pb(&golden("v2")[0].row)]);
    let mut answered = std::collections::BTreeSet::new();
    for i in 0..64 {
        request.rows[0].row_id = format!("applicant-{i}");
        answered.insert(client.predict(request.clone()).await.unwrap().into_inner().version);
    }
    assert_eq!(answered.len(), 2, "both versions answer some callers: {answered:?}");

    // Champion: the split is cleared and v2 is live for everyone.
    let out = step(&site, "v2", server.grpc, 60, &[("STAGE", "champion")]).await;
    assert!(out.status.success(), "promotion failed:\n{}", stderr(&out));
    assert_eq!(site.pointer(), "v2");
    assert_eq!(site.object("rollout.yaml").as_deref(), Some("\n"));
    let live = version(client.clone()).await;
    assert_eq!((live.version.as_str(), live.rollout), ("v2", None));

    // A step that never takes effect (no sidecar any more) is rolled back: the policy before it
    // is put back.
    drop(sidecar);
    let out = step(&site, "v1", server.grpc, 2, &[("STAGE", "shadow")]).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(site.record().contains("RESULT=rolled-back"), "{}", site.record());
    assert_eq!(site.object("rollout.yaml").as_deref(), Some("\n"));
}

#[test]
fn the_sidecar_brings_in_the_policy_and_its_versions_and_never_prunes_them() {
    let site = Site::with_dir();
    let task = PathBuf::from(site.storage_url()).join(TASK);
    for v in ["v1", "v2"] {
        copy_version(v, &task.join(v));
    }
    std::fs::write(task.join("CURRENT"), "v2\n").unwrap();
    // v1 is named only by the policy, and SYNC_KEEP_VERSIONS=0 would prune anything else.
    std::fs::write(task.join("rollout.yaml"), "shadow: [v1]\n").unwrap();
    let out = site.sync_command().env("SYNC_ONCE", "true").env("SYNC_KEEP_VERSIONS", "0").output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let local = site.models().join(TASK);
    assert!(local.join("v1").join("MANIFEST.sha256").is_file(), "the shadow version is fetched");
    assert_eq!(std::fs::read_to_string(local.join("rollout.yaml")).unwrap(), "shadow: [v1]\n");

    // Removed from storage: removed here, and v1 is pruned like any old version.
    std::fs::remove_file(task.join("rollout.yaml")).unwrap();
    let out = site.sync_command().env("SYNC_ONCE", "true").env("SYNC_KEEP_VERSIONS", "0").output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!local.join("rollout.yaml").exists());
    assert!(!local.join("v1").exists());
    assert!(local.join("v2").is_dir());
}
