//! V2 tensors as the core reads them: one input tensor per feature, each holding one value per
//! row, read in place (typed contents, raw little-endian bytes, or decoded JSON) through a
//! [`RowView`] per row; and the outputs built from the core's predictions.

use crate::{
    bundle::{Bundle, Kind},
    predict::{PredictError, Prediction},
    preprocess::RowView,
    schema::{Echo, FieldKind, Schema, Value},
};

/// The tensor element types of the protocol that carry a feature value. FP16 and BF16 are
/// refused: no tabular feature needs them, and a silent widening would hide a caller's bug.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataType {
    Bool,
    U8,
    U16,
    U32,
    U64,
    I8,
    I16,
    I32,
    I64,
    F32,
    F64,
    Bytes,
}

impl DataType {
    pub fn parse(name: &str) -> Option<DataType> {
        Some(match name {
            "BOOL" => DataType::Bool,
            "UINT8" => DataType::U8,
            "UINT16" => DataType::U16,
            "UINT32" => DataType::U32,
            "UINT64" => DataType::U64,
            "INT8" => DataType::I8,
            "INT16" => DataType::I16,
            "INT32" => DataType::I32,
            "INT64" => DataType::I64,
            "FP32" => DataType::F32,
            "FP64" => DataType::F64,
            "BYTES" => DataType::Bytes,
            _ => return None,
        })
    }

    pub const fn name(self) -> &'static str {
        match self {
            DataType::Bool => "BOOL",
            DataType::U8 => "UINT8",
            DataType::U16 => "UINT16",
            DataType::U32 => "UINT32",
            DataType::U64 => "UINT64",
            DataType::I8 => "INT8",
            DataType::I16 => "INT16",
            DataType::I32 => "INT32",
            DataType::I64 => "INT64",
            DataType::F32 => "FP32",
            DataType::F64 => "FP64",
            DataType::Bytes => "BYTES",
        }
    }

    /// Bytes per element in raw form; None for BYTES (each element carries its length).
    pub const fn width(self) -> Option<usize> {
        match self {
            DataType::Bool | DataType::U8 | DataType::I8 => Some(1),
            DataType::U16 | DataType::I16 => Some(2),
            DataType::U32 | DataType::I32 | DataType::F32 => Some(4),
            DataType::U64 | DataType::I64 | DataType::F64 => Some(8),
            DataType::Bytes => None,
        }
    }

    const fn is_integer(self) -> bool {
        matches!(
            self,
            DataType::U8
                | DataType::U16
                | DataType::U32
                | DataType::U64
                | DataType::I8
                | DataType::I16
                | DataType::I32
                | DataType::I64
        )
    }

    /// Whether a tensor of this type can feed a field of `kind`; the core still checks each
    /// value (integrality, range, categories).
    fn fits(self, kind: FieldKind) -> bool {
        match kind {
            FieldKind::Number | FieldKind::Integer => {
                self.is_integer() || matches!(self, DataType::F32 | DataType::F64)
            }
            FieldKind::Boolean => self == DataType::Bool,
            // Categories may be codes sent as integers.
            FieldKind::Categorical => self == DataType::Bytes || self.is_integer(),
        }
    }
}

/// The datatype the model metadata gives for a field.
pub fn field_datatype(kind: FieldKind) -> DataType {
    match kind {
        FieldKind::Number => DataType::F64,
        FieldKind::Integer => DataType::I64,
        FieldKind::Boolean => DataType::Bool,
        FieldKind::Categorical => DataType::Bytes,
    }
}

/// The types a field of `kind` accepts, for error messages.
fn accepted(kind: FieldKind) -> &'static str {
    match kind {
        FieldKind::Number | FieldKind::Integer => "FP64, FP32, INT64, INT32 or another integer type",
        FieldKind::Boolean => "BOOL",
        FieldKind::Categorical => "BYTES (or an integer type for numeric codes)",
    }
}

/// A JSON tensor element (REST): kept as parsed, checked against the datatype on decode.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    /// A missing value (JSON `null`).
    Null,
    Bool(bool),
    Integer(i64),
    Number(f64),
    Text(String),
}

/// One tensor's elements, borrowed from the decoded message.
#[derive(Debug)]
pub enum Values<'a> {
    Bool(&'a [bool]),
    I32(&'a [i32]),
    I64(&'a [i64]),
    U32(&'a [u32]),
    U64(&'a [u64]),
    F32(&'a [f32]),
    F64(&'a [f64]),
    /// BYTES elements, checked as UTF-8 once.
    Text(Vec<&'a str>),
    /// Fixed-width little-endian elements (raw contents, the binary extension).
    Raw(DataType, &'a [u8]),
    Json(&'a [Scalar]),
}

impl Values<'_> {
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn len(&self) -> usize {
        match self {
            Values::Bool(v) => v.len(),
            Values::I32(v) => v.len(),
            Values::I64(v) => v.len(),
            Values::U32(v) => v.len(),
            Values::U64(v) => v.len(),
            Values::F32(v) => v.len(),
            Values::F64(v) => v.len(),
            Values::Text(v) => v.len(),
            Values::Raw(t, bytes) => bytes.len() / t.width().unwrap_or(1),
            Values::Json(v) => v.len(),
        }
    }

    /// Element `i` as a feature value; None is a missing value (JSON null).
    fn get(&self, i: usize) -> Option<Value<'_>> {
        Some(match self {
            Values::Bool(v) => Value::Bool(v[i]),
            Values::I32(v) => Value::Integer(i64::from(v[i])),
            Values::I64(v) => Value::Integer(v[i]),
            Values::U32(v) => Value::Integer(i64::from(v[i])),
            Values::U64(v) => unsigned(v[i]),
            Values::F32(v) => Value::Number(f64::from(v[i])),
            Values::F64(v) => Value::Number(v[i]),
            Values::Text(v) => Value::Text(v[i]),
            Values::Raw(t, bytes) => raw(*t, bytes, i),
            Values::Json(v) => match &v[i] {
                Scalar::Null => return None,
                Scalar::Bool(b) => Value::Bool(*b),
                Scalar::Integer(n) => Value::Integer(*n),
                Scalar::Number(x) => Value::Number(*x),
                Scalar::Text(s) => Value::Text(s),
            },
        })
    }
}

/// A u64 past i64 stays the number it is; the field's range check names it.
fn unsigned(u: u64) -> Value<'static> {
    i64::try_from(u).map_or(Value::Number(u as f64), Value::Integer)
}

fn raw(t: DataType, bytes: &[u8], i: usize) -> Value<'_> {
    let w = t.width().unwrap_or(1);
    let b = &bytes[i * w..(i + 1) * w];
    let le = |n: usize| -> [u8; 8] {
        let mut a = [0u8; 8];
        a[..n].copy_from_slice(&b[..n]);
        a
    };
    match t {
        DataType::Bool => Value::Bool(b[0] != 0),
        DataType::U8 => Value::Integer(i64::from(b[0])),
        DataType::I8 => Value::Integer(i64::from(b[0] as i8)),
        DataType::U16 => Value::Integer(i64::from(u16::from_le_bytes([b[0], b[1]]))),
        DataType::I16 => Value::Integer(i64::from(i16::from_le_bytes([b[0], b[1]]))),
        DataType::U32 => Value::Integer(i64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
        DataType::I32 => Value::Integer(i64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
        DataType::F32 => Value::Number(f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
        DataType::U64 => unsigned(u64::from_le_bytes(le(8))),
        DataType::I64 => Value::Integer(i64::from_le_bytes(le(8))),
        DataType::F64 => Value::Number(f64::from_le_bytes(le(8))),
        // BYTES never takes the fixed-width form: it is decoded to `Text`.
        DataType::Bytes => Value::Other("bytes"),
    }
}

/// Splits raw BYTES data (each element a 4-byte little-endian length, then its bytes) into
/// strings, checking lengths and UTF-8.
pub fn split_bytes<'a>(input: &str, mut data: &'a [u8]) -> Result<Vec<&'a str>, PredictError> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let element = out.len();
        let Some((len, rest)) = data.split_first_chunk::<4>() else {
            return Err(PredictError::Tensors(format!(
                "input `{}`: element {element} of the BYTES data is cut short in its length prefix",
                Echo(input)
            )));
        };
        let len = u32::from_le_bytes(*len) as usize;
        if len > rest.len() {
            return Err(PredictError::Tensors(format!(
                "input `{}`: element {element} of the BYTES data claims {len} bytes, {} remain",
                Echo(input),
                rest.len()
            )));
        }
        out.push(utf8(input, element, &rest[..len])?);
        data = &rest[len..];
    }
    Ok(out)
}

/// A BYTES element as text: feature values are strings.
pub fn utf8<'a>(input: &str, element: usize, bytes: &'a [u8]) -> Result<&'a str, PredictError> {
    std::str::from_utf8(bytes).map_err(|_| {
        PredictError::Tensors(format!("input `{}`: element {element} is not valid UTF-8 text", Echo(input)))
    })
}

/// One input tensor, decoded.
#[derive(Debug)]
pub struct Column<'a> {
    pub name: &'a str,
    pub values: Values<'a>,
}

/// Every input of a call, all with the same number of rows.
#[derive(Debug, Default)]
pub struct Columns<'a> {
    columns: Vec<Column<'a>>,
    rows: usize,
}

impl<'a> Columns<'a> {
    pub fn with_capacity(n: usize) -> Columns<'a> {
        Columns { columns: Vec::with_capacity(n), rows: 0 }
    }

    /// Adds an input after checking it against the shape it declared and the others.
    pub fn push(&mut self, name: &'a str, shape: &[i64], values: Values<'a>) -> Result<(), PredictError> {
        // A linear scan: a tabular model has tens of inputs, and it allocates nothing.
        if self.columns.iter().any(|c| c.name == name) {
            return Err(PredictError::Tensors(format!("input `{}` is given twice", Echo(name))));
        }
        let rows = batch(name, shape)?;
        if values.len() != rows {
            return Err(PredictError::Tensors(format!(
                "input `{}`: {} elements for shape {shape:?} (which holds {rows})",
                Echo(name),
                values.len()
            )));
        }
        if let Some(first) = self.columns.first() {
            if rows != self.rows {
                return Err(PredictError::Tensors(format!(
                    "input `{}` has {rows} rows but `{}` has {} (every input holds one value per row)",
                    Echo(name),
                    Echo(first.name),
                    self.rows
                )));
            }
        }
        self.rows = rows;
        self.columns.push(Column { name, values });
        Ok(())
    }

    /// One view per row, for the core.
    pub fn rows(&self) -> Vec<TensorRow<'_>> {
        (0..self.rows).map(|index| TensorRow { columns: &self.columns, index }).collect()
    }
}

/// The rows a shape holds: `[N]` or `[N, 1]`, one value per row.
fn batch(name: &str, shape: &[i64]) -> Result<usize, PredictError> {
    let rows = match shape {
        [n] | [n, 1] => *n,
        _ => -1,
    };
    usize::try_from(rows).map_err(|_| {
        PredictError::Tensors(format!(
            "input `{}`: shape {shape:?} is not [N] or [N, 1] (one value per row)",
            Echo(name)
        ))
    })
}

/// Elements a shape holds, refusing negative dimensions and overflow.
pub fn elements(name: &str, shape: &[i64]) -> Result<usize, PredictError> {
    shape
        .iter()
        .try_fold(1usize, |n, d| usize::try_from(*d).ok().and_then(|d| n.checked_mul(d)))
        .ok_or_else(|| PredictError::Tensors(format!("input `{}`: shape {shape:?} is not a valid shape", Echo(name))))
}

/// One row of the tensors: element `index` of every input.
pub struct TensorRow<'c> {
    columns: &'c [Column<'c>],
    index: usize,
}

impl RowView for TensorRow<'_> {
    fn row_id(&self) -> &str {
        ""
    }

    fn features(&self) -> impl Iterator<Item = (&str, Option<Value<'_>>)> {
        self.columns.iter().map(|c| (c.name, c.values.get(self.index)))
    }
}

/// Checks an input's name and datatype against `bundle`'s schema: every input must be a field
/// (or a name the schema ignores) with a datatype the field can take. Returns the datatype.
pub fn check_input(task: &str, bundle: &Bundle, name: &str, datatype: &str) -> Result<DataType, PredictError> {
    let schema: &Schema = &bundle.schema;
    let Some(t) = DataType::parse(datatype) else {
        return Err(PredictError::Tensors(format!(
            "input `{}`: datatype `{}` is not supported (BOOL, INT8-64, UINT8-64, FP32, FP64, BYTES)",
            Echo(name),
            Echo(datatype)
        )));
    };
    match schema.field_index(name) {
        Some(i) => {
            let kind = schema.fields()[i].kind;
            if !t.fits(kind) {
                return Err(PredictError::Tensors(format!(
                    "input `{}`: datatype {} does not fit a {} field (send {})",
                    Echo(name),
                    t.name(),
                    kind.name(),
                    accepted(kind)
                )));
            }
        }
        None if schema.ignores(name) => {}
        None => {
            return Err(PredictError::Tensors(format!(
                "unknown input `{}`: model `{}` has no such input (see its metadata for the inputs)",
                Echo(name),
                Echo(task)
            )));
        }
    }
    Ok(t)
}

/// The outputs of the protocol's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Classifiers: the served class label per row, BYTES `[N]`.
    Label,
    /// Classifiers: P(class) per row and class, FP32 `[N, C]`.
    Probabilities,
    /// Regressors: the predicted values per row and target, FP64 `[N, K]`.
    Values,
    /// Scorecards: the points per row, FP64 `[N]`.
    Score,
}

impl Output {
    pub const fn name(self) -> &'static str {
        match self {
            Output::Label => "label",
            Output::Probabilities => "probabilities",
            Output::Values => "values",
            Output::Score => "score",
        }
    }

    /// Every output a bundle of `kind` gives, in answer order.
    pub fn all(kind: Kind) -> &'static [Output] {
        match kind {
            Kind::Classifier => &[Output::Label, Output::Probabilities],
            Kind::Regressor => &[Output::Values],
            Kind::Scorecard => &[Output::Label, Output::Probabilities, Output::Score],
        }
    }

    /// The requested output `name`, or an error listing what the model gives.
    pub fn parse(task: &str, bundle: &Bundle, name: &str) -> Result<Output, PredictError> {
        let all = Output::all(bundle.config.kind);
        all.iter().copied().find(|o| o.name() == name).ok_or_else(|| {
            let names: Vec<&str> = all.iter().map(|o| o.name()).collect();
            PredictError::Tensors(format!(
                "unknown output `{}`: model `{}` gives {}",
                Echo(name),
                Echo(task),
                names.join(", ")
            ))
        })
    }

    pub const fn datatype(self) -> DataType {
        match self {
            Output::Label => DataType::Bytes,
            Output::Probabilities => DataType::F32,
            Output::Values | Output::Score => DataType::F64,
        }
    }

    /// The output's shape in model metadata: -1 for the rows (and for a width not known).
    pub fn metadata_shape(self, bundle: &Bundle) -> Vec<i64> {
        match self {
            Output::Label | Output::Score => vec![-1],
            Output::Probabilities => vec![-1, bundle.class_labels().len() as i64],
            Output::Values => vec![-1, -1],
        }
    }
}

/// One output's data, for the face to put in its own form.
pub enum OutputData<'a> {
    Text(Vec<&'a str>),
    F32(Vec<f32>),
    F64(Vec<f64>),
}

impl OutputData<'_> {
    /// The little-endian raw form (BYTES: each element preceded by its 4-byte length).
    pub fn to_raw(&self) -> Vec<u8> {
        match self {
            OutputData::Text(v) => {
                let mut out = Vec::with_capacity(v.iter().map(|s| s.len() + 4).sum());
                for s in v {
                    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
                    out.extend_from_slice(s.as_bytes());
                }
                out
            }
            OutputData::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            OutputData::F64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }
}

/// `output`'s shape and data for `predictions`, all from `bundle`.
pub fn output_data<'b>(output: Output, bundle: &'b Bundle, predictions: &[Prediction]) -> (Vec<i64>, OutputData<'b>) {
    let n = predictions.len() as i64;
    let classes = bundle.class_labels();
    match output {
        Output::Label => {
            let labels = predictions.iter().map(|p| p.class.map_or("", |c| classes[c].as_str())).collect();
            (vec![n], OutputData::Text(labels))
        }
        Output::Probabilities => {
            let data: Vec<f32> = predictions.iter().flat_map(|p| p.probabilities.iter().copied()).collect();
            (vec![n, classes.len() as i64], OutputData::F32(data))
        }
        Output::Values => {
            let width = predictions.first().map_or(0, |p| p.values.len());
            let data: Vec<f64> = predictions.iter().flat_map(|p| p.values.iter().copied()).collect();
            (vec![n, width as i64], OutputData::F64(data))
        }
        Output::Score => (vec![n], OutputData::F64(predictions.iter().map(|p| p.score.unwrap_or(f64::NAN)).collect())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_elements_read_little_endian() {
        let bytes: Vec<u8> = [-3i64, 7].iter().flat_map(|x| x.to_le_bytes()).collect();
        let v = Values::Raw(DataType::I64, &bytes);
        assert_eq!((v.len(), v.get(0), v.get(1)), (2, Some(Value::Integer(-3)), Some(Value::Integer(7))));
        let bytes = 2.5f32.to_le_bytes();
        assert_eq!(Values::Raw(DataType::F32, &bytes).get(0), Some(Value::Number(2.5)));
        assert_eq!(Values::Raw(DataType::U64, &u64::MAX.to_le_bytes()).get(0), Some(Value::Number(u64::MAX as f64)));
        assert_eq!(Values::Raw(DataType::I8, &[0xff]).get(0), Some(Value::Integer(-1)));
    }

    #[test]
    fn bytes_elements_are_length_prefixed_text() {
        let mut data = Vec::new();
        for s in ["A11", "", "ü"] {
            data.extend_from_slice(&(s.len() as u32).to_le_bytes());
            data.extend_from_slice(s.as_bytes());
        }
        assert_eq!(split_bytes("x", &data).unwrap(), vec!["A11", "", "ü"]);
        assert_eq!(OutputData::Text(vec!["A11", "", "ü"]).to_raw(), data);
        let e = split_bytes("x", &data[..data.len() - 1]).unwrap_err();
        assert!(e.to_string().contains("element 2") && e.to_string().contains("2 bytes, 1 remain"), "{e}");
        assert!(split_bytes("x", &[1, 0]).unwrap_err().to_string().contains("cut short"));
        assert!(split_bytes("x", &[1, 0, 0, 0, 0xff]).unwrap_err().to_string().contains("not valid UTF-8"));
    }

    #[test]
    fn inputs_hold_one_value_per_row() {
        let a = [1i64, 2, 3];
        let mut c = Columns::default();
        c.push("a", &[3], Values::I64(&a)).unwrap();
        c.push("b", &[3, 1], Values::F64(&[0.5, 1.5, 2.5])).unwrap();
        let rows = c.rows();
        let row: Vec<_> = rows[2].features().collect();
        assert_eq!(row, vec![("a", Some(Value::Integer(3))), ("b", Some(Value::Number(2.5)))]);
        for (shape, expect) in
            [(&[3, 2][..], "is not [N] or [N, 1]"), (&[-1], "is not [N] or [N, 1]"), (&[2], "3 elements for shape [2]")]
        {
            let e = Columns::default().push("x", shape, Values::I64(&a)).unwrap_err();
            assert!(e.to_string().contains(expect), "{shape:?}: {e}");
        }
        let e = c.push("c", &[2], Values::I64(&a[..2])).unwrap_err();
        assert!(e.to_string().contains("`c` has 2 rows but `a` has 3"), "{e}");
    }

    #[test]
    fn datatypes_fit_fields_by_kind() {
        assert!(DataType::F32.fits(FieldKind::Integer) && DataType::U8.fits(FieldKind::Number));
        assert!(!DataType::Bytes.fits(FieldKind::Number) && !DataType::Bool.fits(FieldKind::Number));
        assert!(DataType::Bytes.fits(FieldKind::Categorical) && !DataType::F64.fits(FieldKind::Categorical));
        for name in ["BOOL", "UINT8", "INT16", "INT64", "FP32", "FP64", "BYTES"] {
            assert_eq!(DataType::parse(name).map(DataType::name), Some(name));
        }
        assert_eq!(DataType::parse("FP16"), None);
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config {
            cases: 512,
            rng_seed: proptest::test_runner::RngSeed::Fixed(11),
            failure_persistence: None,
            ..Default::default()
        })]

        /// Any raw bytes under any datatype and shape either are refused with a message or read
        /// back row by row; nothing a caller sends makes the face panic.
        #[test]
        fn hostile_raw_tensors_are_refused_or_read(
            t in 0usize..12,
            data in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
            shape in proptest::collection::vec(-2i64..20, 0..3),
        ) {
            let all = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP32", "FP64", "BYTES"];
            let t = DataType::parse(all[t]).unwrap();
            let values = match t.width() {
                Some(w) if data.len() % w != 0 => return Ok(()),
                Some(_) => Values::Raw(t, &data),
                None => match split_bytes("x", &data) {
                    Ok(texts) => Values::Text(texts),
                    Err(_) => return Ok(()),
                },
            };
            let mut columns = Columns::default();
            if columns.push("x", &shape, values).is_ok() {
                for row in columns.rows() {
                    proptest::prop_assert_eq!(row.features().count(), 1);
                }
            }
        }
    }
}
