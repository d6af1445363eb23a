//! Parsing and checking large schemas: the cost per entry of a 40,000-entry enum and record
//! against a 4,000-entry one, in the same run (1.0 is linear; the scan of a list per entry that
//! the parser once made put the enum at about 6).
//!
//! Run with `cargo bench -p tripstream-streams --bench schema`; the last line prints the ratios.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;
use streams::avro::compat::{self, Level};
use streams::avro::schema::Schema;

fn enum_of(symbols: usize) -> String {
    let symbols: Vec<String> = (0..symbols).map(|i| format!("S{i}")).collect();
    json!({"type": "enum", "name": "E", "symbols": symbols}).to_string()
}

fn record_of(fields: usize) -> String {
    let fields: Vec<_> = (0..fields)
        .map(|i| json!({"name": format!("f{i}"), "type": "int", "default": 0}))
        .collect();
    json!({"type": "record", "name": "R", "fields": fields}).to_string()
}

/// The best of five timings of `f`: a shared machine adds noise only upwards.
fn best(f: &mut dyn FnMut()) -> Duration {
    (0..5)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .min()
        .unwrap_or_default()
}

fn bench(c: &mut Criterion) {
    let (small_enum, large_enum) = (enum_of(4_000), enum_of(40_000));
    let (small_record, large_record) = (record_of(4_000), record_of(40_000));
    let mut group = c.benchmark_group("schema");
    group.sample_size(10);
    group.bench_function("parse enum of 40,000 symbols", |b| {
        b.iter(|| Schema::parse(black_box(&large_enum)).expect("valid"))
    });
    group.bench_function("parse record of 40,000 fields", |b| {
        b.iter(|| Schema::parse(black_box(&large_record)).expect("valid"))
    });
    let record = Schema::parse(&large_record).expect("valid");
    group.bench_function("check record of 40,000 fields, FULL", |b| {
        b.iter(|| compat::check(Level::Full, black_box(&record), &[&record]))
    });
    group.finish();

    // Per entry, large against small: the large has ten times the entries.
    let per_entry = |small: &str, large: &str| {
        let small = best(&mut || drop(black_box(Schema::parse(small))));
        let large = best(&mut || drop(black_box(Schema::parse(large))));
        large.as_secs_f64() / small.as_secs_f64() / 10.0
    };
    let check = |text: &str| {
        let schema = Schema::parse(text).expect("valid");
        best(&mut || drop(black_box(compat::check(Level::Full, &schema, &[&schema]))))
    };
    let enums = per_entry(&small_enum, &large_enum);
    let records = per_entry(&small_record, &large_record);
    let checks = check(&large_record).as_secs_f64() / check(&small_record).as_secs_f64() / 10.0;
    println!(
        "ratio per entry, 40,000 against 4,000: parse enum {enums:.1}, parse record {records:.1}, check record {checks:.1}"
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
