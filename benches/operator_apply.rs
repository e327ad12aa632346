//! The in-memory work of the LVC and invalidation operators per row, as the pipeline hands
//! them a 10,000-row transaction of stock ticks (50 symbols, 1 ms apart), without the SQL
//! they do once per flush:
//! - `lvc`: each row replaces its symbol's cached row; then the changed keys are published
//!   to the served view (as the gRPC API reads it) or not (no service);
//! - `invalidations`: each row marks its 1-minute bucket per symbol; then the buckets are
//!   coalesced into the ranges a flush writes. In order (a live feed) and late (rows
//!   scattered over a day, each bucket its own range).
//!
//! Prints rows/s for each in one run.

use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput, black_box, criterion_group, criterion_main};
use lakets::ident::TableName;
use lakets::lvc::LvcConfig;
use lakets::lvc_view::LvcView;
use lakets::operators::invalidations::{Coalescer, Target};
use lakets::operators::last_value::CacheSet;
use lakets::wal::lsn::Lsn;
use lakets::wal::relation::{Relation, RelationColumn};
use lakets::wal::transaction::Change;
use lakets::wal::value::{ColumnType, Value};

const ROWS: usize = 10_000;
const SYMBOLS: usize = 50;
const T0: i64 = 1_774_000_800_000_000;
const MINUTE: i64 = 60_000_000;

fn relation() -> Arc<Relation> {
    let column = |name: &str, oid: u32, is_key: bool| RelationColumn {
        name: name.into(),
        type_oid: oid,
        type_modifier: -1,
        column_type: ColumnType::from_oid(oid),
        is_key,
    };
    Arc::new(Relation {
        id: 16_384,
        table: TableName::new("public", "stock_ticks"),
        replica_identity: b'd',
        columns: vec![
            column("time", 1184, true),
            column("symbol", 25, true),
            column("price", 701, false),
            column("volume", 20, false),
        ],
    })
}

/// Ticks at `time(i)`, symbols round robin.
fn ticks(mut time: impl FnMut(usize) -> i64) -> Vec<Change> {
    let relation = relation();
    (0..ROWS)
        .map(|i| Change::Insert {
            relation: relation.clone(),
            new: vec![
                Value::Timestamptz(time(i)),
                Value::Text(format!("SYM{:02}", i % SYMBOLS)),
                Value::Float8(100.0 + (i % 1000) as f64 * 0.01),
                Value::Int8(100 + (i % 900) as i64),
            ],
        })
        .collect()
}

fn caches() -> CacheSet {
    let mut caches = CacheSet::default();
    caches.add_empty(LvcConfig {
        table: TableName::new("public", "stock_ticks"),
        time_column: "time".into(),
        key_columns: vec!["symbol".into()],
        value_columns: vec!["price".into(), "volume".into()],
        cache_table: TableName::new("lakets", "lvc_stock_ticks"),
        start_lsn: Lsn::ZERO,
    });
    caches
}

fn coalescer() -> Coalescer {
    let mut c = Coalescer::default();
    c.set_targets([(
        TableName::new("public", "stock_ticks"),
        Target {
            rollup: "ohlcv_1m".into(),
            width: MINUTE,
            time_column: "time".into(),
            group_by: vec!["symbol".into()],
        },
    )]);
    c
}

fn bench(c: &mut Criterion) {
    let in_order = ticks(|i| T0 + i as i64 * 1_000);
    // A deterministic scramble over a day: nearly every row its own bucket.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let late = ticks(|_| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        T0 - (x % (24 * 60 * MINUTE as u64)) as i64
    });

    let mut group = c.benchmark_group("operator_apply");
    group.throughput(Throughput::Elements(ROWS as u64));
    let view = LvcView::new();
    for (name, served) in [("lvc/no_view", None), ("lvc/view", Some(&*view))] {
        group.bench_function(name, |b| {
            let mut caches = caches();
            let mut lsn = 0u64;
            b.iter(|| {
                lsn += 1;
                for change in &in_order {
                    if let Change::Insert { relation, new } = change {
                        caches
                            .apply_new_row(relation, black_box(new), Lsn(lsn))
                            .unwrap();
                    }
                }
                assert!(caches.publish_touched(served, Lsn(lsn)));
                caches.dirty_keys()
            })
        });
    }
    for (name, changes) in [("in_order", &in_order), ("late", &late)] {
        group.bench_with_input(
            BenchmarkId::new("invalidations", name),
            changes,
            |b, changes| {
                let mut coalescer = coalescer();
                b.iter(|| {
                    for change in changes.iter() {
                        coalescer.apply(black_box(change)).unwrap();
                    }
                    let ranges = coalescer.ranges();
                    assert!(!ranges.is_empty());
                    coalescer.clear();
                    ranges.len()
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
