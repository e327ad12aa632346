//! The integration tests that can share one embedded PostgreSQL cluster, in one binary:
//! each test has a database of its own, and none changes the cluster's settings, restarts
//! it or measures this process's memory. The rest have binaries of their own, saying why
//! at their top (chaos and wal_restart crash the server; slot_invalidation, tls and
//! wal_large change server settings; delta_large, security and wal_large measure RSS;
//! wal_crash re-executes itself as the consumer; service counts the process's restarts).

#[path = "../common/mod.rs"]
mod common;

mod bad_input;
mod bench;
mod chronotable;
mod cli;
mod dashboard;
mod delta_cdf;
mod delta_interop;
mod delta_sync;
mod embedded;
mod lvc;
mod metrics;
mod rollup;
mod tiering;
mod wal_decode;
mod wal_pipeline;
mod wal_schema;
mod wal_setup;
