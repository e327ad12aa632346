//! The Delta layer: type mapping, Arrow batches, the table itself (exact-base commits,
//! reads a batch at a time through deletion vectors), the protocol lakets writes (checked
//! by lakets itself), change data files and deletion vectors, the per-table mirror that
//! turns a window of WAL changes into one Delta commit, and maintenance. It knows the WAL's
//! values and positions, nothing of lakets' catalog.

pub mod batch;
pub mod change_data;
pub mod deletion_vector;
pub mod maintenance;
pub mod mirror;
pub mod protocol;
pub mod read;
pub mod schema;
pub mod store;
pub mod table;

/// The types of the crates below that this layer's API hands out.
pub use deltalake::DeltaTable;
pub use url::Url;

// The layers below, under the names this crate's modules use.
use lakets_postgres::error;
use lakets_wal as wal;
