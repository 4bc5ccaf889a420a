//! Who may call which tasks: the callers file, and authentication against it.
//!
//! The file (`callers_file`, YAML) lists callers, each with a name, how it proves who it is
//! (the SHA-256 of its bearer token, never the token itself; and/or the identity in its client
//! certificate), and the tasks it may call (`"*"` for all):
//!
//! ```yaml
//! callers:
//!   - name: decision-engine
//!     token_sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
//!     tasks: [credit_risk]
//!   - name: batch-labeller
//!     identity: spiffe://bank.example/ns/risk/sa/labeller
//!     tasks: ["*"]
//! ```
//!
//! A presented token decides alone: it must match an entry. Without a token, a verified client
//! certificate's identity (each SAN URI and DNS name, else the subject CN) must match an entry's
//! `identity`. Tokens are compared as digests in constant time, against every entry.
//! [`Access`] rereads the file when it changes; a bad file is logged and counted, and the
//! callers already loaded stay.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use arc_swap::ArcSwap;
use prometheus::IntCounterVec;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// An authenticated caller.
#[derive(Debug, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    /// None: every task.
    tasks: Option<Vec<String>>,
}

impl Caller {
    /// Whether this caller may call `task`.
    pub fn may_call(&self, task: &str) -> bool {
        self.tasks.as_ref().is_none_or(|tasks| tasks.iter().any(|t| t == task))
    }
}

/// Why a caller was not let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unauthenticated {
    #[error("no credentials: send `authorization: Bearer <token>` or a client certificate")]
    NoCredentials,
    #[error("the bearer token is not a known caller's")]
    UnknownToken,
    #[error("the client certificate's identity is not a known caller's")]
    UnknownIdentity,
    #[error("the authorization header is not `Bearer <token>`")]
    Malformed,
}

/// Why a callers file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CallersError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("{path}: caller `{name}`: {reason}")]
    Entry { path: PathBuf, name: String, reason: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    callers: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    #[serde(default)]
    token_sha256: Option<String>,
    #[serde(default)]
    identity: Option<String>,
    tasks: Vec<String>,
}

/// The callers of one version of the file.
#[derive(Debug, Default)]
pub struct Callers {
    by_token: Vec<([u8; 32], Arc<Caller>)>,
    by_identity: Vec<(String, Arc<Caller>)>,
}

impl Callers {
    /// Reads and checks a callers file.
    pub fn load(path: &Path) -> Result<Callers, CallersError> {
        let text = std::fs::read_to_string(path).map_err(|source| CallersError::Read { path: path.into(), source })?;
        Callers::parse(&text, path)
    }

    fn parse(text: &str, path: &Path) -> Result<Callers, CallersError> {
        let file: File =
            serde_yaml::from_str(text).map_err(|source| CallersError::Parse { path: path.into(), source })?;
        let mut callers = Callers::default();
        for e in file.callers {
            let bad =
                |reason: &str| CallersError::Entry { path: path.into(), name: e.name.clone(), reason: reason.into() };
            if e.name.trim().is_empty() {
                return Err(bad("a caller needs a name"));
            }
            if e.token_sha256.is_none() && e.identity.is_none() {
                return Err(bad("give token_sha256, identity, or both"));
            }
            if e.tasks.is_empty() {
                return Err(bad("tasks is empty: list the tasks it may call, or \"*\""));
            }
            let tasks = (!e.tasks.iter().any(|t| t == "*")).then(|| e.tasks.clone());
            let caller = Arc::new(Caller { name: e.name.clone(), tasks });
            if let Some(hex) = &e.token_sha256 {
                let digest = parse_digest(hex).ok_or_else(|| bad("token_sha256 is not 64 hex digits"))?;
                callers.by_token.push((digest, caller.clone()));
            }
            if let Some(identity) = &e.identity {
                callers.by_identity.push((identity.clone(), caller));
            }
        }
        Ok(callers)
    }

    /// The caller presenting `authorization` (the header's value, if any) over a connection
    /// whose client certificate carries `identities`.
    pub fn authenticate(
        &self,
        authorization: Option<&str>,
        identities: &[String],
    ) -> Result<Arc<Caller>, Unauthenticated> {
        if let Some(header) = authorization {
            let token = header
                .strip_prefix("Bearer ")
                .or_else(|| header.strip_prefix("bearer "))
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .ok_or(Unauthenticated::Malformed)?;
            let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
            // Every entry is compared, so the time taken says nothing about which one matched.
            let mut found = None;
            for (known, caller) in &self.by_token {
                if bool::from(known.ct_eq(&digest)) {
                    found = Some(caller.clone());
                }
            }
            return found.ok_or(Unauthenticated::UnknownToken);
        }
        if identities.is_empty() {
            return Err(Unauthenticated::NoCredentials);
        }
        self.by_identity
            .iter()
            .find(|(identity, _)| identities.contains(identity))
            .map(|(_, caller)| caller.clone())
            .ok_or(Unauthenticated::UnknownIdentity)
    }

    /// The names of every caller, for bounded metric labels.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_token.iter().map(|(_, c)| c.name.as_str()).chain(self.by_identity.iter().map(|(_, c)| c.name.as_str()))
    }
}

fn parse_digest(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The identities a client certificate (DER) proves: each SAN URI and DNS name, or the subject
/// CN when it has neither.
pub fn certificate_identities(der: &[u8]) -> Vec<String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let Ok((_, cert)) = X509Certificate::from_der(der) else { return Vec::new() };
    let mut identities = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::URI(uri) => identities.push((*uri).to_owned()),
                GeneralName::DNSName(dns) => identities.push((*dns).to_owned()),
                _ => {}
            }
        }
    }
    if identities.is_empty() {
        if let Some(cn) = cert.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()) {
            identities.push(cn.to_owned());
        }
    }
    identities
}

/// The live callers, when a callers file is configured. Cloning is shallow.
#[derive(Clone)]
pub struct Access {
    inner: Option<Arc<AccessInner>>,
}

struct AccessInner {
    path: PathBuf,
    callers: ArcSwap<Callers>,
    /// Content of the file last tried, so a bad file is reported once, not at every poll.
    last_seen: std::sync::Mutex<Vec<u8>>,
    reloads: IntCounterVec,
}

impl Access {
    /// No caller check: every call is let in, with no caller name.
    pub fn open() -> Access {
        Access { inner: None }
    }

    /// Callers from `path`; fails when the file cannot be used at start-up.
    pub fn from_file(path: &Path, reloads: IntCounterVec) -> Result<Access, CallersError> {
        let text = std::fs::read(path).map_err(|source| CallersError::Read { path: path.into(), source })?;
        let callers = Callers::parse(&String::from_utf8_lossy(&text), path)?;
        reloads.with_label_values(&["success"]).inc();
        Ok(Access {
            inner: Some(Arc::new(AccessInner {
                path: path.into(),
                callers: ArcSwap::from_pointee(callers),
                last_seen: std::sync::Mutex::new(text),
                reloads,
            })),
        })
    }

    /// Whether callers are checked.
    pub fn is_on(&self) -> bool {
        self.inner.is_some()
    }

    /// The caller, or None when callers are not checked.
    pub fn authenticate(
        &self,
        authorization: Option<&str>,
        identities: &[String],
    ) -> Result<Option<Arc<Caller>>, Unauthenticated> {
        match &self.inner {
            None => Ok(None),
            Some(inner) => inner.callers.load().authenticate(authorization, identities).map(Some),
        }
    }

    /// Rereads the file if its content changed: a good file replaces the callers, a bad one is
    /// logged and counted once and the callers stay.
    pub fn reload(&self) {
        let Some(inner) = &self.inner else { return };
        let Ok(text) = std::fs::read(&inner.path) else {
            // A Secret being swapped can be briefly absent; the next poll sees the new file.
            return;
        };
        let mut last = inner.last_seen.lock().expect("the callers lock is never poisoned");
        if *last == text {
            return;
        }
        *last = text;
        match Callers::parse(&String::from_utf8_lossy(&last), &inner.path) {
            Ok(callers) => {
                tracing::info!(path = %inner.path.display(), callers = callers.names().count(), "callers file reloaded");
                inner.callers.store(Arc::new(callers));
                inner.reloads.with_label_values(&["success"]).inc();
            }
            Err(e) => {
                tracing::error!(error = %e, "callers file rejected; the callers loaded before stay");
                inner.reloads.with_label_values(&["failure"]).inc();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(token: &str) -> String {
        Sha256::digest(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn tokens_and_identities_authenticate_and_tasks_are_checked() {
        let yaml = format!(
            "callers:\n  - {{name: engine, token_sha256: {}, tasks: [credit_risk]}}\n  - {{name: labeller, identity: spiffe://bank/labeller, tasks: ['*']}}\n",
            hex("s3cret")
        );
        let callers = Callers::parse(&yaml, Path::new("callers.yaml")).unwrap();
        let engine = callers.authenticate(Some("Bearer s3cret"), &[]).unwrap();
        assert_eq!(engine.name, "engine");
        assert!(engine.may_call("credit_risk") && !engine.may_call("fraud"));
        assert_eq!(callers.authenticate(Some("Bearer wrong"), &[]), Err(Unauthenticated::UnknownToken));
        assert_eq!(callers.authenticate(Some("Basic abc"), &[]), Err(Unauthenticated::Malformed));
        assert_eq!(callers.authenticate(None, &[]), Err(Unauthenticated::NoCredentials));
        let labeller = callers.authenticate(None, &["x".into(), "spiffe://bank/labeller".into()]).unwrap();
        assert!(labeller.may_call("fraud"));
        assert_eq!(callers.authenticate(None, &["other".into()]), Err(Unauthenticated::UnknownIdentity));
        // A token decides alone, even over a known certificate.
        assert_eq!(
            callers.authenticate(Some("Bearer wrong"), &["spiffe://bank/labeller".into()]),
            Err(Unauthenticated::UnknownToken)
        );
    }

    #[test]
    fn bad_files_name_the_caller_and_the_problem() {
        let parse = |yaml: &str| Callers::parse(yaml, Path::new("c.yaml")).unwrap_err().to_string();
        assert!(
            parse("callers:\n  - {name: a, tasks: [t]}\n").contains("caller `a`: give token_sha256, identity, or both")
        );
        assert!(parse("callers:\n  - {name: a, token_sha256: abc, tasks: [t]}\n").contains("not 64 hex digits"));
        assert!(parse("callers:\n  - {name: a, identity: x, tasks: []}\n").contains("tasks is empty"));
        assert!(parse("callers:\n  - {name: a, identity: x, tasks: [t], token: x}\n").contains("unknown field"));
    }
}
