//! Raw values as callers send them, and why one cannot be encoded.

use serde::Deserialize;

/// A raw feature value as a caller sends it, borrowed from the request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    Number(f64),
    Integer(i64),
    Text(&'a str),
    Bool(bool),
    /// A value of a kind no field takes (a JSON array or object), named for the error.
    Other(&'static str),
}

impl Value<'_> {
    /// The type name used in error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Number(_) => "number",
            Value::Integer(_) => "integer",
            Value::Text(_) => "text",
            Value::Bool(_) => "bool",
            Value::Other(kind) => kind,
        }
    }
}

/// An owned raw value: schema defaults and golden rows.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum OwnedValue {
    Bool(bool),
    Integer(i64),
    Number(f64),
    Text(String),
}

impl OwnedValue {
    /// Borrows this value in the form preprocessing reads.
    pub fn as_value(&self) -> Value<'_> {
        match self {
            OwnedValue::Bool(b) => Value::Bool(*b),
            OwnedValue::Integer(i) => Value::Integer(*i),
            OwnedValue::Number(n) => Value::Number(*n),
            OwnedValue::Text(s) => Value::Text(s),
        }
    }
}

/// Caller text quoted in an error message, cut to its first [`Echo::KEEP`] bytes (on a
/// character boundary) with its full length named. Error messages travel in the `grpc-message`
/// header, which clients cap at a few KiB: a megabyte category or row id quoted whole would make
/// the answer unreadable to the very caller who needs it.
pub struct Echo<'a>(pub &'a str);

impl Echo<'_> {
    pub const KEEP: usize = 64;
}

impl std::fmt::Display for Echo<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.len() <= Echo::KEEP {
            return f.write_str(self.0);
        }
        let cut = (0..=Echo::KEEP).rev().find(|&i| self.0.is_char_boundary(i)).unwrap_or(0);
        write!(f, "{}… ({} bytes)", &self.0[..cut], self.0.len())
    }
}

/// Why one value cannot be encoded. Preprocessing adds the row and the field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Reason {
    #[error("required field is missing")]
    Missing,
    #[error("expected {expected}, got {got}")]
    WrongType { expected: &'static str, got: &'static str },
    #[error("value must be finite, got {0}")]
    NotFinite(f64),
    #[error("expected an integer, got {0}")]
    NotInteger(f64),
    #[error("value {value} is out of range [{min}, {max}]")]
    OutOfRange { value: f64, min: f64, max: f64 },
    #[error("unknown category `{}`", Echo(.0))]
    UnknownCategory(String),
    #[error("unknown field (the schema is strict)")]
    UnknownField,
}

/// Whether a value encoded was in its field's vocabulary, or an unknown category that the
/// field's policy accepted (what `modeld_input_unknown_categories_total` counts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    Known,
    Unknown,
}

impl Reason {
    /// The reason's name, as the `reason` label of `modeld_input_rejections_total` reads.
    pub fn name(&self) -> &'static str {
        match self {
            Reason::Missing => "missing",
            Reason::WrongType { .. } => "wrong_type",
            Reason::NotFinite(_) => "not_finite",
            Reason::NotInteger(_) => "not_integer",
            Reason::OutOfRange { .. } => "out_of_range",
            Reason::UnknownCategory(_) => "unknown_category",
            Reason::UnknownField => "unknown_field",
        }
    }
}

/// A numeric value checked for type, finiteness, integrality and range.
pub(super) fn number(value: Value<'_>, integer: bool, min: Option<f64>, max: Option<f64>) -> Result<f64, Reason> {
    let x = match (value, integer) {
        (Value::Integer(i), _) => i as f64,
        (Value::Number(x), _) if !x.is_finite() => return Err(Reason::NotFinite(x)),
        (Value::Number(x), true) if x.fract() != 0.0 => return Err(Reason::NotInteger(x)),
        (Value::Number(x), _) => x,
        (other, true) => return Err(Reason::WrongType { expected: "integer", got: other.type_name() }),
        (other, false) => return Err(Reason::WrongType { expected: "number", got: other.type_name() }),
    };
    if min.is_some_and(|lo| x < lo) || max.is_some_and(|hi| x > hi) {
        return Err(Reason::OutOfRange {
            value: x,
            min: min.unwrap_or(f64::NEG_INFINITY),
            max: max.unwrap_or(f64::INFINITY),
        });
    }
    Ok(x)
}
