//! WAL operators: each receives whole transactions in commit order (as bounded slices) and
//! makes their effects durable together with the end LSN of the last one it applied (the
//! contract: [`lakets_wal::operator`]).

pub mod chunk_tracker;
pub mod delta_sink;
pub mod invalidations;
pub mod last_value;
pub mod progress;

use crate::error::{PgResultExt, Result};

/// Prepares an operator's SQL session: a stuck lock fails the flush (and restarts the
/// pipeline) instead of hanging it, and every commit is durable before it returns. With a
/// database or role default of `synchronous_commit = off`, a flush could report a position
/// durable that a PostgreSQL crash then loses, and the slot would be confirmed past it.
pub async fn prepare_session(client: &tokio_postgres::Client, operator: &str) -> Result<()> {
    // Set again: the client may come from a caller that did not open it through
    // `crate::db`.
    client
        .batch_execute(&format!(
            "SET lock_timeout = '10s'; {}",
            crate::db::session_set_statements()
        ))
        .await
        .pg_context(|| format!("preparing the session of operator {operator}"))
}

pub use lakets_wal::operator::Operator;

/// A pipeline of lakets: every (re)start of its stream prepared through the catalog
/// ([`crate::catalog::replication::StreamPreparation`]).
pub fn pipeline(
    db: crate::db::DbConfig,
    config: crate::wal::PipelineConfig,
) -> crate::wal::Pipeline {
    crate::wal::Pipeline::new(db, config).with_preparation(std::sync::Arc::new(
        crate::catalog::replication::StreamPreparation,
    ))
}
