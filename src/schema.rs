//! The feature schema: what `feature_schema.yaml` says and the checks that make it usable.
//!
//! The YAML form is what training writes. [`Schema::parse`] checks it and compiles it into a
//! plan that preprocessing follows without further lookups: every field knows the model-input
//! columns it writes, every categorical knows its category indices. Feature names are resolved
//! to fields here, once per bundle, never per request.

use std::collections::HashMap;

use rustc_hash::FxHashMap;

use serde::Deserialize;

/// Errors found while reading or checking a schema. Each names what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("cannot parse: {0}")]
    Parse(#[from] serde_yaml::Error),
    #[error("unsupported schema_version {0} (this modeld reads 1)")]
    Version(u32),
    #[error("field `{0}` is declared twice")]
    DuplicateField(String),
    #[error("field `{field}`: {reason}")]
    Field { field: String, reason: String },
    #[error("column `{0}` is listed twice in `columns`")]
    DuplicateColumn(String),
    #[error("column `{0}` is produced by no field")]
    OrphanColumn(String),
    #[error("field `{field}` produces column `{column}`, which `columns` does not list")]
    MissingColumn { field: String, column: String },
    #[error("no fields")]
    Empty,
}

/// A raw feature value as a caller sends it, borrowed from the request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    Number(f64),
    Integer(i64),
    Text(&'a str),
    Bool(bool),
}

impl Value<'_> {
    /// The type name used in error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Number(_) => "number",
            Value::Integer(_) => "integer",
            Value::Text(_) => "text",
            Value::Bool(_) => "bool",
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

// ---- the YAML form -------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SchemaFile {
    schema_version: u32,
    /// Reject feature names the schema does not know (catches caller typos).
    #[serde(default = "yes")]
    strict: bool,
    fields: Vec<FieldSpec>,
    columns: Vec<String>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FieldSpec {
    name: String,
    #[serde(rename = "type")]
    kind: FieldType,
    #[serde(default = "yes")]
    required: bool,
    default: Option<OwnedValue>,
    min: Option<f64>,
    max: Option<f64>,
    scaler: Option<ScalerSpec>,
    vocabulary: Option<Vec<String>>,
    encoding: Option<Encoding>,
    unknown: Option<UnknownSpec>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum FieldType {
    Number,
    Integer,
    Boolean,
    Categorical,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScalerSpec {
    mean: f64,
    scale: f64,
}

/// How a categorical field becomes columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// One column per category, `name=category`, 1.0 for the category and 0.0 elsewhere.
    Onehot,
    /// One column, `name`, holding the category's index in the vocabulary.
    Ordinal,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum UnknownSpec {
    Policy(UnknownWord),
    Fallback { fallback: String },
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum UnknownWord {
    Reject,
}

// ---- the compiled form ---------------------------------------------------------------------

/// A checked schema, compiled for preprocessing.
#[derive(Debug)]
pub struct Schema {
    fields: Vec<Field>,
    /// Fx hashing: keys are fixed at load, so lookups need speed, not flood resistance.
    by_name: FxHashMap<Box<str>, usize>,
    columns: Vec<String>,
    strict: bool,
}

/// One input field and how it is written into the model input.
#[derive(Debug)]
pub struct Field {
    pub name: Box<str>,
    pub required: bool,
    pub default: Option<OwnedValue>,
    pub encoder: Encoder,
}

/// The compiled encoding of one field.
#[derive(Debug)]
pub enum Encoder {
    Numeric {
        integer: bool,
        min: Option<f64>,
        max: Option<f64>,
        /// `(x - mean) / scale`, computed in f64 and rounded once to f32, as training does.
        scaler: Option<(f64, f64)>,
        column: usize,
    },
    Boolean {
        column: usize,
    },
    Categorical {
        vocabulary: FxHashMap<Box<str>, u32>,
        /// Category index used for a value outside the vocabulary; `None` rejects it.
        fallback: Option<u32>,
        layout: CategoricalLayout,
    },
}

/// Where a categorical field's encoding lands.
#[derive(Debug)]
pub enum CategoricalLayout {
    /// Column of each category, by category index.
    OneHot(Box<[usize]>),
    Ordinal(usize),
}

impl Schema {
    /// Parses and checks `feature_schema.yaml` text.
    pub fn parse(yaml: &str) -> Result<Schema, SchemaError> {
        let file: SchemaFile = serde_yaml::from_str(yaml)?;
        Schema::compile(file)
    }

    fn compile(file: SchemaFile) -> Result<Schema, SchemaError> {
        if file.schema_version != 1 {
            return Err(SchemaError::Version(file.schema_version));
        }
        if file.fields.is_empty() {
            return Err(SchemaError::Empty);
        }
        let mut column_index: HashMap<&str, usize> = HashMap::with_capacity(file.columns.len());
        for (i, c) in file.columns.iter().enumerate() {
            if column_index.insert(c.as_str(), i).is_some() {
                return Err(SchemaError::DuplicateColumn(c.clone()));
            }
        }
        let mut claimed = vec![false; file.columns.len()];
        let mut claim = |field: &str, column: String| -> Result<usize, SchemaError> {
            let i = *column_index
                .get(column.as_str())
                .ok_or_else(|| SchemaError::MissingColumn { field: field.to_owned(), column })?;
            claimed[i] = true;
            Ok(i)
        };

        let mut fields = Vec::with_capacity(file.fields.len());
        let mut by_name = FxHashMap::default();
        for spec in file.fields {
            if by_name.insert(spec.name.clone().into_boxed_str(), fields.len()).is_some() {
                return Err(SchemaError::DuplicateField(spec.name));
            }
            let field = compile_field(spec, &mut claim)?;
            fields.push(field);
        }
        if let Some(i) = claimed.iter().position(|c| !c) {
            return Err(SchemaError::OrphanColumn(file.columns[i].clone()));
        }
        let schema = Schema { fields, by_name, columns: file.columns, strict: file.strict };
        schema.check_defaults()?;
        Ok(schema)
    }

    /// A default that preprocessing would reject is a schema bug: find it at load, not per row.
    fn check_defaults(&self) -> Result<(), SchemaError> {
        let mut scratch = vec![0.0; self.width()];
        for field in &self.fields {
            if let Some(default) = &field.default {
                field.encoder.write(default.as_value(), &mut scratch).map_err(|reason| SchemaError::Field {
                    field: field.name.to_string(),
                    reason: format!("default is not valid: {reason}"),
                })?;
            }
        }
        Ok(())
    }

    /// Width of the model input (number of columns).
    pub fn width(&self) -> usize {
        self.columns.len()
    }

    /// Column names in model-input order.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// Fields in declaration order.
    pub fn fields(&self) -> &[Field] {
        &self.fields
    }

    /// The index of a field by feature name.
    pub fn field_index(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    /// Whether feature names the schema does not know are rejected.
    pub fn strict(&self) -> bool {
        self.strict
    }
}

fn compile_field(
    spec: FieldSpec,
    claim: &mut impl FnMut(&str, String) -> Result<usize, SchemaError>,
) -> Result<Field, SchemaError> {
    let name = spec.name;
    let bad = |reason: &str| SchemaError::Field { field: name.clone(), reason: reason.to_owned() };
    let categorical = spec.kind == FieldType::Categorical;
    let numeric = matches!(spec.kind, FieldType::Number | FieldType::Integer);
    if !categorical && (spec.vocabulary.is_some() || spec.encoding.is_some() || spec.unknown.is_some()) {
        return Err(bad("vocabulary, encoding and unknown apply to categorical fields only"));
    }
    if !numeric && (spec.min.is_some() || spec.max.is_some() || spec.scaler.is_some()) {
        return Err(bad("min, max and scaler apply to numeric fields only"));
    }
    if spec.required && spec.default.is_some() {
        return Err(bad("a required field cannot have a default"));
    }
    if !spec.required && spec.default.is_none() {
        return Err(bad("an optional field needs a default (the value training used for a missing one)"));
    }

    let encoder = match spec.kind {
        FieldType::Number | FieldType::Integer => {
            if let (Some(lo), Some(hi)) = (spec.min, spec.max) {
                if lo > hi {
                    return Err(bad("min is greater than max"));
                }
            }
            let scaler = match spec.scaler {
                Some(s) if !(s.scale.is_finite() && s.scale != 0.0 && s.mean.is_finite()) => {
                    return Err(bad("scaler needs a finite mean and a finite non-zero scale"));
                }
                Some(s) => Some((s.mean, s.scale)),
                None => None,
            };
            Encoder::Numeric {
                integer: spec.kind == FieldType::Integer,
                min: spec.min,
                max: spec.max,
                scaler,
                column: claim(&name, name.clone())?,
            }
        }
        FieldType::Boolean => Encoder::Boolean { column: claim(&name, name.clone())? },
        FieldType::Categorical => {
            let words = spec.vocabulary.ok_or_else(|| bad("categorical field needs a vocabulary"))?;
            if words.is_empty() {
                return Err(bad("vocabulary is empty"));
            }
            let mut vocabulary = FxHashMap::default();
            for (i, w) in words.iter().enumerate() {
                if vocabulary.insert(w.clone().into_boxed_str(), i as u32).is_some() {
                    return Err(bad(&format!("category `{w}` is listed twice")));
                }
            }
            let fallback = match spec.unknown.ok_or_else(|| bad("categorical field needs an `unknown` policy"))? {
                UnknownSpec::Policy(UnknownWord::Reject) => None,
                UnknownSpec::Fallback { fallback } => Some(
                    *vocabulary
                        .get(fallback.as_str())
                        .ok_or_else(|| bad(&format!("fallback `{fallback}` is not in the vocabulary")))?,
                ),
            };
            let layout = match spec.encoding.ok_or_else(|| bad("categorical field needs an encoding"))? {
                Encoding::Onehot => CategoricalLayout::OneHot(
                    words.iter().map(|w| claim(&name, format!("{name}={w}"))).collect::<Result<_, _>>()?,
                ),
                Encoding::Ordinal => CategoricalLayout::Ordinal(claim(&name, name.clone())?),
            };
            Encoder::Categorical { vocabulary, fallback, layout }
        }
    };
    Ok(Field { name: name.into_boxed_str(), required: spec.required, default: spec.default, encoder })
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
    #[error("unknown category `{0}`")]
    UnknownCategory(String),
    #[error("unknown field (the schema is strict)")]
    UnknownField,
}

impl Encoder {
    /// Writes one value into the row's slice of the model input.
    ///
    /// One-hot columns are only ever set to 1.0: the caller hands in a zeroed row.
    #[inline]
    pub fn write(&self, value: Value<'_>, row: &mut [f32]) -> Result<(), Reason> {
        match self {
            Encoder::Numeric { integer, min, max, scaler, column } => {
                let x = match (value, integer) {
                    (Value::Integer(i), _) => i as f64,
                    (Value::Number(x), _) if !x.is_finite() => return Err(Reason::NotFinite(x)),
                    (Value::Number(x), true) if x.fract() != 0.0 => {
                        return Err(Reason::NotInteger(x));
                    }
                    (Value::Number(x), _) => x,
                    (other, true) => {
                        return Err(Reason::WrongType { expected: "integer", got: other.type_name() });
                    }
                    (other, false) => {
                        return Err(Reason::WrongType { expected: "number", got: other.type_name() });
                    }
                };
                if min.is_some_and(|lo| x < lo) || max.is_some_and(|hi| x > hi) {
                    return Err(Reason::OutOfRange {
                        value: x,
                        min: min.unwrap_or(f64::NEG_INFINITY),
                        max: max.unwrap_or(f64::INFINITY),
                    });
                }
                row[*column] = match scaler {
                    Some((mean, scale)) => ((x - mean) / scale) as f32,
                    None => x as f32,
                };
            }
            Encoder::Boolean { column } => match value {
                Value::Bool(b) => row[*column] = if b { 1.0 } else { 0.0 },
                other => {
                    return Err(Reason::WrongType { expected: "bool", got: other.type_name() });
                }
            },
            Encoder::Categorical { vocabulary, fallback, layout } => {
                let Value::Text(word) = value else {
                    return Err(Reason::WrongType { expected: "text", got: value.type_name() });
                };
                let index = match vocabulary.get(word) {
                    Some(i) => *i,
                    None => fallback.ok_or_else(|| Reason::UnknownCategory(word.to_owned()))?,
                };
                match layout {
                    CategoricalLayout::OneHot(columns) => row[columns[index as usize]] = 1.0,
                    CategoricalLayout::Ordinal(column) => row[*column] = index as f32,
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: &str = r#"
schema_version: 1
fields:
  - name: age
    type: integer
    min: 18
    max: 120
    scaler: {mean: 40.0, scale: 10.0}
  - name: color
    type: categorical
    vocabulary: [red, green, other]
    encoding: onehot
    unknown: {fallback: other}
  - name: size
    type: categorical
    required: false
    default: small
    vocabulary: [small, large]
    encoding: ordinal
    unknown: reject
  - name: vip
    type: boolean
columns: [vip, "color=red", "color=green", "color=other", age, size]
"#;

    #[test]
    fn compiles_columns_in_declared_order() {
        let s = Schema::parse(SCHEMA).unwrap();
        assert_eq!(s.width(), 6);
        let mut row = vec![0.0; 6];
        let f = &s.fields()[s.field_index("color").unwrap()];
        f.encoder.write(Value::Text("green"), &mut row).unwrap();
        assert_eq!(row, [0.0, 0.0, 1.0, 0.0, 0.0, 0.0]);
        f.encoder.write(Value::Text("purple"), &mut row).unwrap();
        assert_eq!(row[3], 1.0, "unknown colour falls back to `other`");
        let age = &s.fields()[s.field_index("age").unwrap()];
        age.encoder.write(Value::Integer(55), &mut row).unwrap();
        assert_eq!(row[4], 1.5);
    }

    #[test]
    fn rejects_values_per_the_field() {
        let s = Schema::parse(SCHEMA).unwrap();
        let mut row = vec![0.0; 6];
        let enc = |name: &str| &s.fields()[s.field_index(name).unwrap()].encoder;
        assert_eq!(
            enc("age").write(Value::Integer(5), &mut row),
            Err(Reason::OutOfRange { value: 5.0, min: 18.0, max: 120.0 })
        );
        assert_eq!(enc("age").write(Value::Number(30.5), &mut row), Err(Reason::NotInteger(30.5)));
        assert!(matches!(enc("age").write(Value::Number(f64::NAN), &mut row), Err(Reason::NotFinite(_))));
        assert_eq!(enc("size").write(Value::Text("huge"), &mut row), Err(Reason::UnknownCategory("huge".into())));
        assert_eq!(
            enc("vip").write(Value::Integer(1), &mut row),
            Err(Reason::WrongType { expected: "bool", got: "integer" })
        );
    }

    #[test]
    fn refuses_inconsistent_schemas() {
        let orphan = SCHEMA.replace("columns: [vip,", "columns: [extra, vip,");
        assert!(matches!(Schema::parse(&orphan), Err(SchemaError::OrphanColumn(c)) if c == "extra"));
        let missing = SCHEMA.replace(", size]", "]");
        assert!(matches!(Schema::parse(&missing), Err(SchemaError::MissingColumn { .. })));
        let bad_default = SCHEMA.replace("default: small", "default: medium");
        assert!(matches!(Schema::parse(&bad_default), Err(SchemaError::Field { field, .. }) if field == "size"));
        let bad_fallback = SCHEMA.replace("fallback: other", "fallback: blue");
        assert!(matches!(Schema::parse(&bad_fallback), Err(SchemaError::Field { field, .. }) if field == "color"));
        let typo = SCHEMA.replace("encoding: ordinal", "encodng: ordinal");
        assert!(matches!(Schema::parse(&typo), Err(SchemaError::Parse(_))));
    }
}
