//! The mirror on a real S3-compatible store (moto's server, tests/common/s3.rs) with faults
//! between lakets and the store: 5xx answers, answers lost after the store applied a
//! commit, a slow store, requests held past the client's timeout, a SIGKILL among them,
//! and a store down for a minute (`LAKETS_S3_OUTAGE_SECS`, default 60) while the gate is
//! asked to drop chunks. Through all of it: the snapshot, the stream of inserts, updates
//! and deletes, the sink's compaction and the gate run against the store. Afterwards:
//! `verify` passes, the Delta table holds no duplicate key (read by the `deltalake`
//! Python package, straight from the store), every dropped chunk is in Delta, nothing was
//! dropped while the store was down, every commit was a conditional put, the faults and
//! the lag showed in the metrics, and no log line carries the secret key, at debug level.
//!
//! Its own binary: it points the process's `AWS_*` environment at the store.

mod common;

use std::time::{Duration, Instant};

use common::s3::{BUCKET, Faults, Fixture};
use common::wal::{lsn_now, wait_for, wait_until_confirmed};
use common::workload::Rng;
use lakets::interval::Interval;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn the_mirror_on_s3_stays_exact_through_store_faults_kills_and_an_outage() {
    let Some(fixture) = common::s3::fixture() else {
        eprintln!("SKIPPED: set LAKETS_INTEROP_PYTHON to a Python with moto[server]==5.2.5");
        return;
    };
    let _serial = common::s3::serial();
    runtime().block_on(through_faults(fixture));
}

async fn scrape(port: u16) -> String {
    common::http_get(port, "/metrics").await.1
}

async fn through_faults(fixture: &Fixture) {
    let proxy = &fixture.proxy;
    let outage = Duration::from_secs(
        std::env::var("LAKETS_S3_OUTAGE_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(60),
    );
    let seed = common::workload::seed("LAKETS_CHAOS_SEED");
    eprintln!("s3 seed {seed} (LAKETS_CHAOS_SEED to replay), outage {outage:?}");

    let mut db = common::fresh_db("s3").await;
    common::workload_chronotable(&mut db, 1800).await;
    // The snapshot, through a store that fails a fifth of its requests.
    proxy.set(Faults {
        fail_before: 0.2,
        ..Faults::default()
    });
    let location = format!("s3://{BUCKET}/{}/ticks", db.name);
    let sync = common::sync_to(&db, "ticks", &location).await;
    proxy.set(Faults::default());
    assert_eq!(sync.location.scheme(), "s3");

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("lakets.toml");
    let log = dir.path().join("lakets.log");
    let http = common::free_port();
    std::fs::write(
        &config,
        format!(
            r#"
[service]
flush_interval = "200 milliseconds"
[http]
listen = "127.0.0.1:{http}"
[grpc]
listen = "off"
[jobs]
partitions_every = "2 seconds"
tiering_every = "2 seconds"
retention_every = "2 seconds"
maintenance_every = "2 seconds"
gate_wait = "3 seconds"
[[tables]]
name = "ticks"
time_column = "time"
chunk_interval = "1 hour"
premake = 2
"#
        ),
    )
    .unwrap();
    // Everything at debug: not one line may carry the secret key.
    let spawn = || common::spawn_service_logging(&db, &config, &log, "debug");
    let mut service = spawn();

    let stop = tokio_util::sync::CancellationToken::new();
    let writer = common::workload::spawn_writer(
        db.url.clone(),
        Rng(seed.rotate_left(17) | 1),
        15,
        stop.clone(),
    );

    let phases = [
        (
            "5xx answers",
            Faults {
                fail_before: 0.25,
                fail_after: 0.1,
                ..Faults::default()
            },
            12,
        ),
        (
            "lost answers of applied commits",
            Faults {
                lose_commit_answers: true,
                ..Faults::default()
            },
            12,
        ),
        (
            "a slow store",
            Faults {
                delay: Duration::from_millis(300),
                ..Faults::default()
            },
            8,
        ),
        (
            "requests held past the client's timeout",
            Faults {
                hang: 0.08,
                ..Faults::default()
            },
            14,
        ),
        (
            "5xx answers and a SIGKILL",
            Faults {
                fail_before: 0.2,
                fail_after: 0.05,
                ..Faults::default()
            },
            10,
        ),
    ];
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(4)).await;
    for (name, faults, secs) in phases {
        eprintln!("{:>6.1} s: {name}", started.elapsed().as_secs_f64());
        proxy.set(faults);
        if name.contains("SIGKILL") {
            tokio::time::sleep(Duration::from_secs(secs / 2)).await;
            service.kill();
            service = spawn();
            tokio::time::sleep(Duration::from_secs(secs / 2)).await;
        } else {
            tokio::time::sleep(Duration::from_secs(secs)).await;
        }
    }

    // The store goes down; meanwhile the chunks older than 3 hours become due for a drop,
    // which the gate must refuse while it cannot read the Delta table.
    proxy.set(Faults::default());
    let before = scrape(http).await;
    let deferrals_before = common::metric_sum(&before, "lakets_chunk_deferrals_total", &[]);
    eprintln!(
        "{:>6.1} s: the store is down for {outage:?}",
        started.elapsed().as_secs_f64()
    );
    proxy.set(Faults {
        down: true,
        ..Faults::default()
    });
    let down_at: chrono::DateTime<chrono::Utc> = db.scalar("SELECT now()").await;
    lakets::lifecycle::policy::set_policy(
        &db.client,
        "ticks",
        Some(Interval::hours(2)),
        Some(Interval::hours(3)),
    )
    .await
    .unwrap();
    tokio::time::sleep(outage).await;
    let during = scrape(http).await;
    let up_at: chrono::DateTime<chrono::Utc> = db.scalar("SELECT now()").await;
    proxy.set(Faults::default());
    eprintln!(
        "{:>6.1} s: the store is up",
        started.elapsed().as_secs_f64()
    );

    // What the outage showed: the store's failures, the stream's retries, the sink's lag,
    // the gate's refusals.
    let store_errors = common::metric_sum(
        &during,
        "lakets_object_store_requests_total",
        &["outcome=\"error\""],
    );
    let restarts = common::metric_sum(&during, "lakets_wal_restarts_total", &[]);
    let lag = common::metric_sum(
        &during,
        "lakets_operator_lag_seconds",
        &["operator=\"delta\""],
    );
    let deferrals =
        common::metric_sum(&during, "lakets_chunk_deferrals_total", &[]) - deferrals_before;
    eprintln!(
        "during the outage: {store_errors} store errors, {restarts} restarts, delta lag {lag:.0} s, {deferrals} deferrals"
    );
    assert!(store_errors > 0.0, "store errors show in the metrics");
    assert!(restarts > 0.0, "the stream's retries show in the metrics");
    // A healthy stream is well under a second behind (200 ms windows). Writes go on through
    // the outage, so the oldest row the Delta operator lacks is about as old as the outage,
    // whether a run is stuck in a flush or no run can start (the lag keeps growing then).
    assert!(
        lag >= outage.as_secs_f64() / 2.0,
        "the Delta operator's lag shows the whole outage ({outage:?}): {lag} s"
    );
    assert!(
        deferrals > 0.0,
        "the gate refused drops while the store was down"
    );
    let dropped_while_down: i64 = db
        .client
        .query_one(
            "SELECT count(*) FROM lakets._chunk_metadata
              WHERE status = 'dropped' AND dropped_at > $1 AND dropped_at < $2",
            &[&down_at, &up_at],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        dropped_while_down, 0,
        "no chunk was dropped while the store was down"
    );

    // The stream catches up by itself, and the gate drops what is due.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.cancel();
    let statements = writer.await.unwrap();
    assert!(
        statements > 200,
        "the workload ran: {statements} statements"
    );
    let slot = lakets::wal::slot::default_slot_name(&db.name);
    let end = lsn_now(&db).await;
    wait_until_confirmed(&db.client, &slot, end, Duration::from_secs(180)).await;
    eprintln!("{:>6.1} s: caught up", started.elapsed().as_secs_f64());
    wait_for(
        "the due chunks dropped",
        Duration::from_secs(90),
        async || !common::dropped_chunks(&db).await.is_empty(),
    )
    .await;
    let after = scrape(http).await;
    let lag_after = common::metric_sum(
        &after,
        "lakets_operator_lag_seconds",
        &["operator=\"delta\""],
    );
    assert!(
        lag_after < 10.0,
        "the lag is gone after the catch-up: {lag_after} s"
    );
    let exit = service.stop();
    assert!(exit.success(), "lakets run stopped cleanly: {exit:?}");

    // Exact: verify (per chunk, row by row), the dropped chunks, no duplicate key.
    let report = lakets::verify::verify(&db.client, "ticks").await.unwrap();
    if !report.ok {
        let _ = dir.keep();
    }
    assert!(
        report.ok,
        "seed {seed}: verify: {:?}\n(service log: {})",
        report.differences,
        log.display()
    );
    let dropped = common::dropped_chunks(&db).await;
    let mut dropped_rows = 0;
    for chunk in &dropped {
        let in_delta = common::delta_rows_in(&sync.location, chunk.start, chunk.end).await;
        assert_eq!(
            in_delta, chunk.rows as u64,
            "seed {seed}: dropped chunk {} held {} rows, Delta {in_delta}",
            chunk.name, chunk.rows
        );
        dropped_rows += in_delta;
    }
    let live: i64 = db.scalar("SELECT count(*) FROM ticks").await;
    let (rows, keys) = python_rows_and_keys(&location);
    assert_eq!(keys, rows, "seed {seed}: duplicate keys in Delta");
    assert_eq!(
        rows,
        live as u64 + dropped_rows,
        "seed {seed}: the deltalake package reads every row from the store"
    );

    // The faults happened, and every commit was a conditional put.
    let stats = proxy.stats();
    let n = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("proxy: {stats:?}");
    assert!(n(&stats.failed_before) > 0 && n(&stats.failed_after) > 0);
    assert!(n(&stats.hung) > 0, "requests were held");
    assert!(n(&stats.refused) > 0, "the store was down");
    assert!(
        n(&stats.lost_commit_answers) > 0 && n(&stats.commit_conflicts) > 0,
        "commits landed whose answers were lost, and the client's retry met them"
    );
    assert!(n(&stats.commit_puts) > 0);
    assert_eq!(
        n(&stats.unconditional_commit_puts),
        0,
        "every commit is written with If-None-Match: *"
    );
    let compactions: i64 = db
        .scalar(
            "SELECT count(*) FROM lakets._job_runs, jsonb_array_elements(details) d
              WHERE job = 'delta_maintenance' AND (d -> 'compaction' ->> 'files_removed')::int > 0",
        )
        .await;
    assert!(compactions > 0, "the sink compacted on the store");

    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.len() > 10_000, "the service logged at debug");
    assert!(
        !text.contains(common::s3::SECRET_KEY),
        "the secret key appears in the service's log"
    );
    eprintln!(
        "s3 seed {seed}: {statements} statements, {} chunks dropped, {rows} rows in Delta, {:.0} s",
        dropped.len(),
        started.elapsed().as_secs_f64()
    );
}

/// (rows, distinct keys) of the Delta table at `location`, as the `deltalake` Python
/// package reads it from the store (the process's environment names the store).
fn python_rows_and_keys(location: &str) -> (u64, u64) {
    let python = std::env::var("LAKETS_INTEROP_PYTHON").unwrap();
    // DataFusion inside the package does the counting (no pyarrow needed).
    let script = "import sys, json, deltalake as d
t = d.QueryBuilder().register('t', d.DeltaTable(sys.argv[1])).execute(
    'SELECT count(*) AS n, count(DISTINCT (symbol, time)) AS k FROM t').read_all()
print(json.dumps([t.column('n')[0].as_py(), t.column('k')[0].as_py()]))";
    let out = std::process::Command::new(python)
        .args(["-c", script, location])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "deltalake (Python) reading {location}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let [rows, keys]: [u64; 2] = serde_json::from_slice(&out.stdout).unwrap();
    (rows, keys)
}
