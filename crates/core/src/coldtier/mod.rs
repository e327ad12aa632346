//! The cold tier: a Delta table per synced ChronoTable, kept exact by the WAL.
//!
//! [`sync`] registers a table and copies its [`snapshot`], [`sink`] is the operator that
//! mirrors every change in lakets' own commits, [`resync`] re-copies after a stream gap,
//! and [`verify`] compares the Delta table with PostgreSQL.

pub mod resync;
pub mod sink;
pub mod snapshot;
pub mod sync;
pub mod verify;
