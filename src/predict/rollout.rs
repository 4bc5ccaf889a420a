//! The rollout policy at work in the core: which version answers a call (a pin, the split's
//! choice by the call's sticky key, or the live version), and the shadow jobs handed over once
//! the answer is made.

use std::{fmt::Write, sync::Arc};

use super::{
    audit::ShadowRecord,
    call::{Answered, KeyOf, Prediction},
    error::PredictError,
    predictor::Predictor,
};
use crate::{
    bundle::Bundle,
    preprocess::RowView,
    registry::LivePolicy,
    rollout::{ShadowJob, StickyBy, policy::bucket, shadow::Report},
    schema::Value,
};

impl Predictor {
    /// The version that answers a call without a pin: the split's choice for the call's key,
    /// or the live version when the policy has no split.
    pub(super) fn choose<R: RowView>(
        &self,
        task: &str,
        policy: &LivePolicy,
        request_id: &str,
        rows: &[R],
        key_of: KeyOf,
    ) -> Result<Arc<Bundle>, PredictError> {
        let registry = &self.inner.registry;
        if policy.policy.split.is_empty() || rows.is_empty() {
            return Ok(registry.get(task)?);
        }
        let mut key = String::new();
        sticky_key(&policy.policy.sticky_by, request_id, rows, key_of, &mut key)?;
        let share = policy.policy.choose(bucket(task, key.as_bytes())).expect("the split's ranges cover every bucket");
        Ok(registry.get_version(task, policy.version_of(&share.version))?)
    }

    /// Hands the answered rows to each shadow version the policy names (other than the one that
    /// answered). Never waits: a job that cannot be queued is dropped and counted.
    pub(super) fn shadow<R: RowView>(&self, task: &str, policy: &LivePolicy, answered: &Answered<'_, R>) {
        let Some(queue) = &self.inner.shadow else { return };
        let registry = &self.inner.registry;
        let Some(task) = registry.task_name(task) else { return };
        let mut given: Option<Arc<[Option<Prediction>]>> = None;
        for dir in &policy.policy.shadow {
            let version = policy.version_of(dir);
            if version == answered.bundle.version || queue.shedding(task) {
                continue;
            }
            let Ok(challenger) = registry.get_version(task, version) else {
                queue.encode_failed(task);
                continue;
            };
            // The rows the challenger can encode, and the answers given for those rows.
            let (input, outcomes) = challenger.prepare_each(answered.rows);
            let keep: Vec<bool> = outcomes.iter().map(Result::is_ok).collect();
            if input.rows == 0 {
                queue.encode_failed(task);
                continue;
            }
            let all = keep.iter().all(|k| *k);
            let shared = if all {
                given.get_or_insert_with(|| answered.predictions.iter().map(|p| p.cloned()).collect()).clone()
            } else {
                answered.predictions.iter().zip(&keep).filter(|(_, k)| **k).map(|(p, _)| p.cloned()).collect()
            };
            let report = answered.audited.then(|| self.shadow_report(task, answered, &keep)).flatten();
            queue.submit(ShadowJob {
                task: Arc::from(task),
                champion: answered.bundle.clone(),
                challenger,
                input,
                answered: shared,
                report,
            });
        }
    }

    /// The hook that writes a shadow job's audit record once it ran.
    fn shadow_report<R: RowView>(&self, task: &str, answered: &Answered<'_, R>, keep: &[bool]) -> Option<Report> {
        self.inner.audit.as_ref()?;
        let predictor = self.clone();
        let record = ShadowRecord {
            ctx: answered.ctx.clone(),
            task: task.to_owned(),
            request_id: answered.request_id.to_owned(),
            stream: answered.stream,
            champion: answered.bundle.clone(),
            rows: answered
                .rows
                .iter()
                .zip(answered.predictions)
                .zip(keep)
                .filter(|(_, k)| **k)
                .map(|((row, p), _)| (row.row_id().to_owned(), p.cloned()))
                .collect(),
        };
        Some(Box::new(move |challenger: &Bundle, predictions: &[Prediction], took| {
            if let Some(audit) = &predictor.inner.audit {
                audit.submit_shadow(&record, challenger, predictions, took);
            }
        }))
    }
}

/// Writes the call's sticky key into `key`; a missing key, or (for a call) a row whose key
/// differs from the first row's, is an invalid argument naming the row and the field.
fn sticky_key<R: RowView>(
    by: &StickyBy,
    request_id: &str,
    rows: &[R],
    key_of: KeyOf,
    key: &mut String,
) -> Result<(), PredictError> {
    let missing = |row: usize, field: &str, reason| PredictError::StickyKey { row, field: field.to_owned(), reason };
    match (by, key_of) {
        (StickyBy::RequestId, KeyOf::Call) => {
            if request_id.is_empty() {
                return Err(missing(0, "request_id", "the rollout splits calls by request id: send one"));
            }
            key.push_str(request_id);
        }
        (StickyBy::RowId | StickyBy::RequestId, _) => {
            let first = rows[0].row_id();
            if first.is_empty() {
                return Err(missing(0, "row_id", "the rollout splits by row id: the row needs one"));
            }
            if key_of == KeyOf::Call {
                if let Some(row) = rows.iter().position(|r| r.row_id() != first) {
                    return Err(missing(
                        row,
                        "row_id",
                        "the rollout splits by row id: every row of a call needs the same one",
                    ));
                }
            }
            key.push_str(first);
        }
        (StickyBy::Feature(name), _) => {
            let first = feature_key(&rows[0], name, key)
                .ok_or_else(|| missing(0, name, "the rollout splits by this feature: the row needs a value"))?;
            if key_of == KeyOf::Call && rows.len() > 1 {
                let mut other = String::new();
                for (row, r) in rows.iter().enumerate().skip(1) {
                    other.clear();
                    if feature_key(r, name, &mut other).is_none() || other[..] != key[first..] {
                        return Err(missing(
                            row,
                            name,
                            "the rollout splits by this feature: every row of a call needs the first row's value",
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

/// Appends `row`'s value of `name` to `out` as key text (numbers without a fraction as
/// integers, so `42` and `42.0` are one key whatever the wire), returning where it starts; None
/// when the row has no value for it.
fn feature_key<R: RowView>(row: &R, name: &str, out: &mut String) -> Option<usize> {
    let start = out.len();
    let (_, value) = row.features().find(|(n, _)| *n == name)?;
    match value? {
        Value::Text(s) => out.push_str(s),
        Value::Integer(i) => write!(out, "{i}").expect("writing to a String cannot fail"),
        Value::Number(x) if x.fract() == 0.0 && x.abs() < 9.0e15 => {
            write!(out, "{}", x as i64).expect("writing to a String cannot fail")
        }
        Value::Number(x) => write!(out, "{x}").expect("writing to a String cannot fail"),
        Value::Bool(b) => out.push_str(if b { "true" } else { "false" }),
        Value::Other(_) => return None,
    }
    Some(start)
}
