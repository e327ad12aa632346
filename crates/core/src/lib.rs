//! lakets' features, each beside its admin code and its WAL operator:
//!
//! - [`catalog`]: the `lakets` schema (migrations, registries, progress, announcements,
//!   replication bookkeeping), the only home of `lakets._*` SQL;
//! - [`chronotable`]: time-partitioned tables and their chunks, and the chunk tracker;
//! - [`rollup`]: the OHLCV rollup DAG, its refresh and the invalidation log operator;
//! - [`lvc`]: the Last Value Cache, its in-memory view and its operator;
//! - [`coldtier`]: the Delta mirror (sync, the sink operator, resync, verify);
//! - [`lifecycle`] and [`jobs`]: tiering and retention through the durability gate, and the
//!   scheduler that runs them;
//! - [`operators`]: the one list of WAL operators a pipeline runs.

pub mod catalog;
pub mod chronotable;
pub mod coldtier;
pub mod jobs;
pub mod lifecycle;
pub mod lvc;
pub mod operators;
pub mod rollup;

// The layers below, under the names this crate's modules use.
pub use lakets_delta as delta;
pub use lakets_postgres::{db, error, ident, install_crypto_provider, interval};
pub use lakets_wal as wal;

pub use error::{Error, Result};
