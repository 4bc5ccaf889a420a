//! The release flow as it runs in production, on one machine: `deploy/release-model.sh`
//! validates and publishes a bundle to storage and writes the `CURRENT` pointer; the chart's
//! sync sidecar script (`charts/modeld/files/modeld-sync.sh`) pulls it into the model root and
//! flips `current`; a real server hot-swaps; `modeld verify` gates the release; a failed
//! release is rolled back. Storage is a local directory here (the scripts' S3 branch is the
//! same flow through `aws s3 cp`).

mod common;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
};

use common::*;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The storage bucket, the pod's model root, and the release record, in one temp dir.
struct Site {
    dir: tempfile::TempDir,
}

impl Site {
    fn new() -> Site {
        let site = Site { dir: tempfile::tempdir().unwrap() };
        std::fs::create_dir_all(site.bucket()).unwrap();
        // As in the pod, where the sidecar creates it before modeld starts.
        std::fs::create_dir_all(site.models().join(TASK)).unwrap();
        site
    }
    fn bucket(&self) -> PathBuf {
        self.dir.path().join("bucket")
    }
    fn models(&self) -> PathBuf {
        self.dir.path().join("models")
    }
    fn pointer(&self) -> String {
        std::fs::read_to_string(self.bucket().join(TASK).join("CURRENT")).unwrap_or_default().trim().to_owned()
    }
    fn record(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("release.env")).unwrap_or_default()
    }

    /// Runs the release script for `bundle` against the server at `grpc`.
    fn release(&self, bundle: &Path, version: &str, grpc: std::net::SocketAddr, wait_secs: u32) -> Output {
        Command::new("bash")
            .arg(repo().join("deploy/release-model.sh"))
            .args([TASK, version])
            .env("STORAGE_URL", self.bucket())
            .env("MODELD", env!("CARGO_BIN_EXE_modeld"))
            .env("BUNDLE_DIR", bundle)
            .env("VERIFY_ADDRS", format!("http://{grpc}"))
            .env("WAIT_SECS", wait_secs.to_string())
            .env("RELEASE_RECORD", self.dir.path().join("release.env"))
            .current_dir(repo())
            .output()
            .unwrap()
    }

    /// The sync sidecar, polling every second until dropped.
    fn sidecar(&self) -> Sidecar {
        let child = Command::new("bash")
            .arg(repo().join("charts/modeld/files/modeld-sync.sh"))
            .env("SYNC_URL", self.bucket())
            .env("TASK", TASK)
            .env("MODEL_ROOT", self.models())
            .env("SYNC_INTERVAL_SECONDS", "1")
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Sidecar(child)
    }
}

struct Sidecar(Child);

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn shipped(version: &str) -> PathBuf {
    repo_models().join(TASK).join(version)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs blocking work (a child process) without stalling the test server's runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn releases_go_live_through_storage_and_the_sync_sidecar() {
    let site = std::sync::Arc::new(Site::new());
    let server = TestServer::start(test_config(&site.models())).await;
    let _sidecar = site.sidecar();
    let grpc = server.grpc;

    // First release: nothing was live before.
    let s = site.clone();
    let out = blocking(move || s.release(&shipped("v1"), "v1", grpc, 60)).await;
    assert!(out.status.success(), "release v1 failed:\n{}", stderr(&out));
    assert_eq!(site.pointer(), "v1");
    assert!(
        site.record().contains("LIVE_VERSION=v1\n") && site.record().contains("RESULT=released"),
        "{}",
        site.record()
    );

    // Second release: v2 is published beside v1, the pointer moves, the pod hot-swaps.
    let s = site.clone();
    let out = blocking(move || s.release(&shipped("v2"), "v2", grpc, 60)).await;
    assert!(out.status.success(), "release v2 failed:\n{}", stderr(&out));
    assert_eq!(site.pointer(), "v2");
    assert!(site.record().contains("PREVIOUS_VERSION=v1\nLIVE_VERSION=v2\n"), "{}", site.record());
    assert!(site.bucket().join(TASK).join("v1/MANIFEST.sha256").exists(), "v1 stays published for rollback");
    assert_eq!(std::fs::read_link(site.models().join(TASK).join("current")).unwrap(), Path::new("v2"));
    let mut client = server.client().await;
    let live = client.get_version(modeld::service::pb::GetVersionRequest { task: TASK.into() }).await.unwrap();
    assert_eq!(live.into_inner().version, "v2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_that_never_goes_live_is_rolled_back() {
    let site = std::sync::Arc::new(Site::new());
    let server = TestServer::start(test_config(&site.models())).await;
    let grpc = server.grpc;
    {
        let _sidecar = site.sidecar();
        let s = site.clone();
        let out = blocking(move || s.release(&shipped("v1"), "v1", grpc, 60)).await;
        assert!(out.status.success(), "release v1 failed:\n{}", stderr(&out));
    }
    // The sidecar is gone: v2 is published and pointed at, but no pod ever serves it.
    let s = site.clone();
    let out = blocking(move || s.release(&shipped("v2"), "v2", grpc, 2)).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("not serving credit_risk version v2"), "{}", stderr(&out));
    assert_eq!(site.pointer(), "v1", "the pointer is restored");
    assert!(site.record().contains("LIVE_VERSION=v1\nRESULT=rolled-back"), "{}", site.record());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_or_conflicting_bundles_are_stopped_before_anything_changes() {
    let site = std::sync::Arc::new(Site::new());
    let server = TestServer::start(test_config(&site.models())).await;
    let grpc = server.grpc;
    {
        let _sidecar = site.sidecar();
        let s = site.clone();
        let out = blocking(move || s.release(&shipped("v1"), "v1", grpc, 60)).await;
        assert!(out.status.success(), "release v1 failed:\n{}", stderr(&out));
    }

    // A bundle failing validation is never published.
    let scratch = tempfile::tempdir().unwrap();
    let broken = scratch.path().join("v3");
    copy_version("v2", &broken);
    std::fs::write(broken.join("version.txt"), "v3\n").unwrap();
    edit(&broken, "golden.jsonl", |t| t.replacen("\"label\": \"", "\"label\": \"x", 1));
    reseal(&broken);
    let s = site.clone();
    let b = broken.clone();
    let out = blocking(move || s.release(&b, "v3", grpc, 2)).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("failed validation"), "{}", stderr(&out));
    assert!(!site.bucket().join(TASK).join("v3").exists(), "nothing published");

    // Different bytes under a version name already published are refused.
    let impostor = scratch.path().join("v1");
    copy_version("v2", &impostor);
    std::fs::write(impostor.join("version.txt"), "v1\n").unwrap();
    reseal(&impostor);
    let s = site.clone();
    let out = blocking(move || s.release(&impostor, "v1", grpc, 2)).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("already holds a different bundle"), "{}", stderr(&out));
    assert_eq!(site.pointer(), "v1");
}

#[test]
fn the_sidecar_refuses_a_download_that_does_not_match_its_manifest() {
    let site = Site::new();
    let task = site.bucket().join(TASK);
    copy_version("v1", &task.join("v1"));
    std::fs::write(task.join("CURRENT"), "v1\n").unwrap();
    let once = |site: &Site| {
        Command::new("bash")
            .arg(repo().join("charts/modeld/files/modeld-sync.sh"))
            .env("SYNC_URL", site.bucket())
            .env("TASK", TASK)
            .env("MODEL_ROOT", site.models())
            .env("SYNC_ONCE", "true")
            .output()
            .unwrap()
    };
    assert!(once(&site).status.success());
    // A torn or tampered upload: a file differs from the manifest published with it.
    copy_version("v2", &task.join("v2"));
    std::fs::write(task.join("v2").join("evaluation.json"), "{}").unwrap();
    std::fs::write(task.join("CURRENT"), "v2\n").unwrap();
    let out = once(&site);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("does not match its MANIFEST.sha256"), "{}", stderr(&out));
    assert_eq!(std::fs::read_link(site.models().join(TASK).join("current")).unwrap(), Path::new("v1"));
    assert!(!site.models().join(TASK).join("v2").exists());
}
