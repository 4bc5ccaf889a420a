//! The feature schema: what `feature_schema.yaml` says and the checks that make it usable.
//!
//! The YAML form is what training writes. [`Schema::parse`] checks it and compiles it into a
//! plan that preprocessing follows without further lookups: every field knows the model-input
//! columns it writes, every categorical knows its category indices. Feature names are resolved
//! to fields here, once per bundle, never per request.

mod bins;
mod value;

use std::collections::HashMap;

use rustc_hash::FxHashMap;

use serde::Deserialize;

pub use self::bins::{Bin, Bins};
use self::value::number;
pub use self::value::{Echo, Fit, OwnedValue, Reason, Value};
pub use crate::engine::{InputColumn, InputType};

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

// ---- the YAML form -------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SchemaFile {
    schema_version: u32,
    /// Reject feature names the schema does not know (catches caller typos).
    #[serde(default = "yes")]
    strict: bool,
    fields: Vec<FieldSpec>,
    /// The model-input matrix's columns; empty when every field is its own model input.
    #[serde(default)]
    columns: Vec<String>,
    /// Feature names accepted and not used (columns the fitted pipeline drops), so a strict
    /// schema does not reject callers that send the whole raw row.
    #[serde(default)]
    ignored: Vec<String>,
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
    /// What a missing value writes into the field's column (numeric and ordinal fields), when
    /// the model itself handles missing values (an encoder's missing code, NaN for trees). For a
    /// field that is its own model input: the value passed as is (e.g. "" for a string input
    /// whose graph imputes it, NaN for a double one).
    missing_value: Option<OwnedValue>,
    /// This field is a model input of its own (the raw-input form): the graph encodes it.
    input: Option<InputSpec>,
    min: Option<f64>,
    max: Option<f64>,
    scaler: Option<ScalerSpec>,
    /// Arithmetic applied in order, in f64, before the one cast to f32.
    transform: Option<Vec<OpSpec>>,
    vocabulary: Option<Vec<String>>,
    encoding: Option<Encoding>,
    /// Ordinal: the value written for each vocabulary entry (default: its index).
    codes: Option<Vec<f64>>,
    /// One-hot: the column each vocabulary entry sets, or null for none (a dropped category).
    /// Entries may share a column (infrequent categories). Default: `name=category`.
    onehot_columns: Option<Vec<Option<String>>>,
    unknown: Option<UnknownSpec>,
    /// `encoding: binned`: the bin table.
    bins: Option<bins::BinsSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct InputSpec {
    name: String,
    #[serde(rename = "type")]
    kind: InputType,
}

/// One arithmetic step: exactly one of the four is set.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
struct OpSpec {
    sub: Option<f64>,
    div: Option<f64>,
    mul: Option<f64>,
    add: Option<f64>,
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
    /// Numeric or categorical: one column, `name`, holding the weight of evidence of the bin
    /// the value falls into (see `bins`).
    Binned,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum UnknownSpec {
    Policy(UnknownWord),
    Fallback {
        fallback: String,
    },
    /// Ordinal only: the value written for an unknown category.
    Value {
        value: f64,
    },
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum UnknownWord {
    Reject,
    /// One-hot only: an unknown category sets no column.
    Ignore,
    /// Raw-input form only: the text goes to the model as sent; the graph decides.
    Pass,
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
    ignored: rustc_hash::FxHashSet<Box<str>>,
    /// Raw-input form: the model inputs (name, element type), one per field in field order.
    inputs: Vec<(String, InputType)>,
    /// Indices of the binned fields, in field order: the bins preprocessing records per row.
    binned: Box<[usize]>,
}

/// One input field and how it is written into the model input.
#[derive(Debug)]
pub struct Field {
    pub name: Box<str>,
    pub kind: FieldKind,
    pub required: bool,
    pub missing: Missing,
    pub encoder: Encoder,
    /// The declared range, for callers that describe the schema.
    pub min: Option<f64>,
    pub max: Option<f64>,
}

/// The declared type of a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    Number,
    Integer,
    Boolean,
    Categorical,
}

impl From<FieldType> for FieldKind {
    fn from(t: FieldType) -> FieldKind {
        match t {
            FieldType::Number => FieldKind::Number,
            FieldType::Integer => FieldKind::Integer,
            FieldType::Boolean => FieldKind::Boolean,
            FieldType::Categorical => FieldKind::Categorical,
        }
    }
}

impl FieldKind {
    pub fn name(self) -> &'static str {
        match self {
            FieldKind::Number => "number",
            FieldKind::Integer => "integer",
            FieldKind::Boolean => "boolean",
            FieldKind::Categorical => "categorical",
        }
    }
}

/// What an absent or explicitly missing value becomes.
#[derive(Debug, Clone, PartialEq)]
pub enum Missing {
    /// The row is rejected.
    Reject,
    /// This raw value is encoded in its place (an imputed value).
    Default(OwnedValue),
    /// This value is written straight into the field's column.
    Value { column: usize, value: f32 },
    /// Raw-input form: this value goes to the field's input as is.
    Input(OwnedValue),
    /// Binned fields: the value falls into this bin (the table's missing bin).
    Bin(Bin),
}

/// One arithmetic step of a numeric field.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Op {
    Sub(f64),
    Div(f64),
    Mul(f64),
    Add(f64),
}

/// The compiled encoding of one field.
#[derive(Debug)]
pub enum Encoder {
    Numeric {
        integer: bool,
        min: Option<f64>,
        max: Option<f64>,
        /// Applied in order in f64, then rounded once to f32, as training does.
        ops: Box<[Op]>,
        column: usize,
    },
    Boolean {
        column: usize,
    },
    Categorical {
        vocabulary: FxHashMap<Box<str>, u32>,
        /// Categories in vocabulary order, for callers that describe the schema.
        categories: Box<[Box<str>]>,
        unknown: Unknown,
        layout: CategoricalLayout,
    },
    /// A bin table: the bin's weight of evidence goes into the column.
    Binned(Box<Bins>),
    /// Raw-input form: the checked value goes to model input `input` as its own element type.
    Input {
        kind: FieldKind,
        min: Option<f64>,
        max: Option<f64>,
        /// Categorical: the known categories (empty: any text) and the rule for others.
        vocabulary: FxHashMap<Box<str>, u32>,
        categories: Box<[Box<str>]>,
        unknown: Unknown,
        input: usize,
        ty: InputType,
    },
}

/// What a category outside the vocabulary does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Unknown {
    Reject,
    /// Encoded as this category index.
    Fallback(u32),
    /// One-hot: no column is set.
    Ignore,
    /// Ordinal: this value is written.
    Value(f32),
    /// Raw-input form: the text goes to the model as sent.
    Pass,
}

/// Where a categorical field's encoding lands.
#[derive(Debug)]
pub enum CategoricalLayout {
    /// Column of each category, by category index; `None` sets nothing (a dropped category).
    OneHot(Box<[Option<usize>]>),
    /// The column, and the value written for each category index.
    Ordinal { column: usize, codes: Box<[f32]> },
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
        if file.fields.iter().any(|f| f.input.is_some()) {
            return Schema::compile_inputs(file);
        }
        let mut column_index: HashMap<&str, usize> = HashMap::with_capacity(file.columns.len());
        for (i, c) in file.columns.iter().enumerate() {
            if column_index.insert(c.as_str(), i).is_some() {
                return Err(SchemaError::DuplicateColumn(c.clone()));
            }
        }
        let mut claimed: Vec<Option<String>> = vec![None; file.columns.len()];
        let mut claim = |field: &str, column: String| -> Result<usize, SchemaError> {
            let i = *column_index
                .get(column.as_str())
                .ok_or_else(|| SchemaError::MissingColumn { field: field.to_owned(), column: column.clone() })?;
            match &claimed[i] {
                Some(owner) if owner != field => {
                    return Err(SchemaError::Field {
                        field: field.to_owned(),
                        reason: format!("column `{column}` is already written by field `{owner}`"),
                    });
                }
                Some(_) => {}
                None => claimed[i] = Some(field.to_owned()),
            }
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
        if let Some(i) = claimed.iter().position(Option::is_none) {
            return Err(SchemaError::OrphanColumn(file.columns[i].clone()));
        }
        let ignored = ignored_names(file.ignored, &by_name)?;
        let binned = fields
            .iter()
            .enumerate()
            .filter(|(_, f)| matches!(f.encoder, Encoder::Binned(_)))
            .map(|(i, _)| i)
            .collect();
        let schema =
            Schema { fields, by_name, columns: file.columns, strict: file.strict, ignored, inputs: Vec::new(), binned };
        schema.check_defaults()?;
        Ok(schema)
    }

    /// The raw-input form: every field is a model input of its own, there is no column list.
    fn compile_inputs(file: SchemaFile) -> Result<Schema, SchemaError> {
        if !file.columns.is_empty() {
            return Err(SchemaError::Field {
                field: file.fields[0].name.clone(),
                reason: "fields with `input` feed the model directly: the schema lists no columns".into(),
            });
        }
        let mut fields = Vec::with_capacity(file.fields.len());
        let mut by_name = FxHashMap::default();
        let mut inputs: Vec<(String, InputType)> = Vec::with_capacity(file.fields.len());
        for spec in file.fields {
            if by_name.insert(spec.name.clone().into_boxed_str(), fields.len()).is_some() {
                return Err(SchemaError::DuplicateField(spec.name));
            }
            let Some(input) = spec.input.clone() else {
                return Err(SchemaError::Field {
                    field: spec.name,
                    reason: "every field needs an `input` once one has (the raw-input form)".into(),
                });
            };
            if let Some((_, _)) = inputs.iter().find(|(n, _)| *n == input.name) {
                return Err(SchemaError::Field {
                    field: spec.name,
                    reason: format!("model input `{}` is fed by two fields", input.name),
                });
            }
            fields.push(compile_input_field(spec, inputs.len(), input.kind)?);
            inputs.push((input.name, input.kind));
        }
        let ignored = ignored_names(file.ignored, &by_name)?;
        let schema =
            Schema { fields, by_name, columns: Vec::new(), strict: file.strict, ignored, inputs, binned: Box::new([]) };
        schema.check_defaults()?;
        Ok(schema)
    }

    /// A default that preprocessing would reject is a schema bug: find it at load, not per row.
    fn check_defaults(&self) -> Result<(), SchemaError> {
        let mut scratch = vec![0.0; self.width()];
        let mut columns = self.input_columns(1);
        for field in &self.fields {
            if let Missing::Default(default) = &field.missing {
                let written = match &field.encoder {
                    Encoder::Input { .. } => field.encoder.put(default.as_value(), &mut columns),
                    _ => field.encoder.write(default.as_value(), &mut scratch),
                };
                written.map_err(|reason| SchemaError::Field {
                    field: field.name.to_string(),
                    reason: format!("default is not valid: {reason}"),
                })?;
            }
        }
        Ok(())
    }

    /// Raw-input form: the model inputs, one per field in field order; empty for the matrix form.
    pub fn inputs(&self) -> &[(String, InputType)] {
        &self.inputs
    }

    /// Empty input columns for `rows` rows, one per model input (raw-input form).
    pub fn input_columns(&self, rows: usize) -> Vec<InputColumn> {
        self.inputs
            .iter()
            .map(|(_, ty)| match ty {
                InputType::String => InputColumn::Text { bytes: String::new(), ends: Vec::with_capacity(rows) },
                InputType::Int64 => InputColumn::Int64(Vec::with_capacity(rows)),
                InputType::Float => InputColumn::Float(Vec::with_capacity(rows)),
                InputType::Double => InputColumn::Double(Vec::with_capacity(rows)),
            })
            .collect()
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

    /// Whether a feature name the schema has no field for is rejected: the schema is strict
    /// and does not list the name as ignored.
    pub fn rejects(&self, name: &str) -> bool {
        self.strict && !self.ignored.contains(name)
    }

    /// Indices of the binned fields, in field order.
    pub fn binned(&self) -> &[usize] {
        &self.binned
    }

    /// The bin table of field `i`, when it is binned.
    pub fn bins(&self, i: usize) -> Option<&Bins> {
        match &self.fields[i].encoder {
            Encoder::Binned(b) => Some(b),
            _ => None,
        }
    }

    /// Whether the schema lists `name` as a feature callers may send and the model ignores.
    pub fn ignores(&self, name: &str) -> bool {
        self.ignored.contains(name)
    }
}

fn compile_field(
    spec: FieldSpec,
    claim: &mut impl FnMut(&str, String) -> Result<usize, SchemaError>,
) -> Result<Field, SchemaError> {
    if spec.encoding == Some(Encoding::Binned) || spec.bins.is_some() {
        return compile_binned(spec, claim);
    }
    let name = spec.name;
    let bad = |reason: &str| SchemaError::Field { field: name.clone(), reason: reason.to_owned() };
    let categorical = spec.kind == FieldType::Categorical;
    let numeric = matches!(spec.kind, FieldType::Number | FieldType::Integer);
    if !categorical
        && (spec.vocabulary.is_some()
            || spec.encoding.is_some()
            || spec.unknown.is_some()
            || spec.codes.is_some()
            || spec.onehot_columns.is_some())
    {
        return Err(bad("vocabulary, encoding, codes, onehot_columns and unknown apply to categorical fields only"));
    }
    if !numeric && (spec.min.is_some() || spec.max.is_some() || spec.scaler.is_some() || spec.transform.is_some()) {
        return Err(bad("min, max, scaler and transform apply to numeric fields only"));
    }
    if spec.scaler.is_some() && spec.transform.is_some() {
        return Err(bad("give either scaler or transform, not both"));
    }
    if spec.input.is_some() {
        return Err(bad("`input` applies to a schema whose fields are all model inputs (no columns)"));
    }
    let imputed = spec.default.is_some() || spec.missing_value.is_some();
    if spec.default.is_some() && spec.missing_value.is_some() {
        return Err(bad("give either default or missing_value, not both"));
    }
    if spec.required && imputed {
        return Err(bad("a required field cannot have a default or missing_value"));
    }
    if !spec.required && !imputed {
        return Err(bad(
            "an optional field needs a default (the value training used for a missing one) or a missing_value",
        ));
    }
    if let (Some(lo), Some(hi)) = (spec.min, spec.max) {
        if lo.is_nan() || hi.is_nan() || lo > hi {
            return Err(bad("min is greater than max"));
        }
    }

    let (encoder, column) = match spec.kind {
        FieldType::Number | FieldType::Integer => {
            let ops = match (spec.scaler, spec.transform) {
                (Some(s), _) => {
                    if !(s.scale.is_finite() && s.scale != 0.0 && s.mean.is_finite()) {
                        return Err(bad("scaler needs a finite mean and a finite non-zero scale"));
                    }
                    vec![Op::Sub(s.mean), Op::Div(s.scale)]
                }
                (None, Some(steps)) => {
                    steps.iter().map(|o| compile_op(o).map_err(|r| bad(&r))).collect::<Result<_, _>>()?
                }
                (None, None) => Vec::new(),
            };
            let column = claim(&name, name.clone())?;
            let encoder = Encoder::Numeric {
                integer: spec.kind == FieldType::Integer,
                min: spec.min,
                max: spec.max,
                ops: ops.into(),
                column,
            };
            (encoder, Some(column))
        }
        FieldType::Boolean => {
            let column = claim(&name, name.clone())?;
            (Encoder::Boolean { column }, None)
        }
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
            let encoding = spec.encoding.ok_or_else(|| bad("categorical field needs an encoding"))?;
            let unknown = match spec.unknown.ok_or_else(|| bad("categorical field needs an `unknown` policy"))? {
                UnknownSpec::Policy(UnknownWord::Reject) => Unknown::Reject,
                UnknownSpec::Policy(UnknownWord::Ignore) if encoding == Encoding::Onehot => Unknown::Ignore,
                UnknownSpec::Policy(UnknownWord::Ignore) => {
                    return Err(bad("unknown: ignore applies to one-hot fields only"));
                }
                UnknownSpec::Policy(UnknownWord::Pass) => {
                    return Err(bad("unknown: pass applies to fields that are model inputs only"));
                }
                UnknownSpec::Value { value } if encoding == Encoding::Ordinal => Unknown::Value(value as f32),
                UnknownSpec::Value { .. } => return Err(bad("unknown: {value} applies to ordinal fields only")),
                UnknownSpec::Fallback { fallback } => Unknown::Fallback(
                    *vocabulary
                        .get(fallback.as_str())
                        .ok_or_else(|| bad(&format!("fallback `{fallback}` is not in the vocabulary")))?,
                ),
            };
            let (layout, column) = match encoding {
                Encoding::Onehot => {
                    if spec.codes.is_some() {
                        return Err(bad("codes apply to ordinal fields only"));
                    }
                    let targets = match spec.onehot_columns {
                        Some(c) if c.len() != words.len() => {
                            return Err(bad(&format!(
                                "onehot_columns has {} entries for {} categories",
                                c.len(),
                                words.len()
                            )));
                        }
                        Some(c) => c,
                        None => words.iter().map(|w| Some(format!("{name}={w}"))).collect(),
                    };
                    let columns = targets
                        .into_iter()
                        .map(|c| c.map(|c| claim(&name, c)).transpose())
                        .collect::<Result<_, _>>()?;
                    (CategoricalLayout::OneHot(columns), None)
                }
                Encoding::Ordinal => {
                    if spec.onehot_columns.is_some() {
                        return Err(bad("onehot_columns apply to one-hot fields only"));
                    }
                    let codes: Box<[f32]> = match spec.codes {
                        Some(c) if c.len() != words.len() => {
                            return Err(bad(&format!("codes has {} entries for {} categories", c.len(), words.len())));
                        }
                        Some(c) if c.iter().any(|x| !x.is_finite()) => return Err(bad("codes must be finite")),
                        Some(c) => c.iter().map(|&x| x as f32).collect(),
                        None => (0..words.len()).map(|i| i as f32).collect(),
                    };
                    let column = claim(&name, name.clone())?;
                    (CategoricalLayout::Ordinal { column, codes }, Some(column))
                }
                Encoding::Binned => unreachable!("binned fields are compiled by compile_binned"),
            };
            (
                Encoder::Categorical {
                    vocabulary,
                    categories: words.into_iter().map(String::into_boxed_str).collect(),
                    unknown,
                    layout,
                },
                column,
            )
        }
    };
    let missing = match (spec.default, spec.missing_value) {
        (Some(default), _) => Missing::Default(default),
        (None, Some(value)) => Missing::Value {
            column: column.ok_or_else(|| bad("missing_value applies to numeric and ordinal fields only"))?,
            value: match value {
                OwnedValue::Number(x) => x as f32,
                OwnedValue::Integer(i) => i as f32,
                other => return Err(bad(&format!("missing_value must be a number, got {other:?}"))),
            },
        },
        (None, None) => Missing::Reject,
    };
    let kind = FieldKind::from(spec.kind);
    Ok(Field {
        name: name.into_boxed_str(),
        kind,
        required: spec.required,
        missing,
        encoder,
        min: spec.min,
        max: spec.max,
    })
}

/// A binned field: numeric or categorical, one column holding its bin's weight of evidence.
fn compile_binned(
    spec: FieldSpec,
    claim: &mut impl FnMut(&str, String) -> Result<usize, SchemaError>,
) -> Result<Field, SchemaError> {
    let name = spec.name;
    let bad = |reason: &str| SchemaError::Field { field: name.clone(), reason: reason.to_owned() };
    if spec.encoding != Some(Encoding::Binned) {
        return Err(bad("`bins` go with `encoding: binned`"));
    }
    let Some(table) = spec.bins else {
        return Err(bad("a binned field needs `bins`"));
    };
    if spec.kind == FieldType::Boolean {
        return Err(bad("boolean fields cannot be binned"));
    }
    if spec.vocabulary.is_some()
        || spec.codes.is_some()
        || spec.onehot_columns.is_some()
        || spec.unknown.is_some()
        || spec.scaler.is_some()
        || spec.transform.is_some()
        || spec.missing_value.is_some()
    {
        return Err(bad("a binned field takes its categories, unknown and missing values from `bins` \
             (no vocabulary, codes, onehot_columns, unknown, scaler, transform or missing_value)"));
    }
    if let (Some(lo), Some(hi)) = (spec.min, spec.max) {
        if lo.is_nan() || hi.is_nan() || lo > hi {
            return Err(bad("min is greater than max"));
        }
    }
    let categorical = spec.kind == FieldType::Categorical;
    if categorical && (spec.min.is_some() || spec.max.is_some()) {
        return Err(bad("min and max apply to numeric fields only"));
    }
    let column = claim(&name, name.clone())?;
    let shape = bins::Shape { categorical, integer: spec.kind == FieldType::Integer, min: spec.min, max: spec.max };
    let table = Bins::compile(table, shape, column).map_err(|r| bad(&r))?;
    let missing = match (table.missing(), spec.default, spec.required) {
        (Some(_), Some(_), _) => return Err(bad("give either a default or a missing bin, not both")),
        (Some(_), None, true) => return Err(bad("a field with a missing bin is optional (required: false)")),
        (Some(b), None, false) => Missing::Bin(b),
        (None, Some(_), true) => return Err(bad("a required field cannot have a default")),
        (None, Some(d), false) => Missing::Default(d),
        (None, None, true) => Missing::Reject,
        (None, None, false) => return Err(bad("an optional binned field needs a default or a missing bin")),
    };
    Ok(Field {
        name: name.into_boxed_str(),
        kind: FieldKind::from(spec.kind),
        required: spec.required,
        missing,
        encoder: Encoder::Binned(Box::new(table)),
        min: spec.min,
        max: spec.max,
    })
}

fn ignored_names(
    names: Vec<String>,
    fields: &FxHashMap<Box<str>, usize>,
) -> Result<rustc_hash::FxHashSet<Box<str>>, SchemaError> {
    let mut ignored = rustc_hash::FxHashSet::default();
    for name in names {
        if fields.contains_key(name.as_str()) {
            return Err(SchemaError::Field { field: name, reason: "is both a field and ignored".into() });
        }
        ignored.insert(name.into_boxed_str());
    }
    Ok(ignored)
}

/// A field of the raw-input form: checks as in the matrix form, no encoding (the graph does it).
fn compile_input_field(spec: FieldSpec, input: usize, ty: InputType) -> Result<Field, SchemaError> {
    let name = spec.name;
    let bad = |reason: &str| SchemaError::Field { field: name.clone(), reason: reason.to_owned() };
    if spec.scaler.is_some()
        || spec.transform.is_some()
        || spec.encoding.is_some()
        || spec.codes.is_some()
        || spec.onehot_columns.is_some()
    {
        return Err(bad("scaler, transform, encoding, codes and onehot_columns do not apply to a model input"));
    }
    let kind = FieldKind::from(spec.kind);
    let fits = match kind {
        FieldKind::Categorical => ty == InputType::String,
        FieldKind::Number => matches!(ty, InputType::Float | InputType::Double),
        FieldKind::Integer | FieldKind::Boolean => ty != InputType::String,
    };
    if !fits {
        return Err(bad(&format!("{} fields cannot feed {} inputs", kind.name(), ty.name())));
    }
    if kind != FieldKind::Categorical && (spec.vocabulary.is_some() || spec.unknown.is_some()) {
        return Err(bad("vocabulary and unknown apply to categorical fields only"));
    }
    let numeric = matches!(kind, FieldKind::Number | FieldKind::Integer);
    if !numeric && (spec.min.is_some() || spec.max.is_some()) {
        return Err(bad("min and max apply to numeric fields only"));
    }
    if let (Some(lo), Some(hi)) = (spec.min, spec.max) {
        if lo.is_nan() || hi.is_nan() || lo > hi {
            return Err(bad("min is greater than max"));
        }
    }
    let words = spec.vocabulary.unwrap_or_default();
    let mut vocabulary = FxHashMap::default();
    for (i, w) in words.iter().enumerate() {
        if vocabulary.insert(w.clone().into_boxed_str(), i as u32).is_some() {
            return Err(bad(&format!("category `{w}` is listed twice")));
        }
    }
    let unknown = match spec.unknown {
        None if kind != FieldKind::Categorical => Unknown::Reject,
        None => return Err(bad("categorical field needs an `unknown` policy (reject, pass or a fallback)")),
        Some(UnknownSpec::Policy(UnknownWord::Reject)) if words.is_empty() => {
            return Err(bad("unknown: reject needs a vocabulary"));
        }
        Some(UnknownSpec::Policy(UnknownWord::Reject)) => Unknown::Reject,
        Some(UnknownSpec::Policy(UnknownWord::Pass)) => Unknown::Pass,
        Some(UnknownSpec::Fallback { fallback }) => Unknown::Fallback(
            *vocabulary
                .get(fallback.as_str())
                .ok_or_else(|| bad(&format!("fallback `{fallback}` is not in the vocabulary")))?,
        ),
        Some(_) => return Err(bad("a model input's unknown policy is reject, pass or a fallback")),
    };
    if spec.required && (spec.default.is_some() || spec.missing_value.is_some()) {
        return Err(bad("a required field cannot have a default or missing_value"));
    }
    let missing = match (spec.default, spec.missing_value) {
        (Some(_), Some(_)) => return Err(bad("give either default or missing_value, not both")),
        (Some(default), None) => Missing::Default(default),
        (None, Some(value)) => {
            let fits = matches!(
                (&value, ty),
                (OwnedValue::Text(_), InputType::String)
                    | (OwnedValue::Number(_) | OwnedValue::Integer(_), InputType::Float | InputType::Double)
                    | (OwnedValue::Integer(_), InputType::Int64)
            );
            if !fits {
                return Err(bad(&format!("missing_value {value:?} cannot go to a {} input", ty.name())));
            }
            Missing::Input(value)
        }
        (None, None) if spec.required => Missing::Reject,
        (None, None) => {
            return Err(bad("an optional field needs a default or a missing_value"));
        }
    };
    let encoder = Encoder::Input {
        kind,
        min: spec.min,
        max: spec.max,
        vocabulary,
        categories: words.into_iter().map(String::into_boxed_str).collect(),
        unknown,
        input,
        ty,
    };
    Ok(Field {
        name: name.into_boxed_str(),
        kind,
        required: spec.required,
        missing,
        encoder,
        min: spec.min,
        max: spec.max,
    })
}

fn compile_op(spec: &OpSpec) -> Result<Op, String> {
    let op = match (spec.sub, spec.div, spec.mul, spec.add) {
        (Some(x), None, None, None) => Op::Sub(x),
        (None, Some(x), None, None) => Op::Div(x),
        (None, None, Some(x), None) => Op::Mul(x),
        (None, None, None, Some(x)) => Op::Add(x),
        _ => return Err("each transform step sets exactly one of sub, div, mul, add".into()),
    };
    let (Op::Sub(x) | Op::Div(x) | Op::Mul(x) | Op::Add(x)) = op;
    if !x.is_finite() || matches!(op, Op::Div(d) if d == 0.0) {
        return Err(format!("transform step {op:?} needs a finite operand (and a non-zero divisor)"));
    }
    Ok(op)
}

impl Encoder {
    /// Raw-input form: checks one value and appends it to its model input's column.
    #[inline]
    pub fn put(&self, value: Value<'_>, columns: &mut [InputColumn]) -> Result<Fit, Reason> {
        let Encoder::Input { kind, min, max, vocabulary, categories, unknown, input, .. } = self else {
            unreachable!("put is called for raw-input fields only");
        };
        let column = &mut columns[*input];
        match kind {
            FieldKind::Number | FieldKind::Integer => {
                column.push_number(number(value, *kind == FieldKind::Integer, *min, *max)?);
            }
            FieldKind::Boolean => match value {
                Value::Bool(b) => column.push_number(f64::from(u8::from(b))),
                other => return Err(Reason::WrongType { expected: "bool", got: other.type_name() }),
            },
            FieldKind::Categorical => {
                let Value::Text(word) = value else {
                    return Err(Reason::WrongType { expected: "text", got: value.type_name() });
                };
                match (vocabulary.contains_key(word), unknown) {
                    (true, _) => column.push_text(word),
                    (false, Unknown::Pass) => {
                        column.push_text(word);
                        return Ok(Fit::Unknown);
                    }
                    (false, Unknown::Fallback(i)) => {
                        column.push_text(&categories[*i as usize]);
                        return Ok(Fit::Unknown);
                    }
                    (false, _) => return Err(Reason::UnknownCategory(word.to_owned())),
                }
            }
        }
        Ok(Fit::Known)
    }

    /// Writes one value into the row's slice of the model input.
    ///
    /// One-hot columns are only ever set to 1.0: the caller hands in a zeroed row.
    #[inline]
    pub fn write(&self, value: Value<'_>, row: &mut [f32]) -> Result<Fit, Reason> {
        match self {
            Encoder::Numeric { integer, min, max, ops, column } => {
                let mut x = number(value, *integer, *min, *max)?;
                for op in ops.iter() {
                    x = match *op {
                        Op::Sub(v) => x - v,
                        Op::Div(v) => x / v,
                        Op::Mul(v) => x * v,
                        Op::Add(v) => x + v,
                    };
                }
                row[*column] = x as f32;
            }
            Encoder::Boolean { column } => match value {
                Value::Bool(b) => row[*column] = if b { 1.0 } else { 0.0 },
                other => {
                    return Err(Reason::WrongType { expected: "bool", got: other.type_name() });
                }
            },
            Encoder::Categorical { vocabulary, unknown, layout, .. } => {
                let Value::Text(word) = value else {
                    return Err(Reason::WrongType { expected: "text", got: value.type_name() });
                };
                let (index, fit) = match (vocabulary.get(word), unknown) {
                    (Some(i), _) => (*i, Fit::Known),
                    (None, Unknown::Fallback(i)) => (*i, Fit::Unknown),
                    (None, Unknown::Reject) => return Err(Reason::UnknownCategory(word.to_owned())),
                    (None, Unknown::Ignore | Unknown::Pass) => return Ok(Fit::Unknown),
                    (None, Unknown::Value(v)) => {
                        if let CategoricalLayout::Ordinal { column, .. } = layout {
                            row[*column] = *v;
                        }
                        return Ok(Fit::Unknown);
                    }
                };
                match layout {
                    CategoricalLayout::OneHot(columns) => {
                        if let Some(c) = columns[index as usize] {
                            row[c] = 1.0;
                        }
                    }
                    CategoricalLayout::Ordinal { column, codes } => row[*column] = codes[index as usize],
                }
                return Ok(fit);
            }
            Encoder::Binned(bins) => {
                let b = bins.bin(value)?;
                row[bins.column] = bins.woe(b);
                return Ok(bins.fit(b));
            }
            Encoder::Input { .. } => unreachable!("raw-input fields are put, not written"),
        }
        Ok(Fit::Known)
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

    const SKLEARN_FORMS: &str = r#"
schema_version: 1
fields:
  - name: income
    type: number
    required: false
    default: 50.0
    transform: [{sub: 40.0}, {div: 20.0}, {mul: 2.0}, {add: 1.0}]
  - name: tenure
    type: number
    required: false
    missing_value: .nan
  - name: grade
    type: categorical
    vocabulary: [a, b, c, d]
    encoding: ordinal
    codes: [0, 1, 2, 2]
    required: false
    missing_value: -2
    unknown: {value: -1}
  - name: region
    type: categorical
    vocabulary: [north, south, east, west]
    encoding: onehot
    onehot_columns: [null, "region_south", "region_rare", "region_rare"]
    unknown: ignore
columns: [income, tenure, grade, region_south, region_rare]
"#;

    #[test]
    fn reads_the_sklearn_forms() {
        let s = Schema::parse(SKLEARN_FORMS).unwrap();
        let enc = |name: &str| &s.fields()[s.field_index(name).unwrap()].encoder;
        let mut row = vec![0.0; 5];
        enc("income").write(Value::Number(60.0), &mut row).unwrap();
        assert_eq!(row[0], 3.0, "((60 - 40) / 20) * 2 + 1");
        enc("grade").write(Value::Text("d"), &mut row).unwrap();
        assert_eq!(row[2], 2.0, "infrequent categories share a code");
        enc("grade").write(Value::Text("z"), &mut row).unwrap();
        assert_eq!(row[2], -1.0, "unknown value");
        enc("region").write(Value::Text("east"), &mut row).unwrap();
        enc("region").write(Value::Text("mars"), &mut row).unwrap();
        enc("region").write(Value::Text("north"), &mut row).unwrap();
        assert_eq!(&row[3..], [0.0, 1.0], "dropped category and ignored unknown set nothing");
        let tenure = &s.fields()[s.field_index("tenure").unwrap()];
        assert!(matches!(tenure.missing, Missing::Value { column: 1, value } if value.is_nan()));
        let grade = &s.fields()[s.field_index("grade").unwrap()];
        assert_eq!(grade.missing, Missing::Value { column: 2, value: -2.0 });
    }

    #[test]
    fn refuses_misplaced_sklearn_forms() {
        let ignore_on_ordinal = SKLEARN_FORMS.replace("unknown: {value: -1}", "unknown: ignore");
        assert!(Schema::parse(&ignore_on_ordinal).unwrap_err().to_string().contains("one-hot fields only"));
        let short_codes = SKLEARN_FORMS.replace("codes: [0, 1, 2, 2]", "codes: [0, 1]");
        assert!(Schema::parse(&short_codes).unwrap_err().to_string().contains("codes has 2 entries"));
        let two_ops = SKLEARN_FORMS.replace("{sub: 40.0}", "{sub: 40.0, div: 2.0}");
        assert!(Schema::parse(&two_ops).unwrap_err().to_string().contains("exactly one"));
        let shared = SKLEARN_FORMS.replace("\"region_south\"", "\"grade\"");
        assert!(Schema::parse(&shared).unwrap_err().to_string().contains("already written by field `grade`"));
    }
}
