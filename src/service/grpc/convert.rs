//! Conversions between the `modeld.v1` wire types and the core's: call context, rows, results.

use tonic::Request;

use crate::{
    pb::{self, value::Kind},
    predict::{CallContext, Method, Prediction},
    preprocess::RowView,
    registry::LivePolicy,
    schema::{Encoder, Field, FieldKind, Missing, Unknown, Value},
    service::{layers::CallDeadline, tls::ConnInfo},
};

/// The core's view of a call: method, arrival time, peer, and its deadline from the transport
/// stack: a unary answer is due by the deadline layer's `answer_by`; a stream is bound only by
/// its caller's own deadline, since bulk streams outlive any per-call server timeout.
pub fn call_context<T>(method: Method, request: &Request<T>) -> CallContext {
    let peer = request.extensions().get::<ConnInfo>().and_then(|c| c.remote_addr);
    let traceparent = request.metadata().get("traceparent").and_then(|v| v.to_str().ok());
    let mut ctx = CallContext::new(method).with_peer(peer).with_traceparent(traceparent);
    if let Some(d) = request.extensions().get::<CallDeadline>() {
        ctx.deadline = match method {
            Method::BatchPredict => d.caller,
            _ => Some(d.answer_by),
        };
    }
    ctx
}

/// What the caller presents: its `authorization` metadata, and its connection's verified
/// client-certificate identities.
pub fn credentials<T>(request: &Request<T>) -> (Option<&str>, &[String]) {
    let authorization = request.metadata().get("authorization").and_then(|v| v.to_str().ok());
    let identities = request.extensions().get::<ConnInfo>().map_or(&[][..], ConnInfo::identities);
    (authorization, identities)
}

/// A core prediction in wire form.
pub fn to_pb(p: Prediction, row_id: String, classes: &[String]) -> pb::Prediction {
    let label = p.class.map(|c| classes[c].clone()).unwrap_or_default();
    let reasons = p
        .reasons
        .into_iter()
        .map(|r| pb::ReasonCode { field: r.field, bin: r.bin, points: r.points, best_points: r.best_points })
        .collect();
    pb::Prediction { row_id, label, probabilities: p.probabilities, values: p.values, score: p.score, reasons }
}

impl RowView for pb::Row {
    fn row_id(&self) -> &str {
        &self.row_id
    }

    fn features(&self) -> impl Iterator<Item = (&str, Option<Value<'_>>)> {
        self.features.iter().map(|(name, value)| (name.as_str(), value_of(value)))
    }

    fn has_positional_values(&self) -> bool {
        !self.values.is_empty()
    }
}

/// A wire value as preprocessing reads it; an unset kind is a missing value.
pub fn value_of(value: &pb::Value) -> Option<Value<'_>> {
    value.kind.as_ref().map(|kind| match kind {
        Kind::Number(x) => Value::Number(*x),
        Kind::Integer(i) => Value::Integer(*i),
        Kind::Text(s) => Value::Text(s),
        Kind::Flag(b) => Value::Bool(*b),
    })
}

/// A live rollout policy as GetVersion (and `GET /v1/tasks/{task}`) describes it: versions by
/// their version strings.
pub fn rollout_policy(p: &LivePolicy) -> pb::RolloutPolicy {
    let split = &p.policy.split;
    pb::RolloutPolicy {
        sha256: p.sha256.clone(),
        shadow_versions: p.policy.shadow.iter().map(|d| p.version_of(d).to_owned()).collect(),
        split: split
            .iter()
            .map(|s| pb::SplitShare { version: p.version_of(&s.version).to_owned(), weight: s.weight })
            .collect(),
        sticky_by: if split.is_empty() { String::new() } else { p.policy.sticky_by.name().to_owned() },
    }
}

/// A schema field as GetVersion describes it.
pub fn field_info(field: &Field) -> pb::FieldInfo {
    let default = match &field.missing {
        Missing::Default(v) => Some(v.into()),
        Missing::Reject | Missing::Value { .. } | Missing::Input(_) | Missing::Bin(_) => None,
    };
    let (categories, unknown) = match &field.encoder {
        Encoder::Categorical { categories, unknown, .. }
        | Encoder::Input { kind: FieldKind::Categorical, categories, unknown, .. } => {
            let unknown = match unknown {
                Unknown::Reject => "reject".to_owned(),
                Unknown::Fallback(i) => format!("fallback:{}", categories[*i as usize]),
                Unknown::Ignore => "ignore".to_owned(),
                Unknown::Value(_) => "value".to_owned(),
                Unknown::Pass => "pass".to_owned(),
            };
            (categories.iter().map(|c| c.to_string()).collect(), unknown)
        }
        Encoder::Binned(bins) if field.kind == FieldKind::Categorical => {
            let unknown = if bins.has_unknown_bin() { "bin" } else { "reject" };
            (bins.categories().iter().map(|c| c.to_string()).collect(), unknown.to_owned())
        }
        Encoder::Numeric { .. } | Encoder::Boolean { .. } | Encoder::Input { .. } | Encoder::Binned(_) => {
            (Vec::new(), String::new())
        }
    };
    pb::FieldInfo {
        name: field.name.to_string(),
        r#type: field.kind.name().to_owned(),
        required: field.required,
        default,
        min: field.min,
        max: field.max,
        categories,
        unknown,
    }
}
