//! The long-running service (`lakets run`, and the demo): the WAL pipeline with every
//! operator, the job scheduler, the HTTP endpoint (metrics, probes), the gRPC API and the
//! collector of catalog metrics, started together and stopped together.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::{Config, Protocol};
use crate::delta::mirror::MaintenancePolicy;
use crate::error::{Error, Result};
use crate::wal::{PipelineConfig, PipelineStatus};
use lakets_core::coldtier::sink::MaintenanceSchedule;
use lakets_core::lvc::view::LvcView;

/// How often the catalog metrics (slot, chunks, rollups, Delta files) are read.
const COLLECT_EVERY: Duration = Duration::from_secs(15);

pub use lakets_core::operators::{pipeline_with_maintenance, standard_pipeline};

pub use crate::state::ServiceState;

/// A started service.
pub struct Service {
    pub state: Arc<ServiceState>,
    pub http_addr: Option<SocketAddr>,
    pub grpc_addr: Option<SocketAddr>,
    cancel: CancellationToken,
    pipeline: JoinHandle<Result<()>>,
    others: Vec<(&'static str, JoinHandle<Result<()>>)>,
}

/// The slot a config streams from.
pub fn slot_name(config: &Config, db: &crate::db::DbConfig) -> String {
    config.service.slot.clone().unwrap_or_else(|| {
        crate::wal::slot::default_slot_name(db.get_dbname().unwrap_or("postgres"))
    })
}

/// Starts everything the config asks for; it runs until `cancel` (then flushes,
/// acknowledges and stops) or the pipeline fails for good.
pub async fn start(
    config: &Config,
    db: crate::db::DbConfig,
    cancel: CancellationToken,
) -> Result<Service> {
    config.check_listeners()?;
    let slot = slot_name(config, &db);
    let mut source = crate::wal::SourceSettings::new(&slot, &config.service.publication);
    source.binary = config.service.protocol == Protocol::Binary;
    source.max_message_bytes = config.service.max_message_bytes.0 as usize;
    let mut pipeline_config = PipelineConfig::new(source);
    pipeline_config.flush_interval = config.flush_interval();
    let schedule = config.jobs.schedule();
    let state = Arc::new(ServiceState {
        db: db.clone(),
        admin_pool: crate::db::pool::Pool::new(
            db.clone(),
            config.grpc.admin_sessions,
            Duration::from_secs(10),
        ),
        slot: slot.clone(),
        status: Arc::new(Mutex::new(PipelineStatus::new(slot.clone()))),
        lvc: LvcView::new(),
        gate: schedule.gate,
        shutdown: cancel.clone(),
        role: Arc::new(Mutex::new(crate::leadership::Role::Starting)),
    });
    let mut others = Vec::new();

    let http_addr = if config.http.listen == "off" {
        None
    } else {
        let addr = parse_addr("http.listen", &config.http.listen)?;
        let max_lag = config.http.ready_max_lag.as_std().as_secs_f64();
        let probe = state.clone();
        let ready: crate::http::Readiness = Arc::new(move || {
            match &*probe.role.lock().unwrap() {
                crate::leadership::Role::Active { .. } => {}
                crate::leadership::Role::Starting => {
                    return Err("not streaming yet: the database was not reached".into());
                }
                crate::leadership::Role::Standby { leader } => {
                    return Err(format!(
                        "standing by: {} streams slot {}",
                        leader.as_deref().unwrap_or("another instance"),
                        probe.slot
                    ));
                }
            }
            let st = probe.status.lock().unwrap();
            if let Some(reason) = &st.stopped {
                return Err(format!("streaming stopped for good: {reason}"));
            }
            if !st.streaming {
                return Err(match &st.last_error {
                    Some(e) => format!("not streaming: {e}"),
                    None => "not streaming yet".into(),
                });
            }
            if st.lag_seconds > max_lag {
                return Err(format!(
                    "replication lags {:.0} s (more than {max_lag:.0} s)",
                    st.lag_seconds
                ));
            }
            Ok(format!(
                "streaming slot {}, lag {:.1} s",
                st.slot, st.lag_seconds
            ))
        });
        let access = crate::dashboard::Access::new(config.admin_token()?, config.read_token()?);
        let bound_to = access.listen.clone();
        let dashboard =
            crate::dashboard::Dashboard::new(state.clone(), access, addr.ip().is_loopback());
        let (bound, task) = crate::http::serve_with_routes(
            addr,
            cancel.clone(),
            ready,
            crate::dashboard::router(dashboard),
        )
        .await?;
        let _ = bound_to.set(bound);
        info!(url = %format!("http://{bound}/"), "serving the dashboard");
        // The recorder is installed now: the series exist from the first scrape.
        crate::series::export_from_start();
        others.push(("http", task));
        Some(bound)
    };
    metrics::gauge!("lakets_slot_retained_wal_warning_bytes")
        .set(config.http.retained_wal_warning.0 as f64);

    let grpc_addr = if config.grpc.listen == "off" {
        None
    } else {
        let addr = parse_addr("grpc.listen", &config.grpc.listen)?;
        let settings = crate::grpc::GrpcSettings {
            admin_token: config.admin_token()?,
            read_token: config.read_token()?,
            tls: config
                .grpc
                .tls_cert_file
                .clone()
                .zip(config.grpc.tls_key_file.clone()),
            max_subscribers: config.grpc.max_subscribers,
        };
        let (bound, task) =
            crate::grpc::serve(addr, state.clone(), settings, cancel.clone()).await?;
        others.push(("grpc", task));
        Some(bound)
    };

    let instance = instance_name();
    crate::delta::table::set_writer_name(&instance);
    // Every session of this process carries its name: a new leader ends them by it.
    let mut db = db;
    let base = db.get_application_name().unwrap_or("lakets").to_string();
    db.application_name(crate::leadership::application_name(&base, &instance));
    // The Delta operator maintains its own tables, between its windows.
    let maintenance = match (config.jobs.enabled, schedule.maintenance) {
        (true, Some(every)) => Some(MaintenanceSchedule {
            every,
            policy: MaintenancePolicy {
                vacuum_retention: chrono::Duration::from_std(schedule.vacuum_retention)
                    .unwrap_or(chrono::Duration::days(1)),
                ..Default::default()
            },
            instance: instance.clone(),
        }),
        _ => None,
    };

    others.push((
        "collector",
        tokio::spawn(collect_metrics(
            state.clone(),
            config.http.retained_wal_warning.0,
            cancel.clone(),
        )),
    ));

    // The leader's work: the WAL pipeline and the job scheduler.
    let jobs = config.jobs.enabled;
    let work = {
        let (db, state, instance) = (db.clone(), state.clone(), instance.clone());
        move |stop: CancellationToken| {
            let mut work: crate::leadership::Work = Vec::new();
            if jobs {
                work.push((
                    "scheduler",
                    tokio::spawn(lakets_core::jobs::run_scheduler(
                        db.clone(),
                        schedule.clone(),
                        instance.clone(),
                        stop.clone(),
                    )),
                ));
            }
            work.push((
                "pipeline",
                spawn_pipeline(
                    db.clone(),
                    pipeline_config.clone(),
                    &state,
                    maintenance.clone(),
                    stop,
                ),
            ));
            work
        }
    };
    let leadership = crate::leadership::Leadership {
        db: db.clone(),
        slot: slot.clone(),
        instance: instance.clone(),
        lease: config.service.leader_lease.as_std(),
        role: state.role.clone(),
        status: state.status.clone(),
    };
    let pipeline = tokio::spawn(leadership.run(work, cancel.clone()));
    info!(slot = %slot, instance = %instance, http = ?http_addr, grpc = ?grpc_addr, jobs = config.jobs.enabled, "lakets service started");
    Ok(Service {
        state,
        http_addr,
        grpc_addr,
        cancel,
        pipeline,
        others,
    })
}

impl Service {
    /// Waits for the pipeline to stop (on cancel, or a lasting failure), then stops the
    /// rest. The pipeline's error wins; the others' are logged.
    pub async fn wait(self) -> Result<()> {
        let streamed = match self.pipeline.await {
            Ok(r) => r,
            Err(e) => Err(Error::Operator(format!("the WAL pipeline panicked: {e}"))),
        };
        self.cancel.cancel();
        let mut first_error = None;
        for (name, task) in self.others {
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    warn!(component = name, error = %e, "component failed");
                    first_error.get_or_insert(e);
                }
                Err(e) => {
                    first_error.get_or_insert(Error::Operator(format!("{name} panicked: {e}")));
                }
            }
        }
        streamed?;
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// This process's name among the instances of its stream: host, pid and a tag that tells
/// it from an earlier process with the same pid (a restarted container is pid 1 again).
fn instance_name() -> String {
    let tag = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
        & 0xffff;
    format!(
        "{}:{}:{tag:04x}",
        std::env::var("HOSTNAME").unwrap_or_else(|_| "lakets".into()),
        std::process::id()
    )
}

/// The WAL pipeline, restarted after transient failures until `stop`. A definite error
/// stops streaming with the reason, nothing after the change that caused it
/// acknowledged; the task then waits for `stop` so the service stays up to say so
/// (probes, metrics, `lakets status`).
fn spawn_pipeline(
    db: crate::db::DbConfig,
    pipeline_config: PipelineConfig,
    state: &ServiceState,
    maintenance: Option<MaintenanceSchedule>,
    stop: CancellationToken,
) -> JoinHandle<Result<()>> {
    let (status, view, slot) = (state.status.clone(), state.lvc.clone(), state.slot.clone());
    tokio::spawn(async move {
        // A stop recorded by an earlier run: this run tries again (and records it again
        // if the cause is still there).
        if let Err(e) = record_stop(&db, &slot, None).await {
            warn!(error = %e, "could not clear the recorded stop of the stream");
        }
        let outcome = crate::wal::run_with_restarts(
            || {
                pipeline_with_maintenance(
                    &db,
                    pipeline_config.clone(),
                    status.clone(),
                    Some(view.clone()),
                    maintenance.clone(),
                )
            },
            stop.clone(),
        )
        .await;
        let Err(e) = outcome else {
            return Ok(());
        };
        error!(slot = %slot, kind = e.kind_label(), error = %e, "streaming stopped for good: {}", stop_advice(&e));
        metrics::gauge!("lakets_stream_stopped", "reason" => e.kind_label()).set(1.0);
        {
            let mut st = status.lock().unwrap();
            st.streaming = false;
            st.stopped = Some(e.to_string());
            st.last_error = Some(e.to_string());
        }
        if let Err(record) = record_stop(&db, &slot, Some(&e)).await {
            warn!(error = %record, "could not record why the stream stopped");
        }
        stop.cancelled().await;
        Err(e)
    })
}

/// What to do about a definite error, in words (`lakets status` shows it too).
pub fn stop_advice(e: &Error) -> &'static str {
    match e {
        Error::Diverged(_) => {
            "the Delta table no longer matches PostgreSQL: run `lakets verify TABLE` to see \
             where, then stop the service and run `lakets resync --force`"
        }
        Error::Unsupported(_) => {
            "fix what the message names (a schema change, a value, a replica identity), then \
             restart `lakets run`; nothing after the change was acknowledged, so nothing is lost"
        }
        Error::NotReady(_)
        | Error::InvalidInput(_)
        | Error::Conflict(_)
        | Error::NotFound { .. } => {
            "change the setup as the message says, then restart `lakets run`"
        }
        _ => {
            "nothing after the change was acknowledged, so nothing is lost; fix the cause, then \
             restart `lakets run`"
        }
    }
}

/// Records why the stream of `slot` stopped for good (`None`: clears it).
async fn record_stop(db: &crate::db::DbConfig, slot: &str, e: Option<&Error>) -> Result<()> {
    let client = crate::db::connect_with(db).await?;
    let (reason, kind) = match e {
        Some(e) => (
            Some(format!("{e}. What to do: {}", stop_advice(e))),
            Some(e.kind_label()),
        ),
        None => (None, None),
    };
    lakets_core::catalog::replication::record_stop(&client, slot, reason.as_deref(), kind).await
}

fn parse_addr(key: &str, text: &str) -> Result<SocketAddr> {
    text.parse().map_err(|e| {
        Error::invalid(format!(
            "{key} {text:?} is not an address like 127.0.0.1:9187 ({e})"
        ))
    })
}

/// Exports what lives in the catalog (slot retention, chunks, rollups, Delta files) as
/// gauges, every [`COLLECT_EVERY`]; warns when the slot retains more WAL than `warn_bytes`.
async fn collect_metrics(
    state: Arc<ServiceState>,
    warn_bytes: u64,
    cancel: CancellationToken,
) -> Result<()> {
    let mut tick = tokio::time::interval(COLLECT_EVERY);
    let mut round: u64 = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = cancel.cancelled() => return Ok(()),
        }
        if let Err(e) = collect_once(&state, warn_bytes, round.is_multiple_of(4)).await {
            // Metrics are best effort: the database may be restarting.
            warn!(error = %e, "collecting catalog metrics failed");
        }
        round += 1;
    }
}

async fn collect_once(state: &ServiceState, warn_bytes: u64, with_delta: bool) -> Result<()> {
    let client = crate::db::connect_with(&state.db).await?;
    let live = state.status.lock().unwrap().clone();
    let s = crate::status::collect(&client, &state.slot, Some(&live)).await?;
    let retained = s.retained_wal_bytes.unwrap_or(0);
    metrics::gauge!("lakets_slot_retained_wal_bytes").set(retained as f64);
    metrics::gauge!("lakets_slot_active").set(if s.slot_active { 1.0 } else { 0.0 });
    if warn_bytes > 0 && retained as u64 > warn_bytes {
        warn!(
            slot = %s.slot,
            retained = %crate::report::human_bytes(retained),
            threshold = %crate::report::human_bytes(warn_bytes as i64),
            "the slot retains more WAL than the warning threshold; is an operator stuck?"
        );
    }
    crate::series::export_for(&s);
    for t in &s.tables {
        for status in ["active", "tiered", "dropped"] {
            metrics::gauge!("lakets_chunks", "table" => t.table.clone(), "status" => status)
                .set(t.chunks.get(status).copied().unwrap_or(0) as f64);
        }
    }
    for r in &s.rollups {
        metrics::gauge!("lakets_rollup_invalidation_backlog", "rollup" => r.name.clone())
            .set(r.pending_invalidations as f64);
        if let Some(age) = r.watermark_age_seconds {
            metrics::gauge!("lakets_rollup_watermark_age_seconds", "rollup" => r.name.clone())
                .set(age);
        }
    }
    if with_delta {
        for sync in lakets_core::coldtier::sync::list_syncs(&client).await? {
            if let Some(table) = crate::delta::table::open(&sync.location).await? {
                // A shared table: this cluster's files.
                let files =
                    crate::delta::read::source_files(&table, sync.source.as_deref()).await?;
                let bytes: i64 = files.iter().map(|f| f.size()).sum();
                let name = sync.table.to_string();
                metrics::gauge!("lakets_delta_files", "table" => name.clone())
                    .set(files.len() as f64);
                metrics::gauge!("lakets_delta_bytes", "table" => name).set(bytes as f64);
            }
        }
    }
    Ok(())
}
