//! The WAL consumer: replication slot and publication, pgoutput decoding, transactions in
//! commit order, and per-operator durable progress.
//!
//! # The replication client
//!
//! Upstream tokio-postgres has no replication mode, and the fork that adds it is not
//! published. Two crates on crates.io were evaluated:
//!
//! - **`pg_walstream` 0.9** (chosen): decodes pgoutput v1 to v4 including binary mode,
//!   keeps the applied and flushed LSNs under our control (it acknowledges nothing on its own
//!   unless its auto-ack helpers are used, which we do not), exports snapshots, offers TLS and
//!   SCRAM, and gives zero-copy access to raw XLogData frames. Actively maintained (frequent
//!   releases), though its API moves between minor versions, hence the `=0.9.0` pin and this
//!   wrapper ([`source`]). Its typed event API is lossy for us (it drops unchanged-TOAST
//!   columns from rows, Truncate relation ids, the sub-transaction id of streamed changes, and
//!   the key-vs-full marker of old rows), so we use only its transport and decode pgoutput
//!   ourselves ([`pgoutput`]): every message kind, no allocation per message.
//! - **`pgwire-replication` 0.5**: transport only (raw XLogData through a worker task and a
//!   bounded channel), no decoder, protocol version 1 only, no exported snapshot. It would
//!   have needed the same decoder plus more of our own plumbing.
//!
//! # Large transactions
//!
//! Streaming of in-progress transactions is not requested: the walsender then sends each
//! transaction after its commit, whole and in commit order, and spills big ones to disk on
//! the server (`logical_decoding_work_mem`). The [`transaction::Assembler`] cuts them into
//! bounded slices, and operators see slices in order, so a 10-million-row transaction
//! streams through in bounded memory with no client-side spill.
//!
//! # Text or binary
//!
//! Both are supported ([`source::SourceSettings::binary`]); binary is the default. It avoids
//! parsing timestamps and numbers from text and does not depend on the walsender session's
//! DateStyle and TimeZone. The benchmarks measure both.

pub mod lsn;
pub mod pgoutput;
pub mod pipeline;
pub mod relation;
pub mod setup;
pub mod source;
pub mod transaction;
pub mod value;

pub use lsn::Lsn;
pub use pipeline::{Pipeline, PipelineConfig, PipelineStatus, run_with_restarts};
pub use source::SourceSettings;
