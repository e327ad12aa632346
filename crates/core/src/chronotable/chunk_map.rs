//! Maps a row's time to its chunk, in memory: the chunk tracker does this for every row
//! it sees in the WAL, so it is a hot loop.
//!
//! Chunks are sorted, non-overlapping half-open ranges (not always of one length: interval
//! changes leave bridge chunks), so a lookup is a binary search. Ticks arrive mostly in
//! time order and land in the chunk of the previous row, which is checked first.

use std::cell::Cell;

use super::bounds::ChunkRange;

#[derive(Debug, Clone, Default)]
pub struct ChunkMap {
    ranges: Vec<ChunkRange>,
    last_hit: Cell<usize>,
}

impl ChunkMap {
    /// Builds a map from ranges in any order. Overlapping ranges are a caller bug.
    pub fn new(mut ranges: Vec<ChunkRange>) -> Self {
        ranges.sort_by_key(|r| r.start);
        debug_assert!(ranges.windows(2).all(|w| w[0].end <= w[1].start));
        ChunkMap {
            ranges,
            last_hit: Cell::new(0),
        }
    }

    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    pub fn ranges(&self) -> &[ChunkRange] {
        &self.ranges
    }

    /// The index of the chunk holding `t` (microseconds since the epoch), if any.
    #[inline]
    pub fn locate(&self, t: i64) -> Option<usize> {
        let hint = self.last_hit.get();
        if let Some(r) = self.ranges.get(hint)
            && r.contains(t)
        {
            return Some(hint);
        }
        // First range whose end is after t; it holds t if it starts at or before t.
        let i = self.ranges.partition_point(|r| r.end <= t);
        match self.ranges.get(i) {
            Some(r) if r.start <= t => {
                self.last_hit.set(i);
                Some(i)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn r(start: i64, end: i64) -> ChunkRange {
        ChunkRange { start, end }
    }

    #[test]
    fn finds_chunks_across_gaps_and_uneven_lengths() {
        let map = ChunkMap::new(vec![r(20, 30), r(0, 10), r(30, 35), r(35, 100)]);
        assert_eq!(map.locate(0), Some(0));
        assert_eq!(map.locate(9), Some(0));
        assert_eq!(map.locate(10), None, "gap between 10 and 20");
        assert_eq!(map.locate(29), Some(1));
        assert_eq!(map.locate(30), Some(2));
        assert_eq!(map.locate(99), Some(3));
        assert_eq!(map.locate(100), None);
        assert_eq!(map.locate(-1), None);
        assert_eq!(ChunkMap::default().locate(5), None);
    }

    proptest! {
        #[test]
        fn agrees_with_a_linear_scan(
            lens in proptest::collection::vec((0i64..5, 1i64..50), 0..40),
            probes in proptest::collection::vec(-10i64..2_000, 1..200),
        ) {
            let mut ranges = Vec::new();
            let mut cursor = 0;
            for (gap, len) in lens {
                cursor += gap;
                ranges.push(r(cursor, cursor + len));
                cursor += len;
            }
            let map = ChunkMap::new(ranges.clone());
            for t in probes {
                let expected = ranges.iter().position(|c| c.contains(t));
                prop_assert_eq!(map.locate(t), expected);
            }
        }
    }
}
