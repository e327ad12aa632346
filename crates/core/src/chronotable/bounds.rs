//! Chunk bounds: pure arithmetic on microseconds since the Unix epoch (UTC).
//!
//! A chunk starts and ends on a multiple of the chunk interval counted from the epoch,
//! except the one "bridge" chunk after an interval change, which starts where the last
//! chunk ended and runs to the next boundary of the new interval: no gap, no overlap.

use chrono::{DateTime, Utc};

use crate::catalog::registry::TimeType;
use crate::error::{Error, Result};
use crate::interval::{Interval, MICROS_PER_DAY, MICROS_PER_SECOND};

/// Refuses chunk counts that would bury the catalog (a 1-second interval over a year of data).
pub const MAX_CHUNKS_PER_OPERATION: usize = 10_000;

/// Smallest and largest chunk intervals accepted.
pub const MIN_CHUNK_INTERVAL: Interval = Interval::from_secs(1);
pub const MAX_CHUNK_INTERVAL: Interval = Interval::days(3660);

/// A half-open time range `[start, end)` in microseconds since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkRange {
    pub start: i64,
    pub end: i64,
}

impl ChunkRange {
    pub fn contains(&self, t: i64) -> bool {
        self.start <= t && t < self.end
    }
}

/// The largest multiple of `interval` (from the epoch) not after `t`.
pub fn align_down(t: i64, interval: Interval) -> i64 {
    let step = interval.as_micros();
    t.div_euclid(step) * step
}

/// Checks that an interval can serve as the chunk interval of a column of this type.
pub fn validate_chunk_interval(interval: Interval, time_type: TimeType) -> Result<()> {
    if interval < MIN_CHUNK_INTERVAL || interval > MAX_CHUNK_INTERVAL {
        return Err(Error::invalid(format!(
            "chunk interval {interval} is out of range: it must be between {MIN_CHUNK_INTERVAL} \
             and {MAX_CHUNK_INTERVAL}"
        )));
    }
    if interval.as_micros() % MICROS_PER_SECOND != 0 {
        return Err(Error::invalid(format!(
            "chunk interval {interval} must be a whole number of seconds (chunk names carry \
             second precision)"
        )));
    }
    if time_type == TimeType::Date && interval.as_micros() % MICROS_PER_DAY != 0 {
        return Err(Error::invalid(format!(
            "chunk interval {interval} does not fit a date column: it must be a whole number \
             of days"
        )));
    }
    Ok(())
}

/// How many chunks [`chunks_covering`] would return, computed without building them.
pub fn count_covering(from: i64, to: i64, interval: Interval) -> u64 {
    if from >= to {
        return 0;
    }
    let step = interval.as_micros() as i128;
    let first = align_down(from, interval) as i128;
    ((to as i128 - first + step - 1) / step) as u64
}

/// Contiguous chunks covering `[from, to)`: the first may start off-boundary (a bridge),
/// every later one runs from boundary to boundary.
pub fn chunks_covering(from: i64, to: i64, interval: Interval) -> Vec<ChunkRange> {
    let mut out = Vec::new();
    let mut cursor = from;
    while cursor < to {
        let end = align_down(cursor, interval) + interval.as_micros();
        out.push(ChunkRange { start: cursor, end });
        cursor = end;
    }
    out
}

/// The rolling window kept provisioned: one past chunk, the current one, `premake` future.
pub fn window(now: i64, interval: Interval, premake: i32) -> ChunkRange {
    let current = align_down(now, interval);
    let step = interval.as_micros();
    ChunkRange {
        start: current - step,
        end: current + (i64::from(premake) + 1) * step,
    }
}

/// The chunks to create so that the window around `now` is covered, continuing from the
/// end of the newest existing chunk (if it reaches into the window).
pub fn plan_window_chunks(
    newest_end: Option<i64>,
    now: i64,
    interval: Interval,
    premake: i32,
) -> Vec<ChunkRange> {
    let w = window(now, interval, premake);
    // Continue from the newest chunk so that late rows always have a home; after a very
    // long outage (more chunks than the cap), restart at the window instead.
    let from = match newest_end {
        Some(end) if end >= w.start => end,
        Some(end) if count_covering(end, w.end, interval) <= MAX_CHUNKS_PER_OPERATION as u64 => end,
        _ => w.start,
    };
    chunks_covering(from, w.end, interval)
}

pub fn to_datetime(micros: i64) -> Result<DateTime<Utc>> {
    DateTime::<Utc>::from_timestamp_micros(micros)
        .ok_or_else(|| Error::invalid(format!("time {micros} us since the epoch is out of range")))
}

/// `<table>_YYYYMMDD_HHMMSS` of the chunk start (UTC).
pub fn chunk_name(table: &str, start: i64) -> Result<String> {
    let ts = to_datetime(start)?;
    Ok(format!("{table}_{}", ts.format("%Y%m%d_%H%M%S")))
}

/// Checks that chunk names derived from this table name fit PostgreSQL's identifier limit.
pub fn validate_table_name_for_chunks(table: &str) -> Result<()> {
    const SUFFIX: usize = "_YYYYMMDD_HHMMSS".len();
    let max = crate::ident::MAX_IDENT_BYTES - SUFFIX;
    if table.len() > max {
        return Err(Error::invalid(format!(
            "table name {table:?} is {} bytes long; chunk names append a {SUFFIX}-byte suffix, \
             so a ChronoTable's name may be at most {max} bytes",
            table.len()
        )));
    }
    Ok(())
}

/// A literal for a partition bound of a column of this type (our own numbers, never user
/// text). Years outside 1..=9999 are refused: they have no `YYYYMMDD` chunk name.
pub fn bound_literal(time_type: TimeType, micros: i64) -> Result<String> {
    let ts = to_datetime(micros)?;
    let year = chrono::Datelike::year(&ts);
    if !(1..=9999).contains(&year) {
        return Err(Error::invalid(format!(
            "time {ts} is outside the years 1 to 9999 that chunks can cover"
        )));
    }
    Ok(match time_type {
        TimeType::Timestamptz => format!("'{}'", ts.format("%Y-%m-%d %H:%M:%S%.6f+00")),
        TimeType::Timestamp => format!("'{}'", ts.format("%Y-%m-%d %H:%M:%S%.6f")),
        TimeType::Date => format!("'{}'", ts.format("%Y-%m-%d")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HOUR: Interval = Interval::hours(1);
    const DAY: Interval = Interval::days(1);

    fn micros(rfc3339: &str) -> i64 {
        DateTime::parse_from_rfc3339(rfc3339)
            .unwrap()
            .timestamp_micros()
    }

    #[test]
    fn alignment_is_utc_and_dst_free() {
        // 2026-03-29 is the EU DST switch; UTC alignment does not care.
        let t = micros("2026-03-29T01:30:00Z");
        assert_eq!(align_down(t, DAY), micros("2026-03-29T00:00:00Z"));
        assert_eq!(align_down(t, HOUR), micros("2026-03-29T01:00:00Z"));
        // 7-day chunks align to the epoch, a Thursday.
        assert_eq!(
            align_down(micros("2026-03-23T12:00:00Z"), Interval::days(7)),
            micros("2026-03-19T00:00:00Z")
        );
        // Before the epoch, alignment still goes down.
        assert_eq!(
            align_down(micros("1969-12-31T23:00:00Z"), DAY),
            micros("1969-12-31T00:00:00Z")
        );
    }

    #[test]
    fn window_is_one_past_current_and_premake_future() {
        let now = micros("2026-03-23T10:15:00Z");
        let w = window(now, DAY, 2);
        assert_eq!(w.start, micros("2026-03-22T00:00:00Z"));
        assert_eq!(w.end, micros("2026-03-26T00:00:00Z"));
        assert_eq!(plan_window_chunks(None, now, DAY, 2).len(), 4);
    }

    #[test]
    fn bridge_chunk_after_interval_change() {
        // Daily chunks up to Mar 24, then 7-day chunks: bridge to the next Thursday.
        let last_end = micros("2026-03-24T00:00:00Z");
        let now = micros("2026-03-23T10:00:00Z");
        let plan = plan_window_chunks(Some(last_end), now, Interval::days(7), 1);
        assert_eq!(plan[0].start, last_end);
        assert_eq!(plan[0].end, micros("2026-03-26T00:00:00Z"));
        assert_eq!(plan[1].start, micros("2026-03-26T00:00:00Z"));
        assert_eq!(plan[1].end, micros("2026-04-02T00:00:00Z"));
    }

    #[test]
    fn gaps_after_downtime_are_filled_up_to_the_cap() {
        let now = micros("2026-03-23T10:00:00Z");
        let plan = plan_window_chunks(Some(micros("2026-03-20T00:00:00Z")), now, DAY, 1);
        assert_eq!(plan[0].start, micros("2026-03-20T00:00:00Z"));
        let long_ago = plan_window_chunks(Some(micros("1990-01-01T00:00:00Z")), now, HOUR, 1);
        assert_eq!(long_ago[0].start, micros("2026-03-23T09:00:00Z"));
        assert_eq!(count_covering(0, 10 * 3_600_000_000, HOUR), 10);
        assert_eq!(count_covering(1, 3_600_000_000, HOUR), 1);
        assert_eq!(count_covering(5, 5, HOUR), 0);
    }

    #[test]
    fn names_and_literals() {
        let start = micros("2026-03-20T00:00:00Z");
        assert_eq!(
            chunk_name("metrics", start).unwrap(),
            "metrics_20260320_000000"
        );
        assert_eq!(
            bound_literal(TimeType::Timestamptz, start).unwrap(),
            "'2026-03-20 00:00:00.000000+00'"
        );
        assert_eq!(
            bound_literal(TimeType::Date, start).unwrap(),
            "'2026-03-20'"
        );
        assert!(bound_literal(TimeType::Timestamp, micros("0000-06-01T00:00:00Z")).is_err());
    }

    #[test]
    fn interval_validation() {
        assert!(validate_chunk_interval(HOUR, TimeType::Timestamptz).is_ok());
        assert!(validate_chunk_interval(HOUR, TimeType::Date).is_err());
        assert!(validate_chunk_interval(DAY, TimeType::Date).is_ok());
        assert!(validate_chunk_interval(Interval::from_micros(500), TimeType::Timestamp).is_err());
        assert!(validate_chunk_interval(Interval::days(10_000), TimeType::Timestamp).is_err());
        assert!(validate_table_name_for_chunks(&"x".repeat(47)).is_ok());
        assert!(validate_table_name_for_chunks(&"x".repeat(48)).is_err());
    }

    proptest! {
        #[test]
        fn covering_chunks_are_contiguous_and_aligned(
            from in -1_000_000_000_000_000i64..1_000_000_000_000_000,
            len in 0i64..100_000_000_000,
            secs in 1i64..1_000_000,
        ) {
            let interval = Interval::from_secs(secs);
            let to = from + len;
            let chunks = chunks_covering(from, to, interval);
            if len == 0 { prop_assert!(chunks.is_empty()); }
            let mut cursor = from;
            for (i, c) in chunks.iter().enumerate() {
                prop_assert_eq!(c.start, cursor);
                prop_assert!(c.end > c.start);
                prop_assert_eq!(c.end % interval.as_micros(), 0);
                if i > 0 { prop_assert_eq!(c.start % interval.as_micros(), 0); }
                prop_assert!(c.end - c.start <= interval.as_micros());
                cursor = c.end;
            }
            if len > 0 { prop_assert!(cursor >= to && cursor - interval.as_micros() < to); }
        }

        #[test]
        fn every_time_maps_to_exactly_one_window_chunk(
            now in 0i64..4_000_000_000_000_000,
            offset in -86_400_000_000i64..86_400_000_000,
            secs in 60i64..86_400,
            premake in 0i32..5,
        ) {
            let interval = Interval::from_secs(secs);
            let chunks = plan_window_chunks(None, now, interval, premake);
            let w = window(now, interval, premake);
            let t = now + offset;
            let hits = chunks.iter().filter(|c| c.contains(t)).count();
            prop_assert_eq!(hits, usize::from(w.contains(t)));
        }
    }
}
