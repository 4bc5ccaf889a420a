//! Conversions between the `modeld.v1` wire types and the core's: call context, rows, results.

use std::time::Duration;

use tonic::{Request, metadata::MetadataMap};

use crate::{
    pb::{self, value::Kind},
    predict::{CallContext, Method, Prediction},
    preprocess::RowView,
    schema::Value,
};

/// The core's view of a call: method, arrival time, peer, and the caller's deadline.
pub fn call_context<T>(method: Method, request: &Request<T>) -> CallContext {
    CallContext::new(method).with_peer(request.remote_addr()).with_timeout(grpc_timeout(request.metadata()))
}

/// The caller's `grpc-timeout` header: up to 8 digits and a unit (H, M, S, m, u, n), as the
/// gRPC over HTTP/2 specification defines it. A malformed header is ignored, as tonic does.
fn grpc_timeout(metadata: &MetadataMap) -> Option<Duration> {
    let text = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// A core prediction in wire form.
pub fn to_pb(p: Prediction, row_id: String, classes: &[String]) -> pb::Prediction {
    pb::Prediction { row_id, label: classes[p.class].clone(), probabilities: p.probabilities }
}

impl RowView for pb::Row {
    fn row_id(&self) -> &str {
        &self.row_id
    }

    fn features(&self) -> impl Iterator<Item = (&str, Option<Value<'_>>)> {
        self.features.iter().map(|(name, value)| (name.as_str(), value_of(value)))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_follows_the_spec() {
        let parse = |v: &str| {
            let mut m = MetadataMap::new();
            m.insert("grpc-timeout", v.parse().unwrap());
            grpc_timeout(&m)
        };
        assert_eq!(parse("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse("99999999n"), Some(Duration::from_nanos(99_999_999)));
        assert_eq!(parse("123456789m"), None, "more than 8 digits");
        assert_eq!(parse("10x"), None);
        assert_eq!(parse("m"), None);
        assert_eq!(grpc_timeout(&MetadataMap::new()), None);
    }
}
