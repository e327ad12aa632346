//! LakeTS: time-series on PostgreSQL with a Delta Lake cold tier, driven by the WAL.
//!
//! The library holds all the logic; the `lakets` binary is a thin command line over it.
//! See `DESIGN.md` in the shared folder for the architecture and its invariants.

pub mod bench;
pub mod catalog;
pub mod chronotable;
pub mod config;
pub mod demo;
pub mod grpc;
pub mod http;
pub mod ingest;
pub mod jobs;
pub mod lifecycle;
pub mod lvc;
pub mod lvc_view;
pub mod operators;
pub mod report;
pub mod resync;
pub mod rollup;
pub mod service;
pub mod status;
pub mod sync;
pub mod verify;

pub use error::{Error, Result};
pub use lakets_delta as delta;
pub use lakets_postgres::{db, error, ident, install_crypto_provider, interval};
pub use lakets_testkit::embedded;
pub use lakets_wal as wal;
