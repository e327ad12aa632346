//! The WAL pipeline: one replication connection, decoded in commit order and fanned out to
//! operators, each in its own task behind a bounded channel.
//!
//! ```text
//!  slot --frames--> reader: decode, assemble slices --Arc<Event>--> [operator task] x N
//!    ^                                                                   |
//!    +---- acknowledge min(durable LSN over operators) <--- watch -------+
//! ```
//!
//! - Backpressure: the reader waits for room in every operator's channel before handing a
//!   slice on, so memory is bounded by channel size x slice size, never by the backlog.
//!   While it waits it keeps sending status updates, so the walsender does not time out.
//! - Acknowledgement: never past the smallest durable LSN, so after any crash the slot
//!   still holds everything some operator has not stored.
//! - Idle slots: a heartbeat (`pg_logical_emit_message`, non-transactional) moves the
//!   acknowledged position forward when no published table is written. An operator with
//!   nothing applied-but-unstored reports the latest heartbeat it has seen as durable
//!   without writing anything: no transaction lies between its stored LSN and that position
//!   (the walsender sends in commit order), and on restart it skips by its stored LSN.
//! - Any error ends the run; [`run_with_restarts`] starts a fresh one after a backoff, and
//!   each operator resumes from its own durable LSN (exactly once per operator).

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::{debug, info, warn};

use super::lsn::Lsn;
use super::source::{SourceSettings, WalSource};
use super::transaction::{Assembled, Assembler, Change, HEARTBEAT_PREFIX, TxnSlice};
use crate::error::{Error, PgResultExt, Result};
use crate::operator::Operator;
use crate::slot;

#[derive(Debug, Clone)]
pub struct PipelineConfig {
    pub source: SourceSettings,
    /// Operators flush at least this often (and at transaction boundaries only).
    pub flush_interval: Duration,
    /// How often the durable position is sent to the server.
    pub ack_interval: Duration,
    /// Emit a heartbeat message this often (None: never).
    pub heartbeat_interval: Option<Duration>,
    /// Changes per slice handed to operators.
    pub max_slice_changes: usize,
    /// Slices queued per operator before the reader waits.
    pub channel_slices: usize,
}

impl PipelineConfig {
    pub fn new(source: SourceSettings) -> Self {
        PipelineConfig {
            source,
            flush_interval: Duration::from_secs(1),
            ack_interval: Duration::from_millis(500),
            heartbeat_interval: Some(Duration::from_secs(10)),
            max_slice_changes: 1024,
            channel_slices: 16,
        }
    }
}

/// While waiting on a slow operator the reader does not read, so it cannot see the
/// walsender's keepalive requests: it sends a status update this often instead, well
/// within any sensible `wal_sender_timeout`.
const STATUS_WHILE_BLOCKED: Duration = Duration::from_secs(1);

/// How long operators get to store what they have after shutdown was requested.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// What flows from the reader to the operators.
#[derive(Debug)]
pub enum Event {
    Slice(TxnSlice),
    /// No change for any operator before this position.
    Position(Lsn),
}

/// Live figures of a running pipeline (also exported as metrics).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PipelineStatus {
    pub slot: String,
    pub received_lsn: Lsn,
    pub acknowledged_lsn: Lsn,
    pub operators: Vec<(String, Lsn)>,
    pub lag_bytes: u64,
    pub lag_seconds: f64,
    /// Per operator: seconds between now and the commit of the oldest transaction it has
    /// not made durable yet (0 when it holds everything received).
    pub operator_lag_seconds: Vec<(String, f64)>,
    pub transactions: u64,
    pub changes: u64,
    /// Connected to the walsender and streaming.
    pub streaming: bool,
    /// Why the last run of the pipeline ended, if it failed.
    pub last_error: Option<String>,
    /// Set when streaming stopped for good (a definite error): the reason.
    pub stopped: Option<String>,
    /// Commit time (µs since the epoch) of the oldest transaction not durable everywhere,
    /// and per operator of the oldest it has not made durable (`None`: nothing pending).
    /// Kept across restarts, so that while no run streams (the store down, the server
    /// gone) the lag goes on growing from what the last run knew instead of freezing.
    #[serde(skip)]
    behind_since: Option<i64>,
    #[serde(skip)]
    operator_behind_since: Vec<(String, Option<i64>)>,
}

impl PipelineStatus {
    pub fn new(slot: impl Into<String>) -> Self {
        PipelineStatus {
            slot: slot.into(),
            ..Default::default()
        }
    }

    /// Recomputes the lag figures (and their gauges) at `now` from the oldest pending
    /// commits.
    fn publish_lag(&mut self, now: i64) {
        let seconds = |since: Option<i64>| since.map_or(0.0, |t| ((now - t).max(0) as f64) / 1e6);
        self.lag_seconds = seconds(self.behind_since);
        self.operator_lag_seconds = self
            .operator_behind_since
            .iter()
            .map(|(name, since)| (name.clone(), seconds(*since)))
            .collect();
        metrics::gauge!("lakets_replication_lag_seconds").set(self.lag_seconds);
        for (name, seconds) in &self.operator_lag_seconds {
            metrics::gauge!("lakets_operator_lag_seconds", "operator" => name.clone())
                .set(*seconds);
        }
    }
}

struct OperatorHandle {
    name: String,
    tx: mpsc::Sender<Arc<Event>>,
    durable: watch::Receiver<Lsn>,
    /// Taken when joined, so that it is awaited exactly once. Aborted when dropped: a
    /// pipeline dropped without its shutdown (cancelled, as a deposed leader's is) must
    /// not leave operators behind that store what they hold once their channel closes.
    task: Option<AbortOnDropHandle<Result<()>>>,
}

impl OperatorHandle {
    fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Waits for the operator task and returns how it ended (once; later calls say Ok).
    async fn join(&mut self) -> Result<()> {
        match self.task.take() {
            None => Ok(()),
            Some(task) => match task.await {
                Ok(result) => result,
                Err(e) => Err(Error::Operator(format!(
                    "operator {} panicked: {e}",
                    self.name
                ))),
            },
        }
    }
}

pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// What a stream's owner checks and records before each (re)start of the stream, on a
/// session of its own (lakets: its catalog installed, no gap recorded, the publication
/// covering its tables, the slot registered). Without one, the pipeline checks the server
/// can stream and creates the slot; the publication must exist.
pub trait Preparation: Send + Sync + 'static {
    fn prepare<'a>(
        &'a self,
        client: &'a tokio_postgres::Client,
        slot: &'a str,
        publication: &'a str,
    ) -> BoxFuture<'a, Result<()>>;
}

/// A set of operators ready to run against one slot.
pub struct Pipeline {
    config: PipelineConfig,
    db: crate::db::DbConfig,
    operators: Vec<OperatorHandle>,
    status: Arc<Mutex<PipelineStatus>>,
    preparation: Option<Arc<dyn Preparation>>,
}

impl Pipeline {
    pub fn new(db: crate::db::DbConfig, config: PipelineConfig) -> Self {
        let status = PipelineStatus::new(config.source.slot.clone());
        Pipeline {
            config,
            db,
            operators: Vec::new(),
            status: Arc::new(Mutex::new(status)),
            preparation: None,
        }
    }

    /// Runs `preparation` before the stream starts.
    pub fn with_preparation(mut self, preparation: Arc<dyn Preparation>) -> Self {
        self.preparation = Some(preparation);
        self
    }

    /// Shares the status of this run with an existing handle (kept across restarts).
    pub fn with_status(mut self, status: Arc<Mutex<PipelineStatus>>) -> Self {
        self.status = status;
        self
    }

    pub fn status(&self) -> Arc<Mutex<PipelineStatus>> {
        self.status.clone()
    }

    /// Adds an operator; it starts (reads its durable LSN) right away.
    pub fn operator<O: Operator>(mut self, op: O) -> Self {
        let name = op.name().to_owned();
        let (tx, rx) = mpsc::channel(self.config.channel_slices.max(1));
        let (durable_tx, durable) = watch::channel(Lsn::ZERO);
        let flush_interval = self.config.flush_interval;
        let task = AbortOnDropHandle::new(tokio::spawn(run_operator(
            op,
            rx,
            durable_tx,
            flush_interval,
        )));
        self.operators.push(OperatorHandle {
            name,
            tx,
            durable,
            task: Some(task),
        });
        self
    }

    /// Streams until `shutdown` is cancelled (then flushes, acknowledges and returns Ok) or
    /// something fails.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let Pipeline {
            config,
            db,
            mut operators,
            status,
            preparation,
        } = self;
        if operators.is_empty() {
            return Err(Error::invalid("a pipeline needs at least one operator"));
        }
        let slot = config.source.slot.clone();
        let client = crate::db::connect_with(&db).await?;
        match &preparation {
            Some(p) => {
                p.prepare(&client, &slot, &config.source.publication)
                    .await?
            }
            None => {
                slot::preflight(&client, &slot).await?;
                slot::ensure_slot(&client, &slot).await?;
            }
        }
        drop(client);

        let mut source = WalSource::start(&db, &config.source).await?;
        {
            let mut st = status.lock().unwrap();
            st.streaming = true;
            st.last_error = None;
        }
        let mut assembler = Assembler::new(config.source.binary, config.max_slice_changes);
        info!(slot = %slot, binary = config.source.binary, operators = operators.len(), "streaming the WAL");

        // An operator that made a position durable wakes the loop, so the acknowledgement
        // (and the status) follows at once instead of at the next idle tick.
        let durable_watchers: Vec<_> = operators
            .iter()
            .map(|op| {
                let mut durable = op.durable.clone();
                let wake = source.waker();
                AbortOnDropHandle::new(tokio::spawn(async move {
                    while durable.changed().await.is_ok() {
                        wake();
                    }
                }))
            })
            .collect();
        let heartbeat = config.heartbeat_interval.map(|every| {
            let client_db = db.clone();
            AbortOnDropHandle::new(tokio::spawn(async move {
                heartbeat_loop(client_db, every).await
            }))
        });

        let mut acked = Lsn::ZERO;
        let mut last_ack = Instant::now();
        let mut lag = LagTracker::default();
        let result: Result<()> = async {
            loop {
                if shutdown.is_cancelled() {
                    return Ok(());
                }
                if let Some(frame) = source.next_frame().await? {
                    metrics::gauge!("lakets_wal_received_lsn").set(frame.wal_end.0 as f64);
                    if let Some(oversized) = &frame.oversized {
                        return Err(assembler.oversized(oversized, config.source.max_message_bytes));
                    }
                    if let Some(out) = assembler.push(&frame.data)? {
                        let event = match out {
                            Assembled::Slice(slice) => {
                                debug!(slot = %slot, xid = slice.xid, commit = %slice.commit_lsn, changes = slice.changes.len(), last = slice.end_lsn.is_some(), "slice");
                                count_changes(&slice, source.received_lsn(), &status);
                                if let Some(end) = slice.end_lsn {
                                    lag.committed(end, slice.commit_time);
                                }
                                Event::Slice(slice)
                            }
                            Assembled::Position(lsn) => Event::Position(lsn),
                        };
                        let progress = Progress { acked: &mut acked, status: &status, lag: &mut lag };
                        if !fan_out(&mut operators, Arc::new(event), &mut source, progress, &shutdown).await?
                        {
                            return Ok(()); // shutdown while waiting for a slow operator
                        }
                    }
                }
                if last_ack.elapsed() >= config.ack_interval {
                    check_operators(&mut operators).await?;
                    acked = acknowledge(&operators, &mut source, acked, &status, &mut lag).await?;
                    last_ack = Instant::now();
                }
            }
        }
        .await;

        drop(heartbeat);
        drop(durable_watchers);
        // Let the operators store what they have, then acknowledge it.
        let mut final_error = result.err();
        let mut durables = Vec::new();
        for mut op in operators {
            let (closed, _) = mpsc::channel(1);
            drop(std::mem::replace(&mut op.tx, closed));
            // An operator stuck (on a lock, say) must not hold shutdown forever.
            if let Some(mut task) = op.task.take() {
                let outcome = match tokio::time::timeout(SHUTDOWN_GRACE, &mut task).await {
                    Ok(Ok(result)) => result,
                    Ok(Err(e)) => Err(Error::Operator(format!(
                        "operator {} panicked: {e}",
                        op.name
                    ))),
                    Err(_) => {
                        task.abort();
                        Err(Error::Operator(format!(
                            "operator {} did not finish within {SHUTDOWN_GRACE:?} of shutdown; \
                             what it had not stored will be streamed again",
                            op.name
                        )))
                    }
                };
                if let Err(e) = outcome {
                    warn!(operator = %op.name, error = %e, "operator failed");
                    final_error.get_or_insert(e);
                }
            }
            durables.push(*op.durable.borrow());
        }
        if let Some(min) = durables.into_iter().min()
            && min > acked
            && final_error.is_none()
            && let Err(e) = source.acknowledge(min).await
        {
            warn!(error = %e, "final acknowledgement failed; the slot resumes a little earlier");
        }
        {
            let mut st = status.lock().unwrap();
            st.streaming = false;
            st.last_error = final_error.as_ref().map(|e| e.to_string());
        }
        match final_error {
            Some(e) => Err(e),
            None => {
                info!(slot = %slot, "pipeline stopped");
                Ok(())
            }
        }
    }
}

fn count_changes(slice: &TxnSlice, received: Lsn, status: &Arc<Mutex<PipelineStatus>>) {
    // One registry lookup per kind and slice, not per change (this runs for every row).
    let mut kinds: [(&'static str, u64); 6] = [("", 0); 6];
    for change in &slice.changes {
        let kind = change.kind();
        if let Some(slot) = kinds.iter_mut().find(|(k, n)| *k == kind || *n == 0) {
            slot.0 = kind;
            slot.1 += 1;
        }
    }
    for (kind, n) in kinds {
        if n > 0 {
            metrics::counter!("lakets_wal_changes_total", "kind" => kind).increment(n);
        }
    }
    let mut st = status.lock().unwrap();
    st.changes += slice.changes.len() as u64;
    st.received_lsn = st.received_lsn.max(received);
    if slice.end_lsn.is_some() {
        st.transactions += 1;
        metrics::counter!("lakets_wal_transactions_total").increment(1);
    }
}

/// What acknowledging needs of the loop's state.
struct Progress<'a> {
    acked: &'a mut Lsn,
    status: &'a Arc<Mutex<PipelineStatus>>,
    lag: &'a mut LagTracker,
}

/// Hands an event to every operator, waiting for room; keeps the connection alive (and
/// the figures current) while waiting.
/// Returns false when shutdown was requested while waiting.
async fn fan_out(
    operators: &mut [OperatorHandle],
    event: Arc<Event>,
    source: &mut WalSource,
    progress: Progress<'_>,
    shutdown: &CancellationToken,
) -> Result<bool> {
    for index in 0..operators.len() {
        let mut blocked_since: Option<Instant> = None;
        loop {
            // Cancel-safe: `reserve` either yields a slot or, when dropped, takes nothing.
            let op = &mut operators[index];
            let outcome = tokio::select! {
                permit = op.tx.reserve() => Some(permit.map(|p| p.send(event.clone())).is_ok()),
                _ = tokio::time::sleep(STATUS_WHILE_BLOCKED) => None,
                _ = shutdown.cancelled() => return Ok(false),
            };
            match outcome {
                Some(true) => break,
                Some(false) => return Err(operator_gone(op).await),
                None => {
                    // Backpressure: an operator is slow. Acknowledging keeps the walsender
                    // from timing us out while we do not read, and the lag figures moving
                    // (what the others made durable meanwhile, how far the slow one is behind).
                    metrics::counter!("lakets_wal_backpressure_waits_total", "operator" => op.name.clone())
                        .increment(1);
                    if op.is_finished() {
                        return Err(operator_gone(op).await);
                    }
                    let since = *blocked_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= Duration::from_secs(60) {
                        warn!(operator = %op.name, blocked_for = ?since.elapsed(), "operator is not keeping up; the stream waits for it");
                        blocked_since = Some(Instant::now());
                    }
                    *progress.acked = acknowledge(
                        operators,
                        source,
                        *progress.acked,
                        progress.status,
                        progress.lag,
                    )
                    .await?;
                }
            }
        }
    }
    Ok(true)
}

async fn operator_gone(op: &mut OperatorHandle) -> Error {
    match op.join().await {
        Err(e) => e,
        Ok(()) => Error::Operator(format!("operator {} stopped unexpectedly", op.name)),
    }
}

async fn check_operators(operators: &mut [OperatorHandle]) -> Result<()> {
    for op in operators.iter_mut() {
        if op.is_finished() {
            return Err(operator_gone(op).await);
        }
    }
    Ok(())
}

async fn acknowledge(
    operators: &[OperatorHandle],
    source: &mut WalSource,
    acked: Lsn,
    status: &Arc<Mutex<PipelineStatus>>,
    lag: &mut LagTracker,
) -> Result<Lsn> {
    let durables: Vec<(String, Lsn)> = operators
        .iter()
        .map(|op| (op.name.clone(), *op.durable.borrow()))
        .collect();
    let min = durables.iter().map(|(_, l)| *l).min().unwrap_or(Lsn::ZERO);
    let new_ack = acked.max(min);
    source.acknowledge(new_ack).await?;
    let received = source.received_lsn();
    let lag_bytes = received.0.saturating_sub(new_ack.0);
    let operator_behind_since: Vec<(String, Option<i64>)> = durables
        .iter()
        .map(|(name, lsn)| (name.clone(), lag.oldest_past(*lsn)))
        .collect();
    lag.forget_through(new_ack);
    metrics::gauge!("lakets_wal_acknowledged_lsn").set(new_ack.0 as f64);
    metrics::gauge!("lakets_replication_lag_bytes").set(lag_bytes as f64);
    for (name, lsn) in &durables {
        metrics::gauge!("lakets_operator_durable_lsn", "operator" => name.clone())
            .set(lsn.0 as f64);
        metrics::gauge!("lakets_operator_lag_bytes", "operator" => name.clone())
            .set(received.0.saturating_sub(lsn.0) as f64);
    }
    let mut st = status.lock().unwrap();
    st.received_lsn = received;
    st.acknowledged_lsn = new_ack;
    st.operators = durables;
    st.lag_bytes = lag_bytes;
    st.behind_since = lag.oldest_past(new_ack);
    st.operator_behind_since = operator_behind_since;
    st.publish_lag(chrono::Utc::now().timestamp_micros());
    Ok(new_ack)
}

/// Commit times of transactions handed on but not yet durable everywhere, sampled so that
/// the queue stays small at any rate.
#[derive(Default)]
struct LagTracker {
    pending: VecDeque<(Lsn, i64)>,
}

impl LagTracker {
    fn committed(&mut self, end: Lsn, commit_time: i64) {
        let sampled = self
            .pending
            .back()
            .is_none_or(|(_, t)| commit_time - t >= 10_000);
        if sampled && self.pending.len() < 100_000 {
            self.pending.push_back((end, commit_time));
        }
    }

    /// Commit time of the oldest transaction past `durable` (the queue is in commit
    /// order, so a search finds it).
    fn oldest_past(&self, durable: Lsn) -> Option<i64> {
        let first = self.pending.partition_point(|(end, _)| *end <= durable);
        self.pending.get(first).map(|(_, t)| *t)
    }

    /// Drops what every operator has made durable.
    fn forget_through(&mut self, durable: Lsn) {
        while self.pending.front().is_some_and(|(end, _)| *end <= durable) {
            self.pending.pop_front();
        }
    }
}

/// Writes a non-transactional lakets message to the WAL: every slot decodes it and a
/// pipeline with nothing in flight confirms past it, so idle slots move.
pub async fn emit_heartbeat(client: &tokio_postgres::Client) -> Result<()> {
    client
        .execute(
            "SELECT pg_logical_emit_message(false, $1, '')",
            &[&HEARTBEAT_PREFIX],
        )
        .await
        .pg_context(|| "emitting a heartbeat".into())?;
    Ok(())
}

async fn heartbeat_loop(db: crate::db::DbConfig, every: Duration) {
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut client = None;
    loop {
        interval.tick().await;
        if client.is_none() {
            match crate::db::connect_with(&db).await {
                Ok(c) => client = Some(c),
                Err(e) => {
                    warn!(error = %e, "heartbeat connection failed; an idle slot will not advance")
                }
            }
        }
        if let Some(c) = &client
            && let Err(e) = emit_heartbeat(c).await
        {
            warn!(error = %e, "heartbeat failed");
            client = None;
        }
    }
}

/// Runs one operator: skips what it already has, applies, flushes on its timer at
/// transaction boundaries, and publishes its durable LSN.
async fn run_operator<O: Operator>(
    mut op: O,
    mut rx: mpsc::Receiver<Arc<Event>>,
    durable_tx: watch::Sender<Lsn>,
    flush_interval: Duration,
) -> Result<()> {
    let name = op.name().to_owned();
    let mut durable = op.durable_lsn().await?;
    let _ = durable_tx.send(durable);
    info!(operator = %name, durable = %durable, "operator resumes");
    // End LSN of the last transaction applied (stored or not).
    let mut applied = durable;
    let mut in_txn = false;
    let mut skipping = false;
    let mut idle_position = Lsn::ZERO;
    let mut ticker = tokio::time::interval(flush_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A tick that came in the middle of a transaction is owed at its end: long
    // transactions must not postpone durability (and the slot) indefinitely.
    let mut flush_due = false;

    macro_rules! flush {
        () => {
            flush_due = false;
            if applied > durable {
                op.flush(applied).await?;
                durable = applied;
            }
            // Everything handed to us is stored: heartbeats past it may be confirmed too.
            let _ = durable_tx.send(durable.max(idle_position));
            op.tick(durable.max(idle_position)).await?;
        };
    }

    loop {
        tokio::select! {
            event = rx.recv() => {
                let Some(event) = event else {
                    // Shutdown: store what is complete, then stop.
                    if !in_txn && applied > durable {
                        op.flush(applied).await?;
                        let _ = durable_tx.send(applied);
                    }
                    return Ok(());
                };
                match &*event {
                    Event::Slice(slice) => {
                        if slice.first {
                            in_txn = true;
                            // Committed at or before something already applied: skip it.
                            skipping = slice.commit_lsn < applied;
                        }
                        if !skipping {
                            op.apply(slice).await?;
                        } else if slice.changes.iter().any(|c| matches!(c, Change::Schema { .. })) {
                            // Table shapes travel inside transactions; an operator skipping
                            // one must still learn the shape for the rows that follow.
                            op.apply(&schema_only(slice)).await?;
                        }
                        if let Some(end) = slice.end_lsn {
                            in_txn = false;
                            if !skipping {
                                applied = end;
                            }
                            if flush_due || op.wants_flush() {
                                flush!();
                            }
                        }
                    }
                    Event::Position(lsn) => {
                        if !in_txn && *lsn > idle_position {
                            idle_position = *lsn;
                            if applied == durable {
                                let _ = durable_tx.send(durable.max(idle_position));
                            }
                        }
                    }
                }
            }
            _ = ticker.tick() => {
                if in_txn {
                    flush_due = true;
                } else {
                    flush!();
                }
            }
        }
    }
}

/// The schema changes of a slice, as a slice of their own.
fn schema_only(slice: &TxnSlice) -> TxnSlice {
    TxnSlice {
        xid: slice.xid,
        commit_lsn: slice.commit_lsn,
        commit_time: slice.commit_time,
        first: slice.first,
        end_lsn: None,
        changes: slice
            .changes
            .iter()
            .filter(|c| matches!(c, Change::Schema { .. }))
            .cloned()
            .collect(),
    }
}

/// Runs pipelines built by `make` until `shutdown`, restarting after failures with
/// exponential backoff (100 ms to 30 s). Errors that a restart cannot fix are returned.
pub async fn run_with_restarts<F, Fut>(mut make: F, shutdown: CancellationToken) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Pipeline>>,
{
    // The status of the last pipeline built: between runs, and while a new one cannot
    // be built, it is the one that reports.
    let status: Arc<Mutex<Option<Arc<Mutex<PipelineStatus>>>>> = Arc::default();
    let _lag_clock = AbortOnDropHandle::new(tokio::spawn(lag_while_down(status.clone())));
    let mut backoff = Duration::from_millis(100);
    loop {
        let started = Instant::now();
        let outcome = match make().await {
            Ok(pipeline) => {
                *status.lock().unwrap() = Some(pipeline.status());
                pipeline.run(shutdown.clone()).await
            }
            Err(e) => Err(e),
        };
        match outcome {
            Ok(()) => return Ok(()),
            Err(e) if !is_retryable(&e) => return Err(e),
            Err(e) => {
                if started.elapsed() > Duration::from_secs(60) {
                    backoff = Duration::from_millis(100);
                }
                warn!(error = %e, retry_in = ?backoff, "WAL pipeline failed; restarting");
                metrics::counter!("lakets_wal_restarts_total").increment(1);
                if let Some(last) = &*status.lock().unwrap() {
                    last.lock().unwrap().last_error = Some(e.to_string());
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.cancelled() => return Ok(()),
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// While no run streams, nothing acknowledges: the lag figures go on growing from the
/// oldest commits the last run had not made durable, so an outage shows as one.
async fn lag_while_down(status: Arc<Mutex<Option<Arc<Mutex<PipelineStatus>>>>>) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    loop {
        every.tick().await;
        let Some(last) = status.lock().unwrap().clone() else {
            continue;
        };
        let mut st = last.lock().unwrap();
        if !st.streaming {
            st.publish_lag(chrono::Utc::now().timestamp_micros());
        }
    }
}

/// Connection trouble and server restarts are retried; bad data and bad setup are not
/// (see [`Error::is_transient`]).
pub fn is_retryable(e: &Error) -> bool {
    e.is_transient()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_operator_lags_from_the_oldest_commit_it_has_not_made_durable() {
        let mut lag = LagTracker::default();
        let second = 1_000_000;
        for (end, at) in [(100, 10 * second), (200, 20 * second), (300, 30 * second)] {
            lag.committed(Lsn(end), at);
        }
        assert_eq!(lag.oldest_past(Lsn(50)), Some(10 * second));
        assert_eq!(
            lag.oldest_past(Lsn(100)),
            Some(20 * second),
            "the first is durable"
        );
        assert_eq!(lag.oldest_past(Lsn(250)), Some(30 * second));
        assert_eq!(lag.oldest_past(Lsn(300)), None, "holds everything");
        lag.forget_through(Lsn(200));
        assert_eq!(lag.oldest_past(Lsn(0)), Some(30 * second));
    }

    #[test]
    fn the_lag_grows_from_the_oldest_pending_commit_while_nothing_acknowledges() {
        let second = 1_000_000;
        let mut status = PipelineStatus {
            behind_since: Some(10 * second),
            operator_behind_since: vec![("delta".into(), Some(10 * second)), ("lvc".into(), None)],
            ..Default::default()
        };
        status.publish_lag(40 * second);
        assert_eq!(status.lag_seconds, 30.0);
        status.publish_lag(70 * second);
        assert_eq!(status.lag_seconds, 60.0, "a minute later, a minute more");
        assert_eq!(
            status.operator_lag_seconds,
            vec![("delta".to_string(), 60.0), ("lvc".to_string(), 0.0)]
        );
    }

    struct Probe(Arc<Mutex<Vec<Lsn>>>);

    impl Operator for Probe {
        fn name(&self) -> &str {
            "probe"
        }
        async fn durable_lsn(&mut self) -> Result<Lsn> {
            Ok(Lsn::ZERO)
        }
        async fn apply(&mut self, _slice: &TxnSlice) -> Result<()> {
            Ok(())
        }
        async fn flush(&mut self, through: Lsn) -> Result<()> {
            self.0.lock().unwrap().push(through);
            Ok(())
        }
    }

    fn slice(first: bool, end: Option<u64>) -> Arc<Event> {
        Arc::new(Event::Slice(TxnSlice {
            xid: 1,
            commit_lsn: Lsn(0x10),
            commit_time: 0,
            first,
            end_lsn: end.map(Lsn),
            changes: Vec::new(),
        }))
    }

    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    /// A pipeline dropped without its shutdown (a deposed leader's, aborted) takes its
    /// operators with it: what they hold is not stored, since another process may stream
    /// the same changes by now. Its shutdown (the channel closed, the task joined) stores.
    #[tokio::test(start_paused = true)]
    async fn an_operator_of_a_dropped_pipeline_stores_nothing() {
        for shutdown in [false, true] {
            let flushed = Arc::new(Mutex::new(Vec::new()));
            let (tx, rx) = mpsc::channel(16);
            let (durable_tx, durable) = watch::channel(Lsn::ZERO);
            let mut handle = OperatorHandle {
                name: "probe".into(),
                tx,
                durable,
                task: Some(AbortOnDropHandle::new(tokio::spawn(run_operator(
                    Probe(flushed.clone()),
                    rx,
                    durable_tx,
                    Duration::from_secs(3600),
                )))),
            };
            settle().await; // the interval's first tick, with nothing to store
            handle.tx.send(slice(true, Some(0x20))).await.unwrap();
            settle().await;
            assert!(flushed.lock().unwrap().is_empty(), "held until a tick");
            if shutdown {
                let (closed, _) = mpsc::channel(1);
                drop(std::mem::replace(&mut handle.tx, closed));
                handle.join().await.unwrap();
                assert_eq!(*flushed.lock().unwrap(), vec![Lsn(0x20)]);
            } else {
                drop(handle);
                settle().await;
                assert!(
                    flushed.lock().unwrap().is_empty(),
                    "stored by a dropped pipeline"
                );
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_flush_tick_inside_a_transaction_is_owed_at_its_end() {
        let flushed = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel(16);
        let (durable_tx, durable) = watch::channel(Lsn::ZERO);
        let task = tokio::spawn(run_operator(
            Probe(flushed.clone()),
            rx,
            durable_tx,
            Duration::from_millis(100),
        ));
        settle().await;
        tx.send(slice(true, None)).await.unwrap();
        // The 100 ms tick lands while the transaction is open: nothing may be stored yet.
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(flushed.lock().unwrap().is_empty());
        // The transaction ends at 150 ms: stored at once, not at the next tick (200 ms).
        tx.send(slice(false, Some(0x20))).await.unwrap();
        settle().await;
        assert_eq!(*flushed.lock().unwrap(), vec![Lsn(0x20)]);
        assert_eq!(*durable.borrow(), Lsn(0x20));
        drop(tx);
        task.await.unwrap().unwrap();
    }
}
