//! In-process cost of one Predict's domain work: preprocessing plus the ONNX run, no transport.
//!
//! `cargo bench --bench inprocess` (needs the ONNX Runtime library: `make ort`).

use std::path::Path;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use modeld::{
    bundle::{Bundle, LoadOptions, golden},
    config, engine,
};

fn load(version: &str) -> (Bundle, Vec<modeld::preprocess::OwnedRow>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/credit_risk").join(version);
    let bundle = Bundle::load(&dir, &LoadOptions::default()).expect("shipped bundle loads");
    let text = std::fs::read_to_string(dir.join("golden.jsonl")).unwrap();
    let rows = golden::parse(&text).unwrap().into_iter().map(|g| g.row).collect();
    (bundle, rows)
}

fn predict(c: &mut Criterion) {
    engine::init(&config::default_ort_library()).expect("ONNX Runtime library");
    let mut group = c.benchmark_group("predict");
    for version in ["v1", "v2"] {
        let (bundle, rows) = load(version);
        for batch in [1usize, 256] {
            let batch_rows: Vec<_> = rows.iter().cycle().take(batch).cloned().collect();
            group.throughput(Throughput::Elements(batch as u64));
            group.bench_with_input(
                BenchmarkId::new(format!("{version}/preprocess+run"), batch),
                &batch_rows,
                |b, rows| {
                    b.iter(|| {
                        let input = bundle.prepare(rows).unwrap();
                        bundle.score(&input, |_, s| s.probabilities[1]).unwrap()
                    })
                },
            );
            let input = bundle.prepare(&batch_rows).unwrap();
            group.bench_with_input(BenchmarkId::new(format!("{version}/run-only"), batch), &input, |b, input| {
                b.iter(|| bundle.score(input, |_, s| s.probabilities[1]).unwrap())
            });
        }
    }
    group.finish();
}

criterion_group!(benches, predict);
criterion_main!(benches);
