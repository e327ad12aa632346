//! What the dashboard shows, gathered in one pass: `GET /api/status` answers it and the
//! event stream sends it every second.
//!
//! Most of it comes from [`crate::status::collect`] (the same report as `lakets status`),
//! overlaid with what only this process knows (the pipeline's rates, the Last Value Cache)
//! and what the report leaves out (hot rows, the Delta tables' versions and row counts, the
//! chunks' ranges). One collection at a time serves every viewer: a figure younger than
//! [`FRESH_FOR`] is handed out again rather than read again.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_postgres::Client;
use tracing::debug;

use crate::error::{Error, PgResultExt, Result};
use crate::state::ServiceState;
use lakets_core::catalog::ingest_profile;
use lakets_core::catalog::registry::{self, ChunkStatus};

/// Viewers that ask within this much of the last collection get it again.
pub const FRESH_FOR: Duration = Duration::from_millis(900);
/// The Delta logs are read at most this often (a log read per second per viewer would
/// cost more than the page is worth).
const DELTA_EVERY: Duration = Duration::from_secs(3);
/// Lag past this reads "catching up" rather than "streaming".
const CATCHING_UP_SECONDS: f64 = 5.0;
/// The hot tables are counted at most this often: a count scans them, and holds off a
/// chunk's drop while it runs.
const HOT_COUNT_EVERY: Duration = Duration::from_secs(5);
/// A collection that takes longer gives up (a hung database or store must not hang the
/// page).
const COLLECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Keys of the Last Value Cache sent (in key order); `lvc_keys` says how many there are.
const MAX_LVC_KEYS: usize = 500;
/// Dropped chunks kept in the timeline, per table (the newest).
const DROPPED_IN_TIMELINE: usize = 24;
/// The dashboard's session: a count waits at most this long for a lock (a chunk's drop
/// goes first) and runs at most this long.
const SESSION: &str = "SET lock_timeout = '500ms'; SET statement_timeout = '5s'";

/// The page's figures, also the body of `GET /api/status`.
#[derive(Debug, Clone, Serialize)]
pub struct DashboardStatus {
    /// When these figures were read (UTC, RFC 3339).
    pub at: String,
    pub stream: StreamState,
    /// Seconds between the newest change received and now (live pipeline only).
    pub lag_seconds: Option<f64>,
    /// WAL bytes between the server's position and the slowest operator.
    pub lag_bytes: u64,
    pub operators: Vec<OperatorLag>,
    pub rates: Rates,
    /// Chunk count by status over every ChronoTable (active, tiered, dropped; each present).
    pub chunks: BTreeMap<String, i64>,
    /// Every chunk's range and status, oldest first per table (of the dropped ones, the
    /// newest few).
    pub timeline: Vec<ChunkSpan>,
    /// Rollup name -> watermark and pending invalidations.
    pub rollups: BTreeMap<String, RollupFigures>,
    /// Key -> latest values (PostgreSQL text, plus `time`). With one cached table the key
    /// is the key's values joined by `/`; with several it is prefixed by `schema.table/`.
    /// At most [`MAX_LVC_KEYS`], in key order.
    pub lvc: BTreeMap<String, BTreeMap<String, Option<String>>>,
    /// How many keys the caches hold (`lvc` may show fewer).
    pub lvc_keys: usize,
    pub rows: Rows,
    /// The stored ingest profile (what a running `lakets ingest` follows), if any.
    pub ingest: Option<IngestFigures>,
    pub jobs: Vec<crate::status::JobStatus>,
    pub stream_gaps: Vec<lakets_core::catalog::replication::StreamGap>,
    /// What the page's controls need.
    pub controls: Controls,
}

/// Whether the ingest controls work here, and with what.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Controls {
    /// A change needs the admin token.
    pub token_required: bool,
    /// False when the listener is reachable from other hosts with no admin token.
    pub changes_allowed: bool,
}

/// The stream's state in plain words.
#[derive(Debug, Clone, Serialize)]
pub struct StreamState {
    /// `streaming`, `catching up`, `not streaming` or `stopped`.
    pub state: &'static str,
    /// Why, when not simply streaming.
    pub reason: Option<String>,
    pub slot: String,
    pub received_lsn: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct OperatorLag {
    pub operator: String,
    pub durable_lsn: String,
    pub lag_bytes: u64,
    /// Since the commit of the oldest transaction it has not made durable (live only).
    pub lag_seconds: Option<f64>,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Rates {
    /// Changes the pipeline received per second since the previous collection.
    pub stream_rows_per_second: f64,
    /// What the running ingest last reported (0 when none runs).
    pub ingest_rows_per_second: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChunkSpan {
    pub table: String,
    pub chunk: String,
    pub range_start: String,
    pub range_end: String,
    pub status: &'static str,
    pub deferred_reason: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RollupFigures {
    pub watermark: Option<String>,
    pub watermark_age_seconds: Option<f64>,
    pub pending_invalidations: i64,
}

/// Hot rows in PostgreSQL against rows in Delta, over the synced tables.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Rows {
    pub hot: i64,
    /// `None` until every synced table's log has been read once.
    pub delta: Option<u64>,
    pub tables: Vec<TableRows>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TableRows {
    pub table: String,
    pub hot: i64,
    pub delta: Option<u64>,
    pub delta_version: Option<i64>,
    pub delta_files: Option<u64>,
    pub delta_location: String,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct IngestFigures {
    pub symbols: u32,
    pub rows_per_second: u64,
    pub burst: bool,
    /// What the running ingest last reported.
    pub achieved_rows_per_second: f64,
    pub total_rows: u64,
}

impl From<ingest_profile::StoredProfile> for IngestFigures {
    fn from(s: ingest_profile::StoredProfile) -> Self {
        IngestFigures {
            symbols: s.profile.symbols,
            rows_per_second: s.profile.rate,
            burst: s.profile.burst,
            achieved_rows_per_second: s.achieved_rate,
            total_rows: s.total_rows,
        }
    }
}

/// One collection at a time, with what it keeps between collections.
pub struct Collector {
    state: Arc<ServiceState>,
    controls: Controls,
    inner: tokio::sync::Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    client: Option<Client>,
    latest: Option<(Instant, Arc<DashboardStatus>)>,
    /// The pipeline's change count at the previous collection.
    previous_changes: Option<(Instant, u64)>,
    delta: HashMap<String, DeltaState>,
    /// Hot rows per table, and when they were counted.
    hot: HashMap<String, i64>,
    hot_counted: Option<Instant>,
}

struct DeltaState {
    table: Option<lakets_core::delta::DeltaTable>,
    read_at: Instant,
    summary: Option<lakets_core::delta::read::TableSummary>,
}

impl Collector {
    pub fn new(state: Arc<ServiceState>, controls: Controls) -> Self {
        Collector {
            state,
            controls,
            inner: tokio::sync::Mutex::new(Inner::default()),
        }
    }

    pub fn state(&self) -> &ServiceState {
        &self.state
    }

    /// The figures, read now unless a collection younger than [`FRESH_FOR`] exists.
    pub async fn figures(&self) -> Result<Arc<DashboardStatus>> {
        let mut inner = self.inner.lock().await;
        if let Some((at, figures)) = &inner.latest
            && at.elapsed() < FRESH_FOR
        {
            return Ok(figures.clone());
        }
        let result = match tokio::time::timeout(COLLECT_TIMEOUT, self.collect(&mut inner)).await {
            Ok(result) => result,
            Err(_) => Err(Error::NotReady(format!(
                "reading the figures took more than {COLLECT_TIMEOUT:?}"
            ))),
        };
        if result.is_err() {
            // The database may have restarted: the next collection connects again.
            inner.client = None;
        }
        let figures = Arc::new(result?);
        inner.latest = Some((Instant::now(), figures.clone()));
        Ok(figures)
    }

    async fn collect(&self, inner: &mut Inner) -> Result<DashboardStatus> {
        if inner.client.as_ref().is_none_or(|c| c.is_closed()) {
            let client = crate::db::connect_with(&self.state.db).await?;
            client
                .batch_execute(SESSION)
                .await
                .pg_context(|| "preparing the dashboard's session".into())?;
            inner.client = Some(client);
        }
        let client = inner.client.as_ref().expect("connected above");
        let live = self.state.status.lock().unwrap().clone();
        let report = crate::status::collect(client, &self.state.slot, Some(&live)).await?;

        let now = Instant::now();
        let stream_rate = match inner.previous_changes {
            Some((at, changes)) if now > at => {
                live.changes.saturating_sub(changes) as f64 / (now - at).as_secs_f64()
            }
            _ => 0.0,
        };
        inner.previous_changes = Some((now, live.changes));

        let mut chunks: BTreeMap<String, i64> = ["active", "tiered", "dropped"]
            .into_iter()
            .map(|s| (s.to_string(), 0))
            .collect();
        for t in &report.tables {
            for (status, n) in &t.chunks {
                *chunks.entry(status.clone()).or_default() += n;
            }
        }
        let mut chunks_listed = registry::list_all_chunks(client, None, true).await?;
        // Of each table's dropped chunks, only the newest: the list only grows.
        let mut dropped_seen: HashMap<(String, String), usize> = HashMap::new();
        chunks_listed.reverse();
        chunks_listed.retain(|c| {
            c.status != ChunkStatus::Dropped || {
                let n = dropped_seen
                    .entry((c.schema_name.clone(), c.table_name.clone()))
                    .or_default();
                *n += 1;
                *n <= DROPPED_IN_TIMELINE
            }
        });
        chunks_listed.reverse();
        let timeline = chunks_listed
            .into_iter()
            .map(|c| ChunkSpan {
                table: format!("{}.{}", c.schema_name, c.table_name),
                range_start: c.range_start.to_rfc3339(),
                range_end: c.range_end.to_rfc3339(),
                status: match c.status {
                    ChunkStatus::Active => "active",
                    ChunkStatus::Tiered => "tiered",
                    ChunkStatus::Dropped => "dropped",
                },
                deferred_reason: c
                    .deferred_reason
                    .filter(|_| c.status != ChunkStatus::Dropped),
                chunk: c.chunk_name,
            })
            .collect();

        let recount = inner
            .hot_counted
            .is_none_or(|at| at.elapsed() >= HOT_COUNT_EVERY);
        let rows = rows(client, &mut inner.delta, &mut inner.hot, recount).await?;
        if recount {
            inner.hot_counted = Some(Instant::now());
        }
        let (lvc, lvc_keys) = self.last_values();
        let ingest = ingest_profile::get_profile(client)
            .await?
            .map(IngestFigures::from);

        Ok(DashboardStatus {
            at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            stream: stream_state(&report, &live),
            lag_seconds: report.lag_seconds,
            lag_bytes: report.lag_bytes,
            operators: report
                .operators
                .iter()
                .map(|o| OperatorLag {
                    operator: o.operator.clone(),
                    durable_lsn: o.durable_lsn.to_string(),
                    lag_bytes: o.lag_bytes,
                    lag_seconds: live
                        .operator_lag_seconds
                        .iter()
                        .find(|(name, _)| *name == o.operator)
                        .map(|(_, s)| *s),
                })
                .collect(),
            rates: Rates {
                stream_rows_per_second: stream_rate,
                ingest_rows_per_second: ingest.map_or(0.0, |i| i.achieved_rows_per_second),
            },
            chunks,
            timeline,
            rollups: report
                .rollups
                .iter()
                .map(|r| {
                    (
                        r.name.clone(),
                        RollupFigures {
                            watermark: r.watermark.clone(),
                            watermark_age_seconds: r.watermark_age_seconds,
                            pending_invalidations: r.pending_invalidations,
                        },
                    )
                })
                .collect(),
            lvc,
            lvc_keys,
            rows,
            ingest,
            jobs: report.jobs,
            stream_gaps: report.stream_gaps,
            controls: self.controls,
        })
    }

    /// The first [`MAX_LVC_KEYS`] keys in key order, and how many there are.
    fn last_values(&self) -> (BTreeMap<String, BTreeMap<String, Option<String>>>, usize) {
        let view = &self.state.lvc;
        let mut tables = view.tables();
        tables.sort_by_key(|t| t.to_string());
        let qualify = tables.len() > 1;
        let mut out = BTreeMap::new();
        let mut total = 0;
        for table in &tables {
            total += view.len(table);
            let room = MAX_LVC_KEYS.saturating_sub(out.len());
            for value in view.page(table, None, room) {
                let key = value.key.join("/");
                let key = if qualify {
                    format!("{table}/{key}")
                } else {
                    key
                };
                let mut columns: BTreeMap<String, Option<String>> =
                    value.values.iter().cloned().collect();
                columns.insert("time".into(), Some(value.time.clone()));
                out.insert(key, columns);
            }
        }
        (out, total)
    }
}

/// Hot rows per synced table (an exact count, taken again when `recount`), and the Delta
/// side from each table's log.
async fn rows(
    client: &Client,
    delta_cache: &mut HashMap<String, DeltaState>,
    hot_cache: &mut HashMap<String, i64>,
    recount: bool,
) -> Result<Rows> {
    let mut rows = Rows::default();
    let mut delta_total = Some(0u64);
    let syncs = lakets_core::coldtier::sync::list_syncs(client).await?;
    let listed: Vec<String> = syncs
        .iter()
        .map(|s| format!("{} {}", s.table, s.location))
        .collect();
    // A sync disabled, or enabled again elsewhere, leaves no stale entry behind.
    delta_cache.retain(|key, _| listed.contains(key));
    for (sync, key) in syncs.iter().zip(&listed) {
        let name = sync.table.to_string();
        if recount || !hot_cache.contains_key(&name) {
            let counted = client
                .query_one(
                    &format!("SELECT count(*) FROM {}", sync.table.quoted()),
                    &[],
                )
                .await;
            match counted {
                Ok(row) => {
                    hot_cache.insert(name.clone(), row.get(0));
                }
                // A drop held the lock, or the count ran long: keep the last count.
                Err(e) if matches!(e.code().map(|c| c.code()), Some("55P03" | "57014")) => {}
                Err(e) => {
                    return Err(e).pg_context(|| format!("counting the rows of {name}"));
                }
            }
        }
        let hot = hot_cache.get(&name).copied().unwrap_or(0);
        let summary = delta_summary(delta_cache, key, &sync.location, sync.source.as_deref()).await;
        rows.hot += hot;
        delta_total = match (delta_total, summary.and_then(|s| s.rows)) {
            (Some(total), Some(n)) => Some(total + n),
            _ => None,
        };
        rows.tables.push(TableRows {
            table: name,
            hot,
            delta: summary.and_then(|s| s.rows),
            delta_version: summary.map(|s| s.version),
            delta_files: summary.map(|s| s.files),
            delta_location: lakets_core::delta::table::display_location(&sync.location),
        });
    }
    rows.delta = delta_total;
    Ok(rows)
}

/// The table's summary, read again when older than [`DELTA_EVERY`]; a failed read keeps
/// the last one (the page says how old through the version).
async fn delta_summary(
    cache: &mut HashMap<String, DeltaState>,
    name: &str,
    location: &lakets_core::delta::Url,
    source: Option<&str>,
) -> Option<lakets_core::delta::read::TableSummary> {
    let entry = cache.entry(name.to_string()).or_insert_with(|| DeltaState {
        table: None,
        read_at: Instant::now() - DELTA_EVERY,
        summary: None,
    });
    if entry.read_at.elapsed() < DELTA_EVERY {
        return entry.summary;
    }
    entry.read_at = Instant::now();
    let read = async {
        match &mut entry.table {
            Some(table) => lakets_core::delta::table::refresh(table).await?,
            None => entry.table = lakets_core::delta::table::open(location).await?,
        }
        match &entry.table {
            // A shared table: this cluster's part, beside this cluster's hot rows.
            Some(table) => lakets_core::delta::read::summary(table, source)
                .await
                .map(Some),
            None => Ok::<_, Error>(None),
        }
    };
    match read.await {
        Ok(summary) => entry.summary = summary,
        Err(e) => {
            debug!(table = name, error = %e, "reading the Delta log for the dashboard failed");
            entry.table = None;
        }
    }
    entry.summary
}

fn stream_state(
    report: &crate::status::ServiceStatus,
    live: &crate::wal::PipelineStatus,
) -> StreamState {
    let (state, reason) = if let Some(stop) = &report.stopped {
        ("stopped", Some(stop.reason.clone()))
    } else if let Some(reason) = &live.stopped {
        ("stopped", Some(reason.clone()))
    } else if let Some(gap) = report.stream_gaps.first() {
        (
            "stopped",
            Some(format!(
                "slot {} was {}: streaming waits for `lakets resync`",
                gap.slot_name, gap.reason
            )),
        )
    } else if !live.streaming {
        (
            "not streaming",
            Some(
                live.last_error
                    .clone()
                    .unwrap_or_else(|| "connecting to the server".into()),
            ),
        )
    } else if live.lag_seconds > CATCHING_UP_SECONDS {
        (
            "catching up",
            Some(format!(
                "{:.0} s and {} behind the server",
                live.lag_seconds,
                crate::report::human_bytes(report.lag_bytes as i64)
            )),
        )
    } else {
        ("streaming", None)
    };
    StreamState {
        state,
        reason,
        slot: report.slot.clone(),
        received_lsn: report.received_lsn.map(|l| l.to_string()),
    }
}
