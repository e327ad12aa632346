//! The cold tier's hot loops, per core: WAL values -> cells, cells -> an Arrow record
//! batch (with the day partition column), and that batch -> a zstd Parquet file in memory.
//! Prints rows/s for each; their ratio shows where the Delta operator's time goes.

use criterion::{Criterion, Throughput, black_box, criterion_group, criterion_main};
use lakets::delta::batch::{CellRow, build_batch};
use lakets::delta::schema::{Cell, Partitioning, TableShape};
use lakets::delta::table::ROW_GROUP_ROWS;
use lakets::wal::value::{ColumnType, Value};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

const ROWS: usize = 100_000;
const SYMBOLS: [&str; 10] = [
    "AAPL", "MSFT", "NVDA", "AMZN", "GOOG", "META", "TSLA", "JPM", "V", "XOM",
];

fn shape() -> TableShape {
    TableShape::new(
        &[
            ("time".into(), ColumnType::Timestamptz, -1),
            ("symbol".into(), ColumnType::Text, -1),
            ("price".into(), ColumnType::Float8, -1),
            ("volume".into(), ColumnType::Int8, -1),
        ],
        "time",
        Partitioning::Day,
    )
    .unwrap()
}

fn ticks() -> Vec<Vec<Value>> {
    (0..ROWS as i64)
        .map(|i| {
            vec![
                Value::Timestamptz(1_795_000_000_000_000 + i * 1_000),
                Value::Text(SYMBOLS[i as usize % 10].into()),
                Value::Float8(100.0 + (i % 1000) as f64 * 0.01),
                Value::Int8(100 + i % 900),
            ]
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let shape = shape();
    let values = ticks();
    let cells: Vec<CellRow> = values
        .iter()
        .map(|row| {
            row.iter()
                .zip(&shape.columns)
                .map(|(v, col)| Cell::from_value(v, col).unwrap())
                .collect()
        })
        .collect();
    let refs: Vec<&CellRow> = cells.iter().collect();
    let batch = build_batch(&shape, &refs).unwrap();

    let mut group = c.benchmark_group("delta_write");
    group.throughput(Throughput::Elements(ROWS as u64));
    group.bench_function("wal_values_to_cells", |b| {
        b.iter(|| {
            let out: Vec<CellRow> = values
                .iter()
                .map(|row| {
                    row.iter()
                        .zip(&shape.columns)
                        .map(|(v, col)| Cell::from_value(v, col).unwrap())
                        .collect()
                })
                .collect();
            black_box(out)
        })
    });
    group.bench_function("arrow_batch_build", |b| {
        b.iter(|| black_box(build_batch(&shape, black_box(&refs)).unwrap()))
    });
    group.bench_function("parquet_encode_zstd", |b| {
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).unwrap()))
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
            .build();
        b.iter(|| {
            let mut buf = Vec::with_capacity(4 << 20);
            let mut w =
                ArrowWriter::try_new(&mut buf, batch.schema(), Some(props.clone())).unwrap();
            w.write(&batch).unwrap();
            w.close().unwrap();
            black_box(buf.len())
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = bench
}
criterion_main!(benches);
