//! The operator contract: what the pipeline ([`crate::pipeline`]) asks of every consumer
//! of the stream.
//!
//! - [`Operator::durable_lsn`] is read once at start from the operator's own store; the
//!   runner skips every transaction that committed at or before it (exactly once per
//!   operator across restarts) and every one it has already applied since.
//! - [`Operator::apply`] may buffer; [`Operator::flush`] is called only between
//!   transactions and must store the effects and `through` atomically.
//! - The slot is acknowledged only up to the smallest durable LSN over all operators.

use std::future::Future;

use crate::lsn::Lsn;
use crate::transaction::TxnSlice;
use lakets_postgres::error::Result;

pub trait Operator: Send + 'static {
    /// A stable name: it keys the operator's row in `lakets._sink_progress`.
    fn name(&self) -> &str;

    /// The end LSN of the last transaction whose effects this operator has stored
    /// (`Lsn::ZERO` when it has never stored anything).
    fn durable_lsn(&mut self) -> impl Future<Output = Result<Lsn>> + Send;

    /// Applies one slice of a committed transaction (in memory or staged).
    fn apply(&mut self, slice: &TxnSlice) -> impl Future<Output = Result<()>> + Send;

    /// Stores everything applied so far, together with `through`, the end LSN of the last
    /// transaction applied, atomically.
    fn flush(&mut self, through: Lsn) -> impl Future<Output = Result<()>> + Send;

    /// Called on the flush timer between transactions, after a flush: work that must not
    /// interleave with a window (maintenance), or that only the position calls for.
    /// `position`: this operator has stored everything the stream carried before it.
    fn tick(&mut self, position: Lsn) -> impl Future<Output = Result<()>> + Send {
        let _ = position;
        async { Ok(()) }
    }

    /// Asks for a flush before the timer (a buffer is full).
    fn wants_flush(&self) -> bool {
        false
    }
}
