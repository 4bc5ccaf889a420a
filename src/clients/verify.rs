//! `modeld verify`: the release pipeline's last gate. It checks a running server, not a bundle
//! on disk: wait until the server is SERVING and its live version of the task is the bundle's
//! version, then send every golden row of the bundle through `Predict` (no version pin, as a
//! caller would) and compare the answers with what training produced.
//!
//! With `--rollout FILE` it checks a rollout step instead: the policy file is live (by its
//! SHA-256, as GetVersion reports it) and the bundle's version, pinned, answers its golden rows.
//!
//! A bundle that passed `modeld validate` can still fail here: the wrong version went live, the
//! deployment points at another model root, an old replica still answers.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

use super::connect;
use crate::{
    bundle::golden::{self, GoldenRow},
    pb::{self, inference_client::InferenceClient, inference_server::SERVICE_NAME as INFERENCE_SERVICE},
};

const RETRY_EVERY: Duration = Duration::from_millis(500);

/// What `modeld verify` needs.
#[derive(Debug, Clone, clap::Args)]
pub struct VerifyArgs {
    /// Server address; repeat to check several replicas (e.g. one port-forward per pod).
    #[arg(long = "addr", required = true)]
    pub addrs: Vec<String>,
    /// The bundle's version directory: its version.txt is the version expected live and its
    /// golden.jsonl the rows replayed.
    #[arg(long)]
    pub bundle: PathBuf,
    /// Task name [default: the name of the bundle directory's parent].
    #[arg(long)]
    pub task: Option<String>,
    /// How long to wait for the server to be SERVING with the bundle's version live, in seconds.
    #[arg(long, default_value_t = 120)]
    pub wait_secs: u64,
    /// Verify a rollout step (shadow or share) instead of a release: wait until the server has
    /// this policy file live (compared by its SHA-256), then replay the golden rows pinned to
    /// the bundle's version, which the policy keeps loaded.
    #[arg(long)]
    pub rollout: Option<PathBuf>,
    #[command(flatten)]
    pub auth: connect::ClientAuth,
}

/// Why verification failed.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}: golden.jsonl has no rows")]
    NoGolden(PathBuf),
    #[error("{path}: golden.jsonl {source}")]
    Golden {
        path: PathBuf,
        #[source]
        source: golden::GoldenParseError,
    },
    #[error("cannot tell the task from {0}; pass --task")]
    Task(PathBuf),
    #[error("server address or TLS settings: {0}")]
    Address(String),
    #[error("{addr}: not serving {task} {expected} after {waited_secs} s (last seen: {last})")]
    NotLive { addr: String, task: String, expected: String, waited_secs: u64, last: String },
    #[error("{addr}: Predict failed: {status}")]
    Predict { addr: String, status: tonic::Status },
    #[error("{addr}: refused: {status}")]
    Refused { addr: String, status: tonic::Status },
    #[error("{addr}: {0}", .mismatches.join("; "))]
    Mismatch { addr: String, mismatches: Vec<String> },
}

/// What one server answered.
#[derive(Debug, Clone)]
pub struct Verified {
    pub addr: String,
    pub version: String,
    pub rows: usize,
}

/// Checks every address in turn and stops at the first that fails.
pub async fn run(args: &VerifyArgs) -> Result<Vec<Verified>, VerifyError> {
    let task = match &args.task {
        Some(t) => t.clone(),
        None => task_of(&args.bundle).ok_or_else(|| VerifyError::Task(args.bundle.clone()))?,
    };
    let read = |name: &str| {
        let path = args.bundle.join(name);
        std::fs::read_to_string(&path).map_err(|source| VerifyError::Read { path, source })
    };
    let expected = read("version.txt")?.trim().to_owned();
    let rows = golden::parse(&read("golden.jsonl")?)
        .map_err(|source| VerifyError::Golden { path: args.bundle.clone(), source })?;
    if rows.is_empty() {
        return Err(VerifyError::NoGolden(args.bundle.clone()));
    }
    let want = match &args.rollout {
        None => Want::Live(expected.clone()),
        Some(path) => {
            let bytes = std::fs::read(path).map_err(|source| VerifyError::Read { path: path.clone(), source })?;
            Want::Policy(crate::bundle::manifest::sha256_hex(&bytes))
        }
    };
    let wait = Duration::from_secs(args.wait_secs);
    let mut verified = Vec::with_capacity(args.addrs.len());
    for addr in &args.addrs {
        verified.push(verify_one(addr, &args.auth, &task, (&want, &expected), &rows, wait).await?);
    }
    Ok(verified)
}

fn task_of(bundle: &Path) -> Option<String> {
    let absolute = std::path::absolute(bundle).ok()?;
    Some(absolute.parent()?.file_name()?.to_str()?.to_owned())
}

/// What a server must show before its answers are checked.
enum Want {
    /// This version live (a release).
    Live(String),
    /// The rollout policy file with this SHA-256 live (a rollout step).
    Policy(String),
}

impl std::fmt::Display for Want {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Want::Live(version) => write!(f, "version {version}"),
            Want::Policy(sha) => write!(f, "rollout policy sha256 {sha}"),
        }
    }
}

async fn verify_one(
    addr: &str,
    auth: &connect::ClientAuth,
    task: &str,
    (want, expected): (&Want, &str),
    rows: &[GoldenRow],
    wait: Duration,
) -> Result<Verified, VerifyError> {
    // Lazy: a server that is not up yet is one more reason to retry, not a failure.
    let authorization = auth.authorization().map_err(VerifyError::Address)?;
    let channel =
        auth.endpoint(addr).map_err(VerifyError::Address)?.connect_timeout(Duration::from_secs(5)).connect_lazy();
    wait_until_live(channel.clone(), addr, &authorization, task, want, wait).await?;

    // A release replays unpinned, as a caller would; a rollout step pins the version it put in
    // the shadow or gave a share, which the policy keeps loaded.
    let pin = match want {
        Want::Live(_) => String::new(),
        Want::Policy(_) => expected.to_owned(),
    };
    let request = pb::PredictRequest {
        task: task.to_owned(),
        rows: rows.iter().map(|g| (&g.row).into()).collect(),
        request_id: format!("modeld-verify-{expected}"),
        version: pin,
        ..Default::default()
    };
    let response = InferenceClient::new(channel)
        .predict(connect::request(request, &authorization))
        .await
        .map_err(|status| VerifyError::Predict { addr: addr.to_owned(), status })?
        .into_inner();
    let mismatches = compare(expected, rows, &response);
    if !mismatches.is_empty() {
        return Err(VerifyError::Mismatch { addr: addr.to_owned(), mismatches });
    }
    Ok(Verified { addr: addr.to_owned(), version: response.version, rows: rows.len() })
}

/// Polls grpc.health.v1 and GetVersion until the task is SERVING with what is wanted live.
async fn wait_until_live(
    channel: Channel,
    addr: &str,
    authorization: &Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    task: &str,
    want: &Want,
    wait: Duration,
) -> Result<(), VerifyError> {
    let mut health = HealthClient::new(channel.clone());
    let mut inference = InferenceClient::new(channel);
    let started = Instant::now();
    loop {
        let last = match health.check(HealthCheckRequest { service: INFERENCE_SERVICE.to_owned() }).await {
            Err(status) => format!("health check failed: {}", status.message()),
            Ok(r) if r.get_ref().status != ServingStatus::Serving as i32 => "NOT_SERVING".to_owned(),
            Ok(_) => match inference
                .get_version(connect::request(pb::GetVersionRequest { task: task.to_owned() }, authorization))
                .await
            {
                // Waiting does not fix credentials: fail at once.
                Err(status)
                    if matches!(status.code(), tonic::Code::Unauthenticated | tonic::Code::PermissionDenied) =>
                {
                    return Err(VerifyError::Refused { addr: addr.to_owned(), status });
                }
                Err(status) => format!("GetVersion failed: {}", status.message()),
                Ok(v) if shows(v.get_ref(), want) => return Ok(()),
                Ok(v) => {
                    let v = v.into_inner();
                    let policy = v.rollout.as_ref().map_or("none", |p| p.sha256.as_str());
                    let seen = match want {
                        Want::Live(_) => format!("version {}", v.version),
                        Want::Policy(_) => format!("version {}, rollout policy sha256 {policy}", v.version),
                    };
                    match (v.last_reload_error.as_str(), v.rollout_error.as_str()) {
                        ("", "") => seen,
                        ("", error) | (error, "") => format!("{seen}, last reload error: {error}"),
                        (error, policy_error) => format!("{seen}, last reload error: {error}; {policy_error}"),
                    }
                }
            },
        };
        if started.elapsed() >= wait {
            return Err(VerifyError::NotLive {
                addr: addr.to_owned(),
                task: task.to_owned(),
                expected: want.to_string(),
                waited_secs: wait.as_secs(),
                last,
            });
        }
        tokio::time::sleep(RETRY_EVERY).await;
    }
}

fn shows(v: &pb::GetVersionResponse, want: &Want) -> bool {
    match want {
        Want::Live(version) => v.version == *version,
        Want::Policy(sha) => v.rollout.as_ref().is_some_and(|p| p.sha256 == *sha),
    }
}

/// Every way the answer differs from the golden rows, one line each.
fn compare(expected: &str, rows: &[GoldenRow], response: &pb::PredictResponse) -> Vec<String> {
    let mut mismatches = Vec::new();
    if response.version != expected {
        mismatches.push(format!("answered with version {}, expected {expected}", response.version));
    }
    if response.predictions.len() != rows.len() {
        mismatches.push(format!("{} predictions for {} rows", response.predictions.len(), rows.len()));
        return mismatches;
    }
    for (g, p) in rows.iter().zip(&response.predictions) {
        if let Some(reason) = g.mismatch(&p.label, &p.probabilities, &p.values, p.score, golden::TOLERANCE) {
            mismatches.push(format!("golden line {}: {reason}", g.line));
        }
    }
    mismatches
}
