//! The WAL consumer: replication slot and publication, pgoutput decoding, transactions in
//! commit order, and per-operator durable progress.
//!
//! # The replication client
//!
//! Upstream tokio-postgres has no replication mode, and the fork that adds it is not
//! published. lakets speaks the streaming replication protocol itself ([`source`]), with
//! the message encoders and SCRAM of `postgres-protocol` (the crate under tokio-postgres)
//! and the same rustls configuration as the SQL connections, over TCP or the server's
//! Unix socket. That keeps what is acknowledged under our control only, and memory bounded
//! whatever a frame holds (a huge logical message from any role is skipped as it arrives,
//! never held). It replaced `pg_walstream` 0.9, whose transport held every frame whole (and
//! refused one over 128 MiB, which then came again at every restart), spoke TCP only, and
//! brought a second TLS stack. pgoutput itself is decoded by lakets ([`pgoutput`]): every
//! message kind, no allocation per message.
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
