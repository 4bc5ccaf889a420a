//! Property tests over what a caller or a bundle author controls: the bundle's schema, config,
//! golden rows and manifest, the service configuration, and the rows preprocessing encodes.
//! Whatever the input, no panic and a clear error; what is accepted is encoded consistently.
//!
//! The generator's seed is fixed, so a run is repeatable: a failure here is a bug found, never
//! luck.

mod common;

use common::*;
use modeld::{
    bundle::{config::BundleConfig, golden, manifest},
    config::{self, ServeArgs},
    preprocess::{self, OwnedRow},
    schema::{OwnedValue, Schema},
};
use proptest::{
    prelude::*,
    test_runner::{Config, RngSeed},
};

fn config(cases: u32) -> Config {
    Config { cases, rng_seed: RngSeed::Fixed(0x6d6f_6465_6c64), failure_persistence: None, ..Config::default() }
}

fn shipped(version: &str, file: &str) -> String {
    std::fs::read_to_string(repo_models().join(TASK).join(version).join(file)).unwrap()
}

/// A text edited at a few places: a span cut out and something else put in. Edits of a valid
/// file reach far deeper into a parser than random text does.
fn edited(original: String) -> impl Strategy<Value = String> {
    let len = original.len();
    let edit = (
        0..=len,
        0usize..24,
        prop_oneof![
            Just(String::new()),
            "[ -~]{0,12}",
            Just("\n".to_owned()),
            Just(": ".to_owned()),
            Just("- ".to_owned()),
            Just("{".to_owned()),
            Just("[".to_owned()),
            Just("\"".to_owned()),
            Just("-1e309".to_owned()),
            Just(".nan".to_owned()),
            Just("99999999999999999999".to_owned()),
            Just("~".to_owned()),
            "\\PC{0,4}",
        ],
    );
    prop::collection::vec(edit, 1..4).prop_map(move |edits| {
        let mut text = original.clone();
        for (at, cut, put) in edits {
            let start = floor_char(&text, at.min(text.len()));
            let end = floor_char(&text, (start + cut).min(text.len()));
            text.replace_range(start..end, &put);
        }
        text
    })
}

fn first_lines(text: &str, n: usize) -> String {
    text.lines().take(n).map(|l| format!("{l}\n")).collect()
}

fn floor_char(text: &str, mut i: usize) -> usize {
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Any value a caller can send, the awkward ones often.
fn value() -> impl Strategy<Value = Option<OwnedValue>> {
    prop_oneof![
        Just(None),
        any::<f64>().prop_map(|x| Some(OwnedValue::Number(x))),
        prop_oneof![
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(f64::NEG_INFINITY),
            Just(-0.0),
            Just(5e-324),
            Just(f64::MAX),
            (-2.0f64..130.0).prop_map(|x| x.round()),
        ]
        .prop_map(|x| Some(OwnedValue::Number(x))),
        any::<i64>().prop_map(|i| Some(OwnedValue::Integer(i))),
        (-5i64..130).prop_map(|i| Some(OwnedValue::Integer(i))),
        any::<bool>().prop_map(|b| Some(OwnedValue::Bool(b))),
        "\\PC{0,16}".prop_map(|s| Some(OwnedValue::Text(s))),
    ]
}

/// Rows of the shipped schema's fields (sometimes left out, sometimes with a stray field), the
/// values either the golden row's own or anything at all.
fn rows(schema: &Schema, seed: OwnedRow) -> impl Strategy<Value = Vec<OwnedRow>> {
    let names: Vec<String> = schema.fields().iter().map(|f| f.name.to_string()).collect();
    let row = (
        prop::collection::vec((prop::bool::weighted(0.97), prop::bool::weighted(0.03), value()), names.len()),
        prop::option::weighted(0.1, ("[a-z_]{1,12}", value())),
        "[ -~]{0,8}",
    )
        .prop_map(move |(choices, stray, row_id)| {
            let mut features = Vec::new();
            for ((keep, replace, v), name) in choices.into_iter().zip(&names) {
                let own = seed.features.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
                if let (true, Some(v)) = (keep, if replace { v } else { own }) {
                    features.push((name.clone(), v));
                }
            }
            if let Some((name, Some(v))) = stray {
                features.push((name, v));
            }
            OwnedRow { row_id, features }
        });
    prop::collection::vec(row, 1..6)
}

proptest! {
    #![proptest_config(config(384))]

    #[test]
    fn schemas_parse_or_fail_clearly(text in edited(shipped("v2", "feature_schema.yaml"))) {
        if let Ok(schema) = Schema::parse(&text) {
            // A schema that parses must be usable: encoding a golden row does not panic.
            let _ = preprocess::encode(&schema, &[golden("v2")[0].row.clone()], None);
        }
    }

    #[test]
    fn bundle_configs_parse_or_fail_clearly(text in edited(shipped("v2", "config.yaml"))) {
        let _ = BundleConfig::parse(&text);
    }

    #[test]
    fn golden_files_parse_or_fail_clearly(text in edited(first_lines(&shipped("v2", "golden.jsonl"), 4))) {
        if let Err(e) = golden::parse(&text) {
            prop_assert!(e.to_string().contains("line"), "{e}");
        }
    }

    #[test]
    fn service_configs_load_or_fail_clearly(text in edited(std::fs::read_to_string(repo().join("config/service.yaml")).unwrap())) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("service.yaml");
        std::fs::write(&path, &text).unwrap();
        std::fs::create_dir(dir.path().join("models")).unwrap();
        std::fs::create_dir(dir.path().join("models").join(TASK)).unwrap();
        let args = ServeArgs { config: Some(path), model_root: Some(dir.path().join("models")), ..ServeArgs::default() };
        if let Err(e) = config::load(args) {
            prop_assert!(!e.to_string().is_empty());
        }
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// A manifest is accepted only if every line is `<64 hex>  <plain name>` of a file whose
    /// checksum matches, with every required file listed: a name with a slash (`../x`,
    /// `/etc/passwd`) is refused, never followed.
    #[test]
    fn manifests_are_checked_line_by_line(text in edited(shipped("v2", "MANIFEST.sha256"))) {
        let dir = tempfile::tempdir().unwrap();
        let source = repo_models().join(TASK).join("v2");
        for entry in std::fs::read_dir(&source).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
        }
        std::fs::write(dir.path().join("MANIFEST.sha256"), &text).unwrap();
        match manifest::verify(dir.path()) {
            Ok(verified) => {
                for line in text.lines().filter(|l| !l.trim().is_empty()) {
                    let (digest, name) = line.split_once("  ").unwrap();
                    prop_assert!(!name.contains('/'), "followed {name}");
                    let bytes = std::fs::read(dir.path().join(name)).unwrap();
                    prop_assert!(manifest::sha256_hex(&bytes).eq_ignore_ascii_case(digest));
                }
                for required in manifest::REQUIRED {
                    prop_assert!(verified.files.contains_key(required));
                }
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }
}

proptest! {
    #![proptest_config(config(512))]

    /// Whatever the rows, encoding never panics, and the call's first bad row is the first row
    /// that fails on its own (the stream path): the two paths agree on every row.
    #[test]
    fn rows_encode_the_same_alone_and_together(rows in rows(&v2_schema(), golden("v2")[0].row.clone())) {
        check_rows(&v2_schema(), &rows)?;
    }
}

/// A raw-input schema: the model takes one typed tensor per field.
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
    max: 120
    input: {name: age_in_years, type: int64}
  - name: amount
    type: number
    required: false
    missing_value: .nan
    input: {name: amount, type: float}
  - name: rate
    type: number
    input: {name: rate, type: double}
"#;

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn raw_input_rows_encode_the_same_alone_and_together(rows in rows(&Schema::parse(RAW).unwrap(), raw_seed())) {
        check_rows(&Schema::parse(RAW).unwrap(), &rows)?;
    }
}

fn raw_seed() -> OwnedRow {
    let features = vec![
        ("purpose".to_owned(), OwnedValue::Text("car".into())),
        ("age".to_owned(), OwnedValue::Integer(40)),
        ("amount".to_owned(), OwnedValue::Number(1200.0)),
        ("rate".to_owned(), OwnedValue::Number(0.25)),
    ];
    OwnedRow { row_id: "seed".into(), features }
}

fn v2_schema() -> Schema {
    Schema::parse(&shipped("v2", "feature_schema.yaml")).unwrap()
}

fn check_rows(schema: &Schema, rows: &[OwnedRow]) -> Result<(), TestCaseError> {
    let together = preprocess::encode(schema, rows, None);
    let (input, each) = preprocess::encode_each(schema, rows, None);
    prop_assert_eq!(each.len(), rows.len());
    let first_bad = each.iter().position(Result::is_err);
    let raw = !schema.inputs().is_empty();
    match (&together, first_bad) {
        (Ok(encoded), None) if raw => {
            prop_assert_eq!(encoded.rows, rows.len());
            prop_assert_eq!(encoded.columns.len(), schema.inputs().len());
            prop_assert!(encoded.columns.iter().chain(&input.columns).all(|c| c.len() == rows.len()));
        }
        (Ok(encoded), None) => {
            prop_assert_eq!(encoded.rows, rows.len());
            prop_assert_eq!(encoded.data.len(), rows.len() * schema.width());
            prop_assert_eq!(&encoded.data, &input.data, "both paths give the same input");
            prop_assert!(encoded.data.iter().all(|x| x.is_finite()), "no NaN reaches a model that does not take it");
        }
        (Err(e), Some(bad)) => {
            prop_assert_eq!(e.row_index, bad);
            // Compared as text: a NaN in the reason is not equal to itself.
            prop_assert_eq!(Some(e.to_string()), each[bad].as_ref().err().map(ToString::to_string));
            let message = e.to_string();
            prop_assert!(message.starts_with(&format!("row {bad}")), "{}", message);
            prop_assert!(message.contains("field `"), "{}", message);
            prop_assert!(message.len() < 512, "{}", message);
            // The good rows still form a whole input for the stream path.
            let good = each.iter().filter(|r| r.is_ok()).count();
            prop_assert_eq!(input.rows, good);
            if raw {
                prop_assert!(
                    input.columns.iter().all(|c| c.len() == good),
                    "a bad row was taken back out of every input"
                );
            } else {
                prop_assert_eq!(input.data.len(), good * schema.width());
            }
        }
        (together, first_bad) => {
            prop_assert!(
                false,
                "encode says {:?}, encode_each's first bad row is {:?}",
                together.as_ref().err(),
                first_bad
            );
        }
    }
    Ok(())
}
