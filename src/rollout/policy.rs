//! A task's rollout policy, `<task>/rollout.yaml`: which versions score in the shadow, how
//! decisions are split between versions, and by which key a caller sticks to one.
//!
//! ```yaml
//! shadow: [v4]            # scored after the answer is sent; never returned
//! split:                  # shares of the decisions, in this order; weights sum to 1
//!   v3: 0.9
//!   v4: 0.1
//! sticky_by: applicant_id # a feature name, `row_id` or `request_id`
//! ```
//!
//! Versions are named by their directory under the task, as the `current` link names them.
//! A key's bucket is the first 8 bytes of SHA-256(task, 0x00, key), big-endian, mod 10,000;
//! the split's versions own contiguous bucket ranges in the order written. Raising one share
//! moves keys only towards that version, and a key lands on the same version on every replica
//! and across restarts.

use sha2::{Digest, Sha256};

/// The policy file's name inside a task directory.
pub const FILE: &str = "rollout.yaml";

/// Buckets a key can fall into: shares resolve to 0.01 percentage points.
pub const BUCKETS: u32 = 10_000;

/// What a split's key is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StickyBy {
    /// The request's id; a stream (which has none) uses its first row's id.
    RequestId,
    /// The first row's id.
    RowId,
    /// The first row's value of this feature.
    Feature(String),
}

impl StickyBy {
    /// How the policy file names it.
    pub fn name(&self) -> &str {
        match self {
            StickyBy::RequestId => "request_id",
            StickyBy::RowId => "row_id",
            StickyBy::Feature(name) => name,
        }
    }
}

/// One version's share of the decisions: it answers keys whose bucket is in `buckets`.
#[derive(Debug, Clone, PartialEq)]
pub struct Share {
    pub version: String,
    pub weight: f64,
    pub buckets: std::ops::Range<u32>,
}

/// A parsed, checked policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub shadow: Vec<String>,
    pub split: Vec<Share>,
    pub sticky_by: StickyBy,
}

/// Why a policy file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PolicyError(pub String);

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    shadow: Vec<String>,
    #[serde(default)]
    split: Option<serde_yaml::Mapping>,
    #[serde(default)]
    sticky_by: Option<String>,
}

impl Policy {
    /// Parses and checks a policy file's text.
    pub fn parse(text: &str) -> Result<Policy, PolicyError> {
        let file: File = if text.trim().is_empty() {
            File { shadow: Vec::new(), split: None, sticky_by: None }
        } else {
            serde_yaml::from_str(text).map_err(|e| PolicyError(e.to_string()))?
        };
        let mut shadow: Vec<String> = Vec::with_capacity(file.shadow.len());
        for v in file.shadow {
            check_name(&v)?;
            if shadow.contains(&v) {
                return Err(PolicyError(format!("shadow: version `{v}` is listed twice")));
            }
            shadow.push(v);
        }
        let mut weights: Vec<(String, f64)> = Vec::new();
        for (key, value) in file.split.unwrap_or_default() {
            let version = match key {
                serde_yaml::Value::String(s) => s,
                other => return Err(PolicyError(format!("split: version names are text, got {other:?}"))),
            };
            check_name(&version)?;
            let weight = value
                .as_f64()
                .ok_or_else(|| PolicyError(format!("split: the weight of `{version}` must be a number")))?;
            if !(0.0..=1.0).contains(&weight) {
                return Err(PolicyError(format!("split: the weight of `{version}` is {weight}, not within [0, 1]")));
            }
            if weights.iter().any(|(v, _)| *v == version) {
                return Err(PolicyError(format!("split: version `{version}` is listed twice")));
            }
            weights.push((version, weight));
        }
        let sticky_by = match file.sticky_by.as_deref() {
            None if weights.is_empty() => StickyBy::RequestId,
            None => {
                return Err(PolicyError(
                    "sticky_by: required with a split (a feature, `row_id` or `request_id`)".into(),
                ));
            }
            Some("") => return Err(PolicyError("sticky_by: must name a feature, `row_id` or `request_id`".into())),
            Some("request_id") => StickyBy::RequestId,
            Some("row_id") => StickyBy::RowId,
            Some(feature) => StickyBy::Feature(feature.to_owned()),
        };
        let split = shares(weights)?;
        Ok(Policy { shadow, split, sticky_by })
    }

    /// Every version the policy names, each once: the split's in order, then the shadow's.
    pub fn versions(&self) -> Vec<&str> {
        let mut out: Vec<&str> = self.split.iter().map(|s| s.version.as_str()).collect();
        for v in &self.shadow {
            if !out.contains(&v.as_str()) {
                out.push(v);
            }
        }
        out
    }

    /// The split's version for a key in `bucket`; None when there is no split.
    pub fn choose(&self, bucket: u32) -> Option<&Share> {
        self.split.iter().find(|s| s.buckets.contains(&bucket))
    }
}

/// Contiguous bucket ranges in the order written; the weights must sum to 1.
fn shares(weights: Vec<(String, f64)>) -> Result<Vec<Share>, PolicyError> {
    if weights.is_empty() {
        return Ok(Vec::new());
    }
    let sum: f64 = weights.iter().map(|(_, w)| w).sum();
    if (sum - 1.0).abs() > 1e-6 {
        return Err(PolicyError(format!("split: weights sum to {sum}, not 1")));
    }
    let mut out = Vec::with_capacity(weights.len());
    let (mut cumulative, mut from) = (0.0, 0u32);
    let last = weights.len() - 1;
    for (i, (version, weight)) in weights.into_iter().enumerate() {
        cumulative += weight;
        // Rounded from the running total, so rounding never accumulates; the last range ends
        // at the last bucket whatever the float sum says.
        let until = if i == last { BUCKETS } else { ((cumulative * f64::from(BUCKETS)).round() as u32).min(BUCKETS) };
        out.push(Share { version, weight, buckets: from..until.max(from) });
        from = until.max(from);
    }
    Ok(out)
}

/// A version must be a plain directory name under the task.
fn check_name(name: &str) -> Result<(), PolicyError> {
    if name.is_empty() || name.starts_with('.') || name.contains('/') || name == "current" {
        return Err(PolicyError(format!("`{name}` is not a version directory name")));
    }
    Ok(())
}

/// The bucket of `key` for `task`: the first 8 bytes of SHA-256(task, 0x00, key), big-endian,
/// mod [`BUCKETS`].
pub fn bucket(task: &str, key: &[u8]) -> u32 {
    let mut hash = Sha256::new();
    hash.update(task.as_bytes());
    hash.update([0u8]);
    hash.update(key);
    let digest = hash.finalize();
    let first = u64::from_be_bytes(digest[..8].try_into().expect("a SHA-256 digest has 32 bytes"));
    (first % u64::from(BUCKETS)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_take_contiguous_ranges_in_order() {
        let p = Policy::parse("split:\n  v3: 0.9\n  v4: 0.1\nsticky_by: applicant_id\n").unwrap();
        assert_eq!(p.split[0].buckets, 0..9000);
        assert_eq!(p.split[1].buckets, 9000..10000);
        assert_eq!(p.sticky_by, StickyBy::Feature("applicant_id".into()));
        assert_eq!(p.versions(), ["v3", "v4"]);
        // Raising v4's share only moves keys towards v4: v3's range shrinks from the top.
        let q = Policy::parse("split:\n  v3: 0.5\n  v4: 0.5\nsticky_by: row_id\n").unwrap();
        assert_eq!(q.split[0].buckets, 0..5000);
        for b in 0..BUCKETS {
            if q.choose(b).unwrap().version == "v3" {
                assert_eq!(p.choose(b).unwrap().version, "v3", "bucket {b}");
            }
        }
    }

    #[test]
    fn bad_policies_are_refused_with_the_reason() {
        for (text, says) in [
            ("split:\n  v1: 0.5\n  v2: 0.4\nsticky_by: row_id\n", "sum to"),
            ("split:\n  v1: 1.5\n  v2: -0.5\nsticky_by: row_id\n", "not within"),
            ("split:\n  v1: 1\n", "sticky_by"),
            ("split:\n  v1: high\nsticky_by: row_id\n", "must be a number"),
            ("shadow: [v2, v2]\n", "twice"),
            ("shadow: [../v2]\n", "not a version directory"),
            ("shadow: [current]\n", "not a version directory"),
            ("shadows: [v2]\n", "unknown field"),
            ("split: [v1]\n", "invalid type"),
        ] {
            let e = Policy::parse(text).unwrap_err().to_string();
            assert!(e.contains(says), "{text:?}: {e}");
        }
    }

    #[test]
    fn an_empty_file_is_an_empty_policy() {
        let p = Policy::parse("").unwrap();
        assert!(p.split.is_empty() && p.shadow.is_empty());
        assert!(p.choose(0).is_none());
    }

    #[test]
    fn buckets_are_stable_and_spread() {
        // Fixed values: a bucket must never change between releases, or keys would move.
        // The same numbers as Python's hashlib gives for this definition.
        assert_eq!(bucket("credit_risk", b"applicant-1"), 5649);
        assert_eq!(bucket("credit_risk", b"A-1002"), 7899);
        assert_ne!(bucket("credit_risk", b"k"), bucket("other_task", b"k"));
        let mut counts = [0u32; 10];
        for i in 0..10_000 {
            counts[(bucket("t", format!("key-{i}").as_bytes()) / 1000) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| (850..1150).contains(&c)), "{counts:?}");
    }
}
