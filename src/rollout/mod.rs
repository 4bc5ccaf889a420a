//! Champion/challenger inside the process: the rollout policy (`<task>/rollout.yaml`), the
//! sticky split's buckets, shadow scoring off the request path, and the decision diff.
//!
//! This module sits below the registry, not above it (where ARCHITECTURE.md draws it): the
//! registry follows the policy file the way it follows the `current` link (same watches, same
//! reload loop, the versions a policy names kept warm like `keep_versions`), so it must parse
//! the policy; the core then asks the registry for the live policy. Nothing here knows requests
//! or wire formats.
//!
//! # Files
//! `policy` (the file and the buckets), `diff` (the comparison's totals and metrics), `shadow`
//! (the bounded hand-over of shadow jobs to the bulk runtime; imports `diff`).

pub mod diff;
pub mod policy;
pub mod shadow;

pub use self::{
    diff::{Diffs, PairReport},
    policy::{Policy, PolicyError, StickyBy},
    shadow::{ShadowJob, ShadowQueue},
};
