//! ChronoTables: ordinary PostgreSQL tables range-partitioned by time into chunks.
//!
//! The functions keep the spec's names: [`create_chronotable`], [`ensure_partitions`]
//! (`_ensure_partitions`), [`show_chunks`], [`set_chunk_interval`], [`drop_chunks`] and
//! [`drop_chronotable`]. Chunk bounds are aligned to the interval from the Unix epoch in
//! UTC (see [`bounds`]), chunk names are `<table>_YYYYMMDD_HHMMSS` of the chunk start, and
//! every chunk is recorded in `lakets._chunk_metadata`.

pub mod bounds;
pub mod chunk_map;
mod chunks;
mod create;
pub mod introspect;
pub mod partitions;
pub mod replica_identity;
pub mod tracker;

pub use chunks::{DropReport, drop_chronotable, drop_chunks, set_chunk_interval, show_chunks};
pub use create::{
    CreateOptions, CreateReport, DEFAULT_CHUNK_INTERVAL, DEFAULT_PREMAKE, create_chronotable,
};
pub use partitions::{EnsureReport, ensure_partitions};
