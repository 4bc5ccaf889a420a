//! In-process cost of one Predict's domain work: preprocessing plus the ONNX run, no transport.
//!
//! `cargo bench --bench inprocess` (needs the ONNX Runtime library: `make ort`) measures the
//! shipped v1 and v2; `INPROCESS_BUNDLES=label=DIR,label=DIR` measures those version directories
//! instead (python/bench/serve_exported.py uses it to set a schema-form bundle beside a raw-input
//! one).

use std::path::{Path, PathBuf};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use modeld::{
    bundle::{Bundle, LoadOptions, golden},
    config, engine,
};

fn load(dir: &Path) -> (Bundle, Vec<modeld::preprocess::OwnedRow>) {
    let bundle = Bundle::load(dir, &LoadOptions::default()).expect("the bundle loads");
    let text = std::fs::read_to_string(dir.join("golden.jsonl")).unwrap();
    // Rows that send every field: what a caller usually sends.
    let rows: Vec<_> = golden::parse(&text).unwrap().into_iter().map(|g| g.row).collect();
    let full = rows.iter().map(|r| r.features.len()).max().unwrap_or(0);
    (bundle, rows.into_iter().filter(|r| r.features.len() == full).collect())
}

fn bundles() -> Vec<(String, PathBuf)> {
    match std::env::var("INPROCESS_BUNDLES") {
        Ok(list) => list
            .split(',')
            .map(|entry| {
                let (label, dir) = entry.split_once('=').expect("INPROCESS_BUNDLES entries are label=DIR");
                (label.to_owned(), PathBuf::from(dir))
            })
            .collect(),
        Err(_) => ["v1", "v2"]
            .map(|v| (v.to_owned(), Path::new(env!("CARGO_MANIFEST_DIR")).join("models/credit_risk").join(v)))
            .into(),
    }
}

fn predict(c: &mut Criterion) {
    engine::init(&config::default_ort_library()).expect("ONNX Runtime library");
    let mut group = c.benchmark_group("predict");
    for (version, dir) in bundles() {
        let (bundle, rows) = load(&dir);
        for batch in [1usize, 256] {
            let batch_rows: Vec<_> = rows.iter().cycle().take(batch).cloned().collect();
            group.throughput(Throughput::Elements(batch as u64));
            group.bench_with_input(
                BenchmarkId::new(format!("{version}/preprocess+run"), batch),
                &batch_rows,
                |b, rows| {
                    b.iter(|| {
                        let input = bundle.prepare(rows).unwrap();
                        bundle.score(&input, |_, s| s.class).unwrap()
                    })
                },
            );
            let input = bundle.prepare(&batch_rows).unwrap();
            group.bench_with_input(BenchmarkId::new(format!("{version}/run-only"), batch), &input, |b, input| {
                b.iter(|| bundle.score(input, |_, s| s.class).unwrap())
            });
        }
    }
    group.finish();
}

criterion_group!(benches, predict);
criterion_main!(benches);
