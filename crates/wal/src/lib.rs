//! The WAL layer: the replication slot and publication, the replication protocol, pgoutput
//! decoding, transactions in commit order, the operator contract and the pipeline that runs
//! operators (fan-out, acknowledgement, restarts, lag). It knows no lakets feature and none
//! of lakets' catalog: what a stream's owner checks and records before it starts comes in
//! as a [`pipeline::Preparation`].
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
pub mod operator;
pub mod pgoutput;
pub mod pipeline;
pub mod relation;
pub mod slot;
pub mod source;
pub mod transaction;
pub mod value;

// The ground this layer stands on, under the names its modules use.
use lakets_postgres::{db, error, ident};

pub use lsn::Lsn;
pub use operator::Operator;
pub use pipeline::{Pipeline, PipelineConfig, PipelineStatus, Preparation, run_with_restarts};
pub use source::SourceSettings;
