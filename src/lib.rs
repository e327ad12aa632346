//! LakeTS: time-series on PostgreSQL with a Delta Lake cold tier, driven by the WAL.
//!
//! The logic lives in the workspace's crates, one per role (README, Development); this
//! crate is the `lakets` command line, and its library re-exports those crates under the
//! paths the tests and embedders use. See `DESIGN.md` in the shared folder for the
//! architecture and its invariants.

pub use error::{Error, Result};
#[cfg(feature = "devtools")]
pub use lakets_bench as bench;
#[cfg(feature = "devtools")]
pub use lakets_bench::{demo, ingest};
pub use lakets_core::coldtier::{resync, sync, verify};
pub use lakets_core::lvc::view as lvc_view;
pub use lakets_core::{catalog, chronotable, jobs, lifecycle, lvc, rollup};
pub use lakets_delta as delta;
pub use lakets_postgres::{db, error, ident, install_crypto_provider, interval};
pub use lakets_server::{config, grpc, http, report, service, status};
#[cfg(feature = "devtools")]
pub use lakets_testkit::embedded;
pub use lakets_wal as wal;

/// The WAL operators, under their earlier paths.
pub mod operators {
    pub use lakets_core::catalog::progress;
    pub use lakets_core::chronotable::tracker as chunk_tracker;
    pub use lakets_core::coldtier::sink as delta_sink;
    pub use lakets_core::lvc::operator as last_value;
    pub use lakets_core::operators::*;
    pub use lakets_core::rollup::invalidations;
}
