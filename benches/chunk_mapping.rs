//! Row time -> chunk lookups, the chunk tracker's per-row work: in-order ticks (the common
//! case, served by the last-hit check) and shuffled late rows (binary search), over a year
//! of hourly chunks. Prints rows/s; compare the two in one run.

use criterion::{BenchmarkId, Criterion, Throughput, black_box, criterion_group, criterion_main};
use lakets::chronotable::bounds::{ChunkRange, chunks_covering};
use lakets::chronotable::chunk_map::ChunkMap;
use lakets::interval::{Interval, MICROS_PER_HOUR};

const ROWS: usize = 100_000;

fn year_of_hourly_chunks() -> ChunkMap {
    let ranges: Vec<ChunkRange> =
        chunks_covering(0, 365 * 24 * MICROS_PER_HOUR, Interval::hours(1));
    ChunkMap::new(ranges)
}

fn bench(c: &mut Criterion) {
    let map = year_of_hourly_chunks();
    let span = 365 * 24 * MICROS_PER_HOUR;
    // In order: 100k ticks spread over the last day.
    let in_order: Vec<i64> = (0..ROWS as i64)
        .map(|i| span - 24 * MICROS_PER_HOUR + i * (24 * MICROS_PER_HOUR / ROWS as i64))
        .collect();
    // Late rows: a deterministic scramble over the whole year.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let scattered: Vec<i64> = (0..ROWS)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % span as u64) as i64
        })
        .collect();

    let mut group = c.benchmark_group("chunk_map_locate");
    group.throughput(Throughput::Elements(ROWS as u64));
    for (name, times) in [("in_order", &in_order), ("scattered", &scattered)] {
        group.bench_with_input(BenchmarkId::from_parameter(name), times, |b, times| {
            b.iter(|| {
                let mut found = 0usize;
                for &t in times.iter() {
                    found += map.locate(black_box(t)).is_some() as usize;
                }
                assert_eq!(found, ROWS);
                found
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
