//! pgoutput decoding per core, text vs binary, on stock-tick Insert messages in the exact
//! wire format (the decoder's tests check that format against a real PostgreSQL):
//! - `decode`: message framing and a walk over the columns (zero-copy);
//! - `assemble`: the same plus typed values and owned rows, as operators receive them.
//!
//! Prints rows/s for each in one run.

use criterion::{BenchmarkId, Criterion, Throughput, black_box, criterion_group, criterion_main};
use lakets::wal::pgoutput::{Decoder, Message, encode};
use lakets::wal::transaction::{Assembled, Assembler};

const ROWS: usize = 10_000;
const REL: u32 = 16_384;
const T0: i64 = 1_774_000_800_000_000;

fn tick(i: usize, binary: bool) -> Vec<u8> {
    let symbols = ["AAPL", "MSFT", "NVDA", "AMZN", "GOOG"];
    let micros = T0 + i as i64 * 1_000;
    let price = 100.0 + (i % 1000) as f64 * 0.01;
    let volume = 100 + (i % 900) as i64;
    if binary {
        let t = (micros - lakets::wal::pgoutput::PG_EPOCH_OFFSET_MICROS).to_be_bytes();
        let p = price.to_be_bytes();
        let v = volume.to_be_bytes();
        encode::insert(
            REL,
            &[
                Some((b'b', &t)),
                Some((b'b', symbols[i % 5].as_bytes())),
                Some((b'b', &p)),
                Some((b'b', &v)),
            ],
        )
    } else {
        let ts = chrono::DateTime::from_timestamp_micros(micros)
            .unwrap()
            .format("%Y-%m-%d %H:%M:%S%.6f+00")
            .to_string();
        let p = format!("{price}");
        let v = volume.to_string();
        encode::insert(
            REL,
            &[
                Some((b't', ts.as_bytes())),
                Some((b't', symbols[i % 5].as_bytes())),
                Some((b't', p.as_bytes())),
                Some((b't', v.as_bytes())),
            ],
        )
    }
}

fn transaction(binary: bool) -> Vec<Vec<u8>> {
    let mut msgs = vec![
        encode::begin(0x1000, T0, 7),
        encode::relation(
            REL,
            "public",
            "stock_ticks",
            b'f',
            &[
                ("time", 1184, false),
                ("symbol", 25, false),
                ("price", 701, false),
                ("volume", 20, false),
            ],
        ),
    ];
    msgs.extend((0..ROWS).map(|i| tick(i, binary)));
    msgs.push(encode::commit(0x2000, 0x2010, T0));
    msgs
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("pgoutput");
    group.throughput(Throughput::Elements(ROWS as u64));
    for binary in [false, true] {
        let mode = if binary { "binary" } else { "text" };
        let msgs = transaction(binary);
        group.bench_with_input(BenchmarkId::new("decode", mode), &msgs, |b, msgs| {
            b.iter(|| {
                let mut d = Decoder::new();
                let mut cols = 0usize;
                for m in msgs {
                    if let Message::Insert { new, .. } = d.decode(black_box(m)).unwrap() {
                        cols += new.columns().count();
                    }
                }
                assert_eq!(cols, ROWS * 4);
                cols
            })
        });
        group.bench_with_input(BenchmarkId::new("assemble", mode), &msgs, |b, msgs| {
            b.iter(|| {
                let mut a = Assembler::new(binary, 1024);
                let mut rows = 0usize;
                for m in msgs {
                    if let Some(Assembled::Slice(s)) = a.push(black_box(m)).unwrap() {
                        rows += s.changes.len();
                    }
                }
                assert_eq!(rows, ROWS + 1); // the rows and the schema event
                rows
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
