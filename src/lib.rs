//! LakeTS: time-series on PostgreSQL with a Delta Lake cold tier, driven by the WAL.
//!
//! The library holds all the logic; the `lakets` binary is a thin command line over it.
//! See `DESIGN.md` in the shared folder for the architecture and its invariants.

pub mod bench;
pub mod catalog;
pub mod chronotable;
pub mod config;
pub mod db;
pub mod delta;
pub mod demo;
pub mod embedded;
pub mod error;
pub mod grpc;
pub mod http;
pub mod ident;
pub mod ingest;
pub mod interval;
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
pub mod wal;

pub use error::{Error, Result};

/// Chooses rustls' process-wide crypto provider: aws-lc-rs, the one lakets' own TLS
/// configurations name. TLS set up without naming one (tonic's server) otherwise panics,
/// because the object store's HTTP client compiles in ring as well and rustls will not
/// guess between the two. Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
