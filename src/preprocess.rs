//! Rows of named raw features -> the model's `[rows, columns]` float32 input, per the schema.
//!
//! Rows come in through [`RowView`], so the service layer hands its decoded protobuf rows over
//! as they are, without an intermediate copy. The output is one contiguous buffer, allocated once
//! per call. The first bad value stops the call with a [`RowError`] naming row and field.

use crate::{
    schema::{Bin, Echo, Encoder, Fit, InputColumn, Missing, OwnedValue, Reason, Schema, Value},
    telemetry::drift::Drift,
};

/// Read access to one row, whatever its wire or file form.
pub trait RowView {
    /// The caller's row id; empty when none was given.
    fn row_id(&self) -> &str;
    /// Every feature the caller sent: name and value, `None` for an explicit missing value.
    fn features(&self) -> impl Iterator<Item = (&str, Option<Value<'_>>)>;
    /// Whether the row also carries values by position, which only a stream with named columns
    /// can read: a call that cannot read them refuses the row rather than drop them silently.
    fn has_positional_values(&self) -> bool {
        false
    }
}

/// A row that could not be encoded.
#[derive(Debug, Clone, PartialEq)]
pub struct RowError {
    /// Position of the row in its request or chunk, from 0.
    pub row_index: usize,
    pub row_id: String,
    pub field: String,
    pub reason: Reason,
}

impl std::fmt::Display for RowError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "row {}", self.row_index)?;
        if !self.row_id.is_empty() {
            write!(f, " (row_id `{}`)", Echo(&self.row_id))?;
        }
        write!(f, ": field `{}`: {}", Echo(&self.field), self.reason)
    }
}

impl std::error::Error for RowError {}

/// Encoded model input: `rows * width` values, row-major; or, for a raw-input model, one
/// column of values per model input (then `data` is empty and `width` 0).
#[derive(Debug, Clone, Default)]
pub struct Input {
    pub data: Vec<f32>,
    pub rows: usize,
    pub width: usize,
    pub columns: Vec<InputColumn>,
    /// Per row, the bin of each binned field (the schema's `binned()` order): what a
    /// scorecard's points and reason codes are read from. Empty when no field is binned.
    pub bins: Vec<Bin>,
}

/// Encodes all rows, or fails on the first bad one. With `drift`, defaults applied, unknown
/// categories accepted and the rejection are counted there.
pub fn encode<R: RowView>(schema: &Schema, rows: &[R], drift: Option<&Drift>) -> Result<Input, RowError> {
    if !schema.inputs().is_empty() {
        let (input, outcomes) = put_rows(schema, rows, true, drift);
        return match outcomes.into_iter().find_map(Result::err) {
            Some(e) => Err(e),
            None => Ok(input),
        };
    }
    let width = schema.width();
    let mut data = vec![0.0f32; rows.len() * width];
    let mut bins = Vec::with_capacity(rows.len() * schema.binned().len());
    let mut slots: Vec<Option<Value<'_>>> = vec![None; schema.fields().len()];
    for (index, (row, out)) in rows.iter().zip(data.chunks_exact_mut(width)).enumerate() {
        encode_row(schema, row, &mut slots, out, &mut bins, drift).map_err(|(field, reason)| {
            rejected(schema, drift, field, &reason);
            RowError { row_index: index, row_id: row.row_id().to_owned(), field: field.to_owned(), reason }
        })?;
    }
    Ok(Input { data, rows: rows.len(), width, columns: Vec::new(), bins })
}

/// Encodes each row on its own: one result per row, for streams where a bad row must not
/// stop the others. Bad rows leave a zeroed slot in the input that is never reported.
pub fn encode_each<R: RowView>(
    schema: &Schema,
    rows: &[R],
    drift: Option<&Drift>,
) -> (Input, Vec<Result<usize, RowError>>) {
    if !schema.inputs().is_empty() {
        return put_rows(schema, rows, false, drift);
    }
    let width = schema.width();
    let mut data = Vec::with_capacity(rows.len() * width);
    let per_row = schema.binned().len();
    let mut bins = Vec::with_capacity(rows.len() * per_row);
    let mut slots: Vec<Option<Value<'_>>> = vec![None; schema.fields().len()];
    let mut outcomes = Vec::with_capacity(rows.len());
    let mut good = 0;
    for (index, row) in rows.iter().enumerate() {
        data.resize((good + 1) * width, 0.0);
        match encode_row(schema, row, &mut slots, &mut data[good * width..], &mut bins, drift) {
            Ok(()) => {
                outcomes.push(Ok(good));
                good += 1;
            }
            Err((field, reason)) => {
                rejected(schema, drift, field, &reason);
                data.truncate(good * width);
                bins.truncate(good * per_row);
                outcomes.push(Err(RowError {
                    row_index: index,
                    row_id: row.row_id().to_owned(),
                    field: field.to_owned(),
                    reason,
                }));
            }
        }
    }
    data.truncate(good * width);
    (Input { data, rows: good, width, columns: Vec::new(), bins }, outcomes)
}

/// The raw-input form: each good row's values appended to the model inputs' columns; a row that
/// fails half way is taken back out. With `stop`, the first bad row ends the work.
fn put_rows<R: RowView>(
    schema: &Schema,
    rows: &[R],
    stop: bool,
    drift: Option<&Drift>,
) -> (Input, Vec<Result<usize, RowError>>) {
    let mut columns = schema.input_columns(rows.len());
    let mut slots: Vec<Option<Value<'_>>> = vec![None; schema.fields().len()];
    let mut outcomes = Vec::with_capacity(rows.len());
    let mut good = 0;
    for (index, row) in rows.iter().enumerate() {
        match put_row(schema, row, &mut slots, &mut columns, drift) {
            Ok(()) => {
                outcomes.push(Ok(good));
                good += 1;
            }
            Err((field, reason)) => {
                rejected(schema, drift, field, &reason);
                columns.iter_mut().for_each(|c| c.truncate(good));
                outcomes.push(Err(RowError {
                    row_index: index,
                    row_id: row.row_id().to_owned(),
                    field: field.to_owned(),
                    reason,
                }));
                if stop {
                    break;
                }
            }
        }
    }
    (Input { data: Vec::new(), rows: good, width: 0, columns, bins: Vec::new() }, outcomes)
}

fn put_row<'r, R: RowView>(
    schema: &'r Schema,
    row: &'r R,
    slots: &mut [Option<Value<'r>>],
    columns: &mut [InputColumn],
    drift: Option<&Drift>,
) -> Result<(), (&'r str, Reason)> {
    fill_slots(schema, row, slots)?;
    for (i, (field, slot)) in schema.fields().iter().zip(slots.iter()).enumerate() {
        if slot.is_none() && matches!(field.missing, Missing::Default(_) | Missing::Input(_)) {
            if let Some(d) = drift {
                d.defaulted(i);
            }
        }
        let value = match (slot, &field.missing) {
            (Some(v), _) => *v,
            (None, Missing::Default(default)) => default.as_value(),
            (None, Missing::Input(value)) => {
                if let crate::schema::Encoder::Input { input, .. } = field.encoder {
                    match value {
                        OwnedValue::Text(t) => columns[input].push_text(t),
                        OwnedValue::Number(x) => columns[input].push_number(*x),
                        OwnedValue::Integer(i) => columns[input].push_number(*i as f64),
                        OwnedValue::Bool(b) => columns[input].push_number(f64::from(u8::from(*b))),
                    }
                }
                continue;
            }
            (None, Missing::Value { .. } | Missing::Reject | Missing::Bin(_)) => {
                return Err((&field.name, Reason::Missing));
            }
        };
        let fit = field.encoder.put(value, columns).map_err(|reason| (&*field.name, reason))?;
        unknown(drift, i, fit);
    }
    Ok(())
}

/// Counts an accepted unknown category.
#[inline]
fn unknown(drift: Option<&Drift>, field: usize, fit: Fit) {
    if let (Some(d), Fit::Unknown) = (drift, fit) {
        d.unknown_category(field);
    }
}

/// Counts a refused row by field and reason.
fn rejected(schema: &Schema, drift: Option<&Drift>, field: &str, reason: &Reason) {
    if let Some(d) = drift {
        d.rejected(schema.field_index(field), reason.name());
    }
}

/// Each feature the row sends, in its field's slot; a name the schema rejects is the error.
fn fill_slots<'r, R: RowView>(
    schema: &'r Schema,
    row: &'r R,
    slots: &mut [Option<Value<'r>>],
) -> Result<(), (&'r str, Reason)> {
    slots.fill(None);
    for (name, value) in row.features() {
        match schema.field_index(name) {
            Some(i) => slots[i] = value,
            None if schema.rejects(name) => return Err((name, Reason::UnknownField)),
            None => {}
        }
    }
    Ok(())
}

fn encode_row<'r, R: RowView>(
    schema: &'r Schema,
    row: &'r R,
    slots: &mut [Option<Value<'r>>],
    out: &mut [f32],
    bins: &mut Vec<Bin>,
    drift: Option<&Drift>,
) -> Result<(), (&'r str, Reason)> {
    fill_slots(schema, row, slots)?;
    for (i, (field, slot)) in schema.fields().iter().zip(slots.iter()).enumerate() {
        if slot.is_none() && matches!(field.missing, Missing::Default(_) | Missing::Value { .. } | Missing::Bin(_)) {
            if let Some(d) = drift {
                d.defaulted(i);
            }
        }
        let value = match (slot, &field.missing) {
            (Some(v), _) => *v,
            (None, Missing::Default(default)) => default.as_value(),
            (None, Missing::Value { column, value }) => {
                out[*column] = *value;
                continue;
            }
            (None, Missing::Bin(b)) => {
                if let Encoder::Binned(table) = &field.encoder {
                    out[table.column] = table.woe(*b);
                    bins.push(*b);
                }
                continue;
            }
            (None, Missing::Reject | Missing::Input(_)) => return Err((&field.name, Reason::Missing)),
        };
        // A binned field's bin is kept beside its column: a scorecard's points come from it.
        if let Encoder::Binned(table) = &field.encoder {
            let b = table.bin(value).map_err(|reason| (&*field.name, reason))?;
            out[table.column] = table.woe(b);
            bins.push(b);
            unknown(drift, i, table.fit(b));
            continue;
        }
        let fit = field.encoder.write(value, out).map_err(|reason| (&*field.name, reason))?;
        unknown(drift, i, fit);
    }
    Ok(())
}

/// A row held as owned name/value pairs: golden files, benchmarks, tests.
#[derive(Debug, Clone, Default)]
pub struct OwnedRow {
    pub row_id: String,
    pub features: Vec<(String, crate::schema::OwnedValue)>,
}

impl RowView for OwnedRow {
    fn row_id(&self) -> &str {
        &self.row_id
    }

    fn features(&self) -> impl Iterator<Item = (&str, Option<Value<'_>>)> {
        self.features.iter().map(|(k, v)| (k.as_str(), Some(v.as_value())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{InputColumn, OwnedValue};

    const SCHEMA: &str = r#"
schema_version: 1
fields:
  - name: x
    type: number
    scaler: {mean: 1.0, scale: 2.0}
  - name: c
    type: categorical
    required: false
    default: b
    vocabulary: [a, b]
    encoding: onehot
    unknown: reject
columns: [x, "c=a", "c=b"]
ignored: [note]
"#;

    fn row(id: &str, features: &[(&str, OwnedValue)]) -> OwnedRow {
        OwnedRow { row_id: id.into(), features: features.iter().map(|(k, v)| (k.to_string(), v.clone())).collect() }
    }

    #[test]
    fn encodes_rows_with_defaults() {
        let schema = Schema::parse(SCHEMA).unwrap();
        let rows = [
            row("r0", &[("x", OwnedValue::Number(3.0)), ("c", OwnedValue::Text("a".into()))]),
            row("r1", &[("x", OwnedValue::Integer(1))]),
        ];
        let input = encode(&schema, &rows, None).unwrap();
        assert_eq!(input.data, [1.0, 1.0, 0.0, 0.0, 0.0, 1.0]);
        assert_eq!((input.rows, input.width), (2, 3));
    }

    #[test]
    fn names_row_and_field() {
        let schema = Schema::parse(SCHEMA).unwrap();
        let rows = [
            row("ok", &[("x", OwnedValue::Number(0.0)), ("note", OwnedValue::Text("dropped by the pipeline".into()))]),
            row("bad", &[("y", OwnedValue::Number(0.0))]),
        ];
        let err = encode(&schema, &rows, None).unwrap_err();
        assert_eq!((err.row_index, err.field.as_str(), &err.reason), (1, "y", &Reason::UnknownField));
        assert_eq!(err.to_string(), "row 1 (row_id `bad`): field `y`: unknown field (the schema is strict)");
        let missing = encode(&schema, &[row("", &[])], None).unwrap_err();
        assert_eq!(missing.to_string(), "row 0: field `x`: required field is missing");
    }

    #[test]
    fn defaults_unknown_categories_and_rejections_are_counted_per_field() {
        use crate::{
            config::DriftConfig,
            telemetry::drift::{DriftSet, ScoreKind},
        };
        let schema = Schema::parse(&SCHEMA.replace("unknown: reject", "unknown: {fallback: b}")).unwrap();
        let fields = schema.fields().iter().map(|f| &*f.name);
        let drift = std::sync::Arc::new(Drift::new("v1", fields, ScoreKind::Probability, None, DriftConfig::default()));
        let set = DriftSet::default();
        set.watch("t", &drift);
        let rows = [
            row("default", &[("x", OwnedValue::Number(3.0))]),
            row("unknown", &[("x", OwnedValue::Number(3.0)), ("c", OwnedValue::Text("zz".into()))]),
            row("known", &[("x", OwnedValue::Number(3.0)), ("c", OwnedValue::Text("a".into()))]),
            row("wrong type", &[("x", OwnedValue::Text("3".into()))]),
            row("stranger", &[("x", OwnedValue::Number(3.0)), ("y", OwnedValue::Number(0.0))]),
        ];
        let (_, outcomes) = encode_each(&schema, &rows, Some(&drift));
        assert_eq!(outcomes.iter().filter(|o| o.is_err()).count(), 2);
        assert!(encode(&schema, &rows[3..4], Some(&drift)).is_err());
        let text = {
            let mut out = Vec::new();
            prometheus::Encoder::encode(
                &prometheus::TextEncoder::new(),
                &prometheus::core::Collector::collect(&set),
                &mut out,
            )
            .unwrap();
            String::from_utf8(out).unwrap()
        };
        for line in [
            r#"modeld_input_defaults_total{task="t",version="v1",field="x"} 0"#,
            r#"modeld_input_defaults_total{task="t",version="v1",field="c"} 1"#,
            r#"modeld_input_unknown_categories_total{task="t",version="v1",field="c"} 1"#,
            r#"modeld_input_rejections_total{task="t",version="v1",field="x",reason="wrong_type"} 2"#,
            r#"modeld_input_rejections_total{task="t",version="v1",field="-",reason="unknown_field"} 1"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing from\n{text}");
        }
    }

    #[test]
    fn every_rejection_reason_has_a_label_value() {
        let reasons = [
            Reason::Missing,
            Reason::WrongType { expected: "number", got: "text" },
            Reason::NotFinite(f64::NAN),
            Reason::NotInteger(0.5),
            Reason::OutOfRange { value: 0.0, min: 1.0, max: 2.0 },
            Reason::UnknownCategory("x".into()),
            Reason::UnknownField,
        ];
        let names: Vec<&str> = reasons.iter().map(Reason::name).collect();
        assert_eq!(names, crate::telemetry::drift::REASONS);
    }

    #[test]
    fn encode_each_keeps_good_rows() {
        let schema = Schema::parse(SCHEMA).unwrap();
        let rows = [
            row("a", &[("x", OwnedValue::Number(1.0))]),
            row("b", &[("x", OwnedValue::Text("no".into()))]),
            row("c", &[("x", OwnedValue::Number(5.0))]),
        ];
        let (input, outcomes) = encode_each(&schema, &rows, None);
        assert_eq!(input.rows, 2);
        assert_eq!(input.data, [0.0, 0.0, 1.0, 2.0, 0.0, 1.0]);
        assert_eq!(outcomes[0], Ok(0));
        assert_eq!(outcomes[1].as_ref().unwrap_err().field, "x");
        assert_eq!(outcomes[2], Ok(1));
    }

    const RAW: &str = r#"
schema_version: 1
fields:
  - name: purpose
    type: categorical
    vocabulary: [car, tv]
    unknown: pass
    required: false
    missing_value: ""
    input: {name: purpose, type: string}
  - name: age
    type: integer
    min: 18
    input: {name: age_in_years, type: int64}
  - name: amount
    type: number
    required: false
    missing_value: .nan
    input: {name: amount, type: float}
"#;

    #[test]
    fn raw_inputs_take_checked_values_per_model_input() {
        let schema = Schema::parse(RAW).unwrap();
        assert_eq!(
            schema.inputs().iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            ["purpose", "age_in_years", "amount"]
        );
        let rows = [
            row("a", &[("purpose", OwnedValue::Text("boat".into())), ("age", OwnedValue::Integer(40))]),
            row("b", &[("purpose", OwnedValue::Text("car".into())), ("age", OwnedValue::Integer(7))]),
            row("c", &[("age", OwnedValue::Integer(30)), ("amount", OwnedValue::Number(2.5))]),
        ];
        let (input, outcomes) = encode_each(&schema, &rows, None);
        assert_eq!(input.rows, 2);
        assert_eq!(
            outcomes[1].as_ref().unwrap_err().to_string(),
            "row 1 (row_id `b`): field `age`: value 7 is out of range [18, inf]"
        );
        // The bad row's text was taken back out: only rows a and c remain.
        assert_eq!(input.columns[0].texts(), ["boat", ""], "an unknown category passes; a missing one is \"\"");
        assert!(matches!(&input.columns[1], InputColumn::Int64(v) if v == &[40, 30]));
        assert!(matches!(&input.columns[2], InputColumn::Float(v) if v[0].is_nan() && v[1] == 2.5));
        assert!(encode(&schema, &rows, None).is_err(), "encode stops at the first bad row");
    }

    #[test]
    fn raw_fields_must_fit_their_input() {
        let err = |yaml: String| Schema::parse(&yaml).unwrap_err().to_string();
        assert!(
            err(RAW.replace("{name: age_in_years, type: int64}", "{name: age_in_years, type: string}"))
                .contains("integer fields cannot feed string inputs")
        );
        assert!(
            err(RAW.replace("    input: {name: amount, type: float}\n", "")).contains("every field needs an `input`")
        );
        assert!(err(RAW.replace("missing_value: \"\"", "missing_value: 1")).contains("cannot go to a string input"));
        assert!(err(format!("{RAW}columns: [purpose]\n")).contains("lists no columns"));
    }
}
