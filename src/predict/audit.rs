//! The audit record: one JSON line per scored request (per chunk for a stream), built here in
//! the core so every face is recorded the same way, and handed to the writer's queue.
//!
//! The line is serialised on the calling thread straight from the face's rows (no owned copy
//! of the features first) and queued without waiting; the writer thread only writes bytes.
//! Successful calls are sampled (`audit_sample`); failed ones are always recorded.
//!
//! Shape (keys in this order; absent keys are omitted):
//! `time` (RFC 3339, UTC, microseconds), `request_id`, `stream` and `chunk` (streams), `peer`,
//! `trace_id` (the call's W3C trace, when it has one), `caller`, `task`, `method`, `version`, `manifest_sha256`, `compare` (`[{version,
//! manifest_sha256}]`), `outcome` (`{code, message, row, field}`), `latency_ms`, and `rows`:
//! `[{row_id, features, outputs: {version: {label, probabilities[, score, reasons]} | {values}}, error}]`.

use std::{
    cell::Cell,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use hmac::{Hmac, Mac};
use rustc_hash::FxHashSet;
use serde::{
    Serialize, Serializer,
    ser::{SerializeMap, SerializeSeq},
};
use sha2::Sha256;

use super::{
    call::{CallContext, Prediction},
    error::PredictError,
};
use crate::{
    bundle::Bundle,
    preprocess::{RowError, RowView},
    schema::Value,
    telemetry::audit::{AuditWriter, format_time},
};

/// Which input features a record carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeatureSelection {
    All,
    Only(FxHashSet<Box<str>>),
}

/// What the core records, and how.
pub struct Auditor {
    writer: Arc<AuditWriter>,
    /// Share of successful calls recorded, 0 to 1.
    sample: f64,
    features: FeatureSelection,
    redact: FxHashSet<Box<str>>,
    /// Keyed once; each redacted value clones the keyed state.
    mac: Option<Hmac<Sha256>>,
    /// The last record's length: the next one's buffer is allocated once at about its size.
    last_len: AtomicUsize,
}

impl Auditor {
    /// Records through `writer`. `redact` needs `hmac_key` (checked by the configuration).
    pub fn new(
        writer: Arc<AuditWriter>,
        sample: f64,
        features: FeatureSelection,
        redact: FxHashSet<Box<str>>,
        hmac_key: Option<&[u8]>,
    ) -> Auditor {
        let mac = hmac_key.map(|k| Hmac::<Sha256>::new_from_slice(k).expect("HMAC takes keys of any length"));
        Auditor { writer, sample: sample.clamp(0.0, 1.0), features, redact, mac, last_len: AtomicUsize::new(1024) }
    }

    /// Whether a successful call is recorded: a fresh draw against `audit_sample` per call.
    pub(super) fn sampled(&self) -> bool {
        self.sample >= 1.0 || (self.sample > 0.0 && uniform() < self.sample)
    }

    /// Queues one record; `task_label` is the bounded label its drop would be counted under.
    pub(super) fn submit(&self, task_label: &str, entry: &Entry<'_>, rows: Rows<'_, impl RowView>) {
        let mut line = Vec::with_capacity(self.last_len.load(Ordering::Relaxed) + 64);
        let record = Record { auditor: self, entry, rows };
        serde_json::to_writer(&mut line, &record).expect("a record always serialises");
        line.push(b'\n');
        self.last_len.store(line.len(), Ordering::Relaxed);
        self.writer.submit(task_label, line);
    }

    /// Queues a shadow job's record: the call's rows (ids only: the call's own record, with the
    /// same request id, holds the features) with the answer given and the shadow version's.
    pub(super) fn submit_shadow(
        &self,
        record: &ShadowRecord,
        challenger: &Bundle,
        predictions: &[Prediction],
        took: Duration,
    ) {
        let mut line = Vec::with_capacity(256 + 128 * record.rows.len());
        let shadow = ShadowLine { record, challenger, predictions, took };
        serde_json::to_writer(&mut line, &shadow).expect("a record always serialises");
        line.push(b'\n');
        self.writer.submit(&record.task, line);
    }

    /// `value` as a record shows a redacted field: `hmac-sha256:<hex>` over its text form, so
    /// equal values give equal digests under one key and nothing without the key reverses them.
    fn digest(&self, value: &Value<'_>) -> String {
        let mut mac = self.mac.clone().expect("redaction is configured with a key");
        match value {
            Value::Text(s) => mac.update(s.as_bytes()),
            // 1000 and 1000.0 are one value to a model, so they share a digest.
            Value::Number(x) => mac.update(x.to_string().as_bytes()),
            Value::Integer(i) => mac.update(i.to_string().as_bytes()),
            Value::Bool(b) => mac.update(if *b { b"true" } else { b"false" }),
            Value::Other(t) => mac.update(t.as_bytes()),
        }
        let bytes = mac.finalize().into_bytes();
        let mut out = String::with_capacity(12 + 64);
        out.push_str("hmac-sha256:");
        for b in bytes {
            out.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
            out.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
        }
        out
    }
}

/// Everything a record says besides its rows.
pub(super) struct Entry<'a> {
    pub ctx: &'a CallContext,
    pub task: &'a str,
    pub request_id: &'a str,
    /// A stream's number and the chunk's index in it.
    pub stream: Option<(u64, u64)>,
    /// The version that answered (or, for a failed call, the live one).
    pub bundle: Option<&'a Bundle>,
    pub compare: &'a [&'a Bundle],
    pub error: Option<&'a PredictError>,
    /// For stream chunks: when the chunk arrived; otherwise the call's start.
    pub latency: Duration,
}

/// What a shadow job's record says besides the shadow version's answers, captured when the
/// call was answered.
pub(super) struct ShadowRecord {
    pub ctx: CallContext,
    pub task: String,
    pub request_id: String,
    pub stream: Option<(u64, u64)>,
    pub champion: Arc<Bundle>,
    /// Per row the challenger scored: its id and the answer given (None: the row got an error).
    pub rows: Vec<(String, Option<Prediction>)>,
}

/// `{time, request_id, [stream, chunk], peer, [caller], task, method, version, manifest_sha256,
/// shadow: {version, manifest_sha256}, outcome, latency_ms, rows: [{row_id, outputs}]}`: like a
/// call's record, with `latency_ms` the shadow run's and `outputs` naming both versions.
struct ShadowLine<'a> {
    record: &'a ShadowRecord,
    challenger: &'a Bundle,
    predictions: &'a [Prediction],
    took: Duration,
}

impl Serialize for ShadowLine<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let r = self.record;
        let mut map = s.serialize_map(None)?;
        head(&mut map, &r.request_id, r.stream, &r.ctx, &r.task)?;
        map.serialize_entry("method", r.ctx.method.name())?;
        map.serialize_entry("version", &r.champion.version)?;
        map.serialize_entry("manifest_sha256", &r.champion.manifest_sha256)?;
        let shadow =
            CompareEntry { version: &self.challenger.version, manifest_sha256: &self.challenger.manifest_sha256 };
        map.serialize_entry("shadow", &shadow)?;
        map.serialize_entry("outcome", &Outcome(None))?;
        map.serialize_entry("latency_ms", &(self.took.as_secs_f64() * 1e3))?;
        let rows: Vec<_> = r
            .rows
            .iter()
            .zip(self.predictions)
            .map(|((row_id, given), shadow)| ShadowRow {
                champion: &r.champion,
                row_id,
                given: given.as_ref(),
                challenger: self.challenger,
                shadow,
            })
            .collect();
        map.serialize_entry("rows", &rows)?;
        map.end()
    }
}

struct ShadowRow<'a> {
    champion: &'a Bundle,
    row_id: &'a str,
    given: Option<&'a Prediction>,
    challenger: &'a Bundle,
    shadow: &'a Prediction,
}

impl Serialize for ShadowRow<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(2))?;
        map.serialize_entry("row_id", self.row_id)?;
        let given = self.given.map(|p| (self.champion, p));
        let outputs = given.into_iter().chain(std::iter::once((self.challenger, self.shadow)));
        map.serialize_entry("outputs", &VersionOutputs(outputs))?;
        map.end()
    }
}

/// The rows of a record with what each version said of them.
pub(super) enum Rows<'a, R> {
    /// A unary call: per version (answering one first), one prediction per row; no versions
    /// when the call failed.
    Unary { rows: &'a [R], versions: &'a [(&'a Bundle, &'a [Prediction])] },
    /// A stream chunk: per row its prediction or its own error, from one version.
    Chunk { rows: &'a [R], bundle: &'a Bundle, outcomes: &'a [Result<Prediction, RowError>] },
    /// A chunk refused before its rows were read.
    None,
}

struct Record<'a, R> {
    auditor: &'a Auditor,
    entry: &'a Entry<'a>,
    rows: Rows<'a, R>,
}

impl<R: RowView> Serialize for Record<'_, R> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let e = self.entry;
        let mut map = s.serialize_map(None)?;
        head(&mut map, e.request_id, e.stream, e.ctx, e.task)?;
        map.serialize_entry("method", e.ctx.method.name())?;
        map.serialize_entry("version", e.bundle.map_or("", |b| b.version.as_str()))?;
        map.serialize_entry("manifest_sha256", e.bundle.map_or("", |b| b.manifest_sha256.as_str()))?;
        if !e.compare.is_empty() {
            let compare: Vec<_> = e
                .compare
                .iter()
                .map(|b| CompareEntry { version: &b.version, manifest_sha256: &b.manifest_sha256 })
                .collect();
            map.serialize_entry("compare", &compare)?;
        }
        map.serialize_entry("outcome", &Outcome(e.error))?;
        map.serialize_entry("latency_ms", &(e.latency.as_secs_f64() * 1e3))?;
        match &self.rows {
            Rows::Unary { rows, versions } => {
                let rows = RowsOf { auditor: self.auditor, rows, outputs: |i| RowOutputs::Unary { versions, i } };
                map.serialize_entry("rows", &rows)?;
            }
            Rows::Chunk { rows, bundle, outcomes } => {
                let rows = RowsOf { auditor: self.auditor, rows, outputs: |i| RowOutputs::Chunk(bundle, &outcomes[i]) };
                map.serialize_entry("rows", &rows)?;
            }
            Rows::None => {}
        }
        map.end()
    }
}

/// The keys every record starts with: `time`, `request_id`, `stream` and `chunk` (streams),
/// `peer`, `trace_id` and `caller` (when known), `task`.
fn head<M: SerializeMap>(
    map: &mut M,
    request_id: &str,
    stream: Option<(u64, u64)>,
    ctx: &CallContext,
    task: &str,
) -> Result<(), M::Error> {
    map.serialize_entry("time", &format_time(SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default()))?;
    map.serialize_entry("request_id", request_id)?;
    if let Some((stream, chunk)) = stream {
        map.serialize_entry("stream", &stream)?;
        map.serialize_entry("chunk", &chunk)?;
    }
    map.serialize_entry("peer", &ctx.peer.map(|p| p.to_string()))?;
    if let Some(trace_id) = ctx.trace_id() {
        map.serialize_entry("trace_id", &trace_id.to_string())?;
    }
    if let Some(caller) = &ctx.caller {
        map.serialize_entry("caller", &caller.name)?;
    }
    map.serialize_entry("task", task)
}

#[derive(Serialize)]
struct CompareEntry<'a> {
    version: &'a str,
    manifest_sha256: &'a str,
}

/// `{code, message, row, field}`: the row and field only for an error about one.
struct Outcome<'a>(Option<&'a PredictError>);

impl Serialize for Outcome<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        match self.0 {
            None => {
                map.serialize_entry("code", "OK")?;
                map.serialize_entry("message", "")?;
            }
            Some(e) => {
                map.serialize_entry("code", e.kind().name())?;
                map.serialize_entry("message", &e.to_string())?;
                match e {
                    PredictError::BadRow(row) => {
                        map.serialize_entry("row", &row.row_index)?;
                        map.serialize_entry("field", &row.field)?;
                    }
                    PredictError::StickyKey { row, field, .. } => {
                        map.serialize_entry("row", row)?;
                        map.serialize_entry("field", field)?;
                    }
                    PredictError::PositionalValues { row } | PredictError::ValueCount { row, .. } => {
                        map.serialize_entry("row", row)?;
                    }
                    _ => {}
                }
            }
        }
        map.end()
    }
}

struct RowsOf<'a, R, F> {
    auditor: &'a Auditor,
    rows: &'a [R],
    outputs: F,
}

impl<'a, R: RowView, F: Fn(usize) -> RowOutputs<'a>> Serialize for RowsOf<'a, R, F> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.rows.len()))?;
        for (i, row) in self.rows.iter().enumerate() {
            seq.serialize_element(&RowRecord { auditor: self.auditor, row, outputs: (self.outputs)(i) })?;
        }
        seq.end()
    }
}

enum RowOutputs<'a> {
    Unary { versions: &'a [(&'a Bundle, &'a [Prediction])], i: usize },
    Chunk(&'a Bundle, &'a Result<Prediction, RowError>),
}

struct RowRecord<'a, R> {
    auditor: &'a Auditor,
    row: &'a R,
    outputs: RowOutputs<'a>,
}

impl<R: RowView> Serialize for RowRecord<'_, R> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("row_id", self.row.row_id())?;
        map.serialize_entry("features", &Features { auditor: self.auditor, row: self.row })?;
        match &self.outputs {
            RowOutputs::Unary { versions, i } => {
                if !versions.is_empty() {
                    map.serialize_entry("outputs", &VersionOutputs(versions.iter().map(|(b, p)| (*b, &p[*i]))))?;
                }
            }
            RowOutputs::Chunk(bundle, Ok(p)) => {
                map.serialize_entry("outputs", &VersionOutputs(std::iter::once((*bundle, p))))?;
            }
            RowOutputs::Chunk(_, Err(e)) => {
                map.serialize_entry("error", &RowErrorRecord { field: &e.field, reason: e.reason.to_string() })?;
            }
        }
        map.end()
    }
}

#[derive(Serialize)]
struct RowErrorRecord<'a> {
    field: &'a str,
    reason: String,
}

/// `{version: outputs}` in the order given.
struct VersionOutputs<I>(I);

impl<'a, I: Iterator<Item = (&'a Bundle, &'a Prediction)> + Clone> Serialize for VersionOutputs<I> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        for (bundle, p) in self.0.clone() {
            map.serialize_entry(&bundle.version, &PredictionRecord { bundle, p })?;
        }
        map.end()
    }
}

struct PredictionRecord<'a> {
    bundle: &'a Bundle,
    p: &'a Prediction,
}

impl Serialize for PredictionRecord<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        if let Some(class) = self.p.class {
            map.serialize_entry("label", &self.bundle.class_labels()[class])?;
            map.serialize_entry("probabilities", &self.p.probabilities)?;
        }
        if !self.p.values.is_empty() {
            map.serialize_entry("values", &self.p.values)?;
        }
        if let Some(score) = self.p.score {
            map.serialize_entry("score", &score)?;
        }
        if !self.p.reasons.is_empty() {
            map.serialize_entry("reasons", &self.p.reasons)?;
        }
        map.end()
    }
}

/// The row's features as the caller sent them, selected and redacted.
struct Features<'a, R> {
    auditor: &'a Auditor,
    row: &'a R,
}

impl<R: RowView> Serialize for Features<'_, R> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let a = self.auditor;
        let mut map = s.serialize_map(None)?;
        for (name, value) in self.row.features() {
            if let FeatureSelection::Only(names) = &a.features {
                if !names.contains(name) {
                    continue;
                }
            }
            match value {
                Some(v) if a.redact.contains(name) => map.serialize_entry(name, &a.digest(&v))?,
                Some(v) => map.serialize_entry(name, &Received(v))?,
                None => map.serialize_entry(name, &())?,
            }
        }
        map.end()
    }
}

/// A value as received. JSON has no NaN or infinity, so those are written as the strings
/// `"NaN"`, `"inf"` and `"-inf"`; a value of a kind no field takes is named, like `"<array>"`.
struct Received<'a>(Value<'a>);

impl Serialize for Received<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::Number(x) if x.is_finite() => s.serialize_f64(x),
            Value::Number(x) if x.is_nan() => s.serialize_str("NaN"),
            Value::Number(x) => s.serialize_str(if x > 0.0 { "inf" } else { "-inf" }),
            Value::Integer(i) => s.serialize_i64(i),
            Value::Text(t) => s.serialize_str(t),
            Value::Bool(b) => s.serialize_bool(b),
            Value::Other(kind) => s.collect_str(&format_args!("<{kind}>")),
        }
    }
}

/// A uniform draw in [0, 1) from a per-thread xorshift generator: sampling needs no shared
/// state and no lock.
fn uniform() -> f64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as u64;
            let here = &nanos as *const u64 as u64;
            (nanos ^ here.rotate_left(32)) | 1
        });
    }
    STATE.with(|state| {
        let mut x = state.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.set(x);
        (x >> 11) as f64 / (1u64 << 53) as f64
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_are_uniform_enough_for_sampling() {
        let hits = (0..100_000).filter(|_| uniform() < 0.1).count();
        assert!((9_000..11_000).contains(&hits), "{hits} of 100000 draws under 0.1");
    }
}
