//! The cold tier's Delta Lake side: type mapping, Arrow batches, the table itself, and the
//! per-table mirror that turns a window of WAL changes into one Delta commit.

pub mod batch;
pub mod maintenance;
pub mod mirror;
pub mod read;
pub mod schema;
pub mod table;
