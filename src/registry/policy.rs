//! A task's rollout policy file (`<task>/rollout.yaml`) as the registry reads it, and the
//! policy in force once the versions it names are resolved (publishing is `rollout`'s).

use std::{collections::BTreeMap, path::Path, time::SystemTime};

use crate::{
    bundle::manifest::{read_file, sha256_hex},
    rollout::{Policy, policy::FILE},
};

/// The policy in force for a task, with its versions resolved to the bundles loaded for them.
#[derive(Debug, Clone, PartialEq)]
pub struct LivePolicy {
    pub policy: Policy,
    /// SHA-256 of the file's bytes.
    pub sha256: String,
    /// Per version directory the policy names, the version string of the bundle loaded from it
    /// (what responses, metrics and pins call it).
    pub versions: BTreeMap<String, String>,
    /// When this policy was published.
    pub since: SystemTime,
}

impl LivePolicy {
    /// The version string of a directory the policy names.
    pub fn version_of<'a>(&'a self, dir: &'a str) -> &'a str {
        self.versions.get(dir).map_or(dir, String::as_str)
    }
}

/// What the policy file holds now.
pub(super) enum Candidate {
    /// No file: no policy.
    Absent,
    Parsed {
        policy: Policy,
        sha256: String,
    },
    Bad {
        sha256: String,
        error: String,
    },
}

impl Candidate {
    /// The version directories it needs loaded.
    pub(super) fn versions(&self) -> Vec<String> {
        match self {
            Candidate::Parsed { policy, .. } => policy.versions().into_iter().map(str::to_owned).collect(),
            _ => Vec::new(),
        }
    }
}

/// Reads the policy file of the task directory `dir`.
pub(super) fn read(dir: &Path) -> Candidate {
    let path = dir.join(FILE);
    let bytes = match read_file(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Candidate::Absent,
        Err(e) => return Candidate::Bad { sha256: String::new(), error: format!("cannot read {FILE}: {e}") },
    };
    let sha256 = sha256_hex(&bytes);
    let parsed = std::str::from_utf8(&bytes)
        .map_err(|_| "not UTF-8".to_owned())
        .and_then(|text| Policy::parse(text).map_err(|e| e.to_string()));
    match parsed {
        // An empty policy (how a release clears one) is no policy.
        Ok(policy) if policy.split.is_empty() && policy.shadow.is_empty() => Candidate::Absent,
        Ok(policy) => Candidate::Parsed { policy, sha256 },
        Err(error) => Candidate::Bad { sha256, error },
    }
}
