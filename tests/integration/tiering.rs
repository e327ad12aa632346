//! Tiering and retention through the fail-closed durability gate, against a real
//! PostgreSQL, a real Delta table and the real pipeline: nothing is tiered or dropped
//! while the Delta operator is stopped or behind a late write, a count mismatch blocks the
//! drop, every deferral says why, and chunks move active -> tiered -> dropped once their
//! data is in Delta. Also: policy validation, the gate on `drop-chunks`, writers of
//! current chunks while an old one is locked, and one job leader among instances.

use crate::common;

use std::time::Duration;

use common::{TestDb, fresh_db};
use lakets::delta::schema::Partitioning;
use lakets::interval::Interval;
use lakets::lifecycle::{self, GateSettings};
use lakets::wal::{PipelineConfig, SourceSettings};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// One pipeline at a time in this process.
static SERIAL: Mutex<()> = Mutex::const_new(());

const QUICK: GateSettings = GateSettings {
    lock_timeout: Duration::from_secs(2),
    wait: Duration::from_secs(3),
};
const PATIENT: GateSettings = GateSettings {
    lock_timeout: Duration::from_secs(2),
    wait: Duration::from_secs(30),
};

async fn tier_after_2h_drop_after_4h(db: &TestDb) {
    lifecycle::policy::set_policy(
        &db.client,
        "ticks",
        Some(Interval::hours(2)),
        Some(Interval::hours(4)),
    )
    .await
    .unwrap();
}

async fn start(db: &TestDb) -> (CancellationToken, JoinHandle<lakets::Result<()>>) {
    let (shutdown, run, _) = start_with_status(db).await;
    (shutdown, run)
}

type Status = std::sync::Arc<std::sync::Mutex<lakets::wal::PipelineStatus>>;

async fn start_with_status(
    db: &TestDb,
) -> (CancellationToken, JoinHandle<lakets::Result<()>>, Status) {
    let slot = lakets::wal::slot::default_slot_name(&db.name);
    let mut config = PipelineConfig::new(SourceSettings::new(&slot, "lakets"));
    config.flush_interval = Duration::from_millis(100);
    config.ack_interval = Duration::from_millis(100);
    config.heartbeat_interval = Some(Duration::from_millis(300));
    let shutdown = CancellationToken::new();
    let db_config = lakets::db::parse_config(&db.url).unwrap();
    let status: Status = Default::default();
    let stop = shutdown.clone();
    let shared = status.clone();
    let run = tokio::spawn(async move {
        lakets::wal::run_with_restarts(
            || lakets::service::standard_pipeline(&db_config, config.clone(), shared.clone(), None),
            stop,
        )
        .await
    });
    (shutdown, run, status)
}

async fn stop(shutdown: CancellationToken, run: JoinHandle<lakets::Result<()>>) {
    shutdown.cancel();
    run.await.unwrap().unwrap();
}

async fn status_of(db: &TestDb, status: &str) -> Vec<String> {
    db.client
        .query(
            "SELECT chunk_name FROM lakets._chunk_metadata WHERE status = $1 ORDER BY 1",
            &[&status],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_move_active_tiered_dropped_only_once_their_data_is_in_delta() {
    let _serial = SERIAL.lock().await;
    common::init_test_logging();
    let mut db = fresh_db("tier_gate").await;
    let dir = tempfile::tempdir().unwrap();
    let sync = common::synced_ticks(&mut db, dir.path(), Some(2)).await;
    tier_after_2h_drop_after_4h(&db).await;

    // The Delta operator never ran: nothing is tiered, and each chunk says why.
    let report = lifecycle::tier(&db.config(), None, None, QUICK, None)
        .await
        .unwrap();
    assert!(report.moved.is_empty(), "{report:?}");
    assert!(report.deferred.len() >= 7, "{report:?}");
    assert!(
        report
            .deferred
            .iter()
            .all(|(_, r)| r.starts_with("lagging")),
        "{report:?}"
    );
    let recorded: Option<String> = db
        .scalar("SELECT max(deferred_reason) FROM lakets._chunk_metadata")
        .await;
    assert!(recorded.unwrap().starts_with("lagging"));

    // With the service running, the old chunks are tiered.
    let (shutdown, run) = start(&db).await;
    let report = lifecycle::tier(&db.config(), None, None, PATIENT, None)
        .await
        .unwrap();
    assert!(report.deferred.is_empty(), "{report:?}");
    let tiered = status_of(&db, "tiered").await;
    assert!(tiered.len() >= 7, "{tiered:?}");
    let cleared: i64 = db
        .scalar("SELECT count(*) FROM lakets._chunk_metadata WHERE status = 'tiered' AND deferred_reason IS NOT NULL")
        .await;
    assert_eq!(cleared, 0, "a tiered chunk keeps no deferral reason");
    stop(shutdown, run).await;

    // A late row into an old, tiered chunk while the operator is stopped: the drop waits.
    db.exec("INSERT INTO ticks VALUES (now() - interval '7 hours 30 minutes', 'LATE', 1)")
        .await;
    let report = lifecycle::retention(&db.config(), None, QUICK, None)
        .await
        .unwrap();
    assert!(report.moved.is_empty(), "{report:?}");
    assert!(status_of(&db, "dropped").await.is_empty());
    let late: i64 = db
        .scalar("SELECT count(*) FROM ticks WHERE symbol = 'LATE'")
        .await;
    assert_eq!(late, 1);

    // The operator catches up: chunks older than 4 hours are dropped, and Delta holds
    // every row they had, the late one included.
    let (shutdown, run) = start(&db).await;
    let report = lifecycle::retention(&db.config(), None, PATIENT, None)
        .await
        .unwrap();
    assert!(report.deferred.is_empty(), "{report:?}");
    let dropped = status_of(&db, "dropped").await;
    assert!(dropped.len() >= 5, "{dropped:?}");
    for chunk in common::dropped_chunks(&db).await {
        let name = &chunk.name;
        let exists: bool = db
            .client
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[name])
            .await
            .unwrap()
            .get(0);
        assert!(!exists, "{name} still exists");
        assert_eq!(
            common::delta_rows_in(&sync.location, chunk.start, chunk.end).await,
            chunk.rows as u64,
            "Delta holds every row of dropped chunk {name}"
        );
    }
    let late_in_delta: i64 = {
        let delta = lakets::delta::table::open(&sync.location)
            .await
            .unwrap()
            .unwrap();
        let shape = lakets::delta::mirror::shape_of(&delta, "time", Partitioning::Day).unwrap();
        lakets::delta::read::scan(&delta, &shape)
            .await
            .unwrap()
            .iter()
            .filter(|r| r[1] == lakets::delta::schema::Cell::Str("LATE".into()))
            .count() as i64
    };
    assert_eq!(late_in_delta, 1, "the late row is in Delta");
    stop(shutdown, run).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_count_mismatch_blocks_the_drop() {
    let _serial = SERIAL.lock().await;
    let mut db = fresh_db("tier_mismatch").await;
    let dir = tempfile::tempdir().unwrap();
    let sync = common::synced_ticks(&mut db, dir.path(), Some(2)).await;
    lifecycle::policy::set_policy(
        &db.client,
        "ticks",
        Some(Interval::hours(2)),
        Some(Interval::hours(2)),
    )
    .await
    .unwrap();
    let (shutdown, run) = start(&db).await;
    let report = lifecycle::tier(&db.config(), None, None, PATIENT, None)
        .await
        .unwrap();
    assert!(report.deferred.is_empty(), "{report:?}");

    // Rows vanish from the Delta table behind lakets' back (every file removed).
    let mut delta = lakets::delta::table::open(&sync.location)
        .await
        .unwrap()
        .unwrap();
    let removes: Vec<_> = {
        use futures_util::TryStreamExt;
        delta
            .get_active_add_actions_by_partitions(&[])
            .try_collect::<Vec<_>>()
            .await
            .unwrap()
            .iter()
            .map(|v| deltalake::kernel::Action::Remove(v.remove_action(true)))
            .collect()
    };
    lakets::delta::table::commit(
        &mut delta,
        removes,
        deltalake::protocol::DeltaOperation::Delete { predicate: None },
        None,
    )
    .await
    .unwrap();

    let report = lifecycle::retention(&db.config(), None, PATIENT, None)
        .await
        .unwrap();
    assert!(report.moved.is_empty(), "{report:?}");
    assert!(
        report
            .deferred
            .iter()
            .all(|(_, r)| r.starts_with("count mismatch")),
        "{report:?}"
    );
    assert!(status_of(&db, "dropped").await.is_empty());
    // The scheduler's retention job records the deferral in lakets._job_runs.
    let schedule = lakets::jobs::Schedule {
        gate: PATIENT,
        ..Default::default()
    };
    lakets::jobs::run_recorded(
        &db.config(),
        &mut db.client,
        lakets::jobs::Job::Retention,
        &schedule,
        "t",
    )
    .await
    .unwrap();
    let (outcome, details): (String, serde_json::Value) = {
        let row = db
            .client
            .query_one(
                "SELECT outcome, details FROM lakets._job_runs WHERE job = 'retention' ORDER BY id DESC LIMIT 1",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(outcome, "deferred");
    assert!(details.to_string().contains("count mismatch"), "{details}");
    assert!(status_of(&db, "dropped").await.is_empty());

    // `lakets verify` names the chunks that disagree.
    let verified = lakets::verify::verify(&db.client, "ticks").await.unwrap();
    assert!(!verified.ok);
    assert!(
        verified.differences[0].contains("PostgreSQL has"),
        "{:?}",
        verified.differences
    );
    // ... and the rows behind the difference.
    let missing = verified
        .chunks
        .iter()
        .find(|c| !c.ok && c.delta_rows == 0)
        .expect("a chunk missing from Delta");
    assert_eq!(
        missing.only_in_postgres.len(),
        (missing.postgres_rows as usize).min(5),
        "{missing:?}"
    );
    assert!(missing.only_in_delta.is_empty(), "{missing:?}");
    assert!(
        missing.only_in_postgres[0].starts_with("(time=20")
            && missing.only_in_postgres[0].contains(", symbol=\"S"),
        "{missing:?}"
    );
    assert!(
        verified.differences[0].contains(&missing.only_in_postgres[0]),
        "{:?}",
        verified.differences
    );
    stop(shutdown, run).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_chunks_on_a_synced_table_goes_through_the_gate_and_current_writers_are_not_blocked() {
    let _serial = SERIAL.lock().await;
    let mut db = fresh_db("tier_drop_chunks").await;
    let dir = tempfile::tempdir().unwrap();
    common::synced_ticks(&mut db, dir.path(), Some(2)).await;
    // No consumer: drop-chunks defers (it does not fail, and drops nothing).
    let report = lakets::chronotable::drop_chunks(&db.config(), "ticks", Interval::hours(3), None)
        .await
        .unwrap();
    assert!(report.dropped.is_empty());
    assert!(!report.deferred.is_empty());
    assert!(
        report
            .deferred
            .iter()
            .all(|(_, r)| r.starts_with("lagging"))
    );

    // While the gate holds an old chunk locked (waiting for a consumer that is not there),
    // writes to the current chunk go through.
    lifecycle::policy::set_policy(&db.client, "ticks", Some(Interval::hours(2)), None)
        .await
        .unwrap();
    let oldest: String = db
        .scalar("SELECT chunk_name FROM lakets._chunk_metadata ORDER BY range_start LIMIT 1")
        .await;
    let url = db.url.clone();
    let tiering = tokio::spawn(async move {
        let db = lakets::db::parse_config(&url).unwrap();
        let slow = GateSettings {
            lock_timeout: Duration::from_secs(2),
            wait: Duration::from_secs(8),
        };
        lifecycle::tier(&db, None, Some(&oldest), slow, None).await
    });
    // Wait until the gate holds a chunk lock.
    common::wal::wait_for("the gate to lock a chunk", Duration::from_secs(10), async || {
        db.scalar::<i64>(
            "SELECT count(*) FROM pg_locks WHERE mode = 'ExclusiveLock' AND locktype = 'relation' AND granted",
        )
        .await
            > 0
    })
    .await;
    db.exec("INSERT INTO ticks VALUES (now(), 'CURRENT', 1)")
        .await;
    assert!(
        !tiering.is_finished(),
        "the insert into the current chunk completed while the old chunk was locked"
    );
    let report = tiering.await.unwrap().unwrap();
    assert!(report.moved.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_are_validated() {
    let _serial = SERIAL.lock().await;
    let mut db = fresh_db("tier_policy").await;
    db.exec(
        "CREATE TABLE plain_ticks (time timestamptz NOT NULL, v int);
         INSERT INTO plain_ticks VALUES (now() - interval '5 hours', 1), (now(), 2);",
    )
    .await;
    let mut opts = lakets::chronotable::CreateOptions::new("time");
    opts.chunk_interval = Interval::hours(1);
    lakets::chronotable::create_chronotable(&mut db.client, "plain_ticks", &opts)
        .await
        .unwrap();
    let cases = [
        (Some(Interval::hours(1)), None, "not synced"),
        (None, None, "give --tier-after"),
        (
            Some(Interval::hours(2)),
            Some(Interval::hours(1)),
            "at least",
        ),
        (Some(Interval::ZERO), None, "positive"),
    ];
    for (tier, drop, expected) in cases {
        let err = lifecycle::policy::set_policy(&db.client, "plain_ticks", tier, drop)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(expected), "{tier:?} {drop:?}: {err}");
    }
    let none: i64 = db
        .scalar("SELECT count(*) FROM lakets._retention_policies")
        .await;
    assert_eq!(none, 0);
    // An unsynced table: retention drops old chunks directly.
    let p =
        lifecycle::policy::set_policy(&db.client, "plain_ticks", None, Some(Interval::hours(1)))
            .await
            .unwrap();
    assert!(!p.synced);
    let report = lifecycle::retention(&db.config(), None, QUICK, None)
        .await
        .unwrap();
    assert!(!report.moved.is_empty(), "{report:?}");
    let left: i64 = db
        .scalar("SELECT count(*) FROM plain_ticks WHERE time < now() - interval '2 hours'")
        .await;
    assert_eq!(left, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_instance_runs_the_jobs_and_another_takes_over_when_it_stops() {
    let _serial = SERIAL.lock().await;
    let db = fresh_db("tier_leader").await;
    let schedule = lakets::jobs::Schedule {
        partitions: Some(Duration::from_millis(200)),
        tiering: None,
        retention: None,
        maintenance: None,
        ..Default::default()
    };
    let config = lakets::db::parse_config(&db.url).unwrap();
    let stop_a = CancellationToken::new();
    let stop_b = CancellationToken::new();
    let a = tokio::spawn(lakets::jobs::run_scheduler(
        config.clone(),
        schedule.clone(),
        "a".into(),
        stop_a.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let b = tokio::spawn(lakets::jobs::run_scheduler(
        config.clone(),
        schedule.clone(),
        "b".into(),
        stop_b.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let runs = |instance: &'static str| {
        let client = &db.client;
        async move {
            client
                .query_one(
                    "SELECT count(*) FROM lakets._job_runs WHERE instance = $1 AND outcome = 'ok'",
                    &[&instance],
                )
                .await
                .unwrap()
                .get::<_, i64>(0)
        }
    };
    assert!(runs("a").await >= 3, "the leader runs its jobs");
    assert_eq!(runs("b").await, 0, "the standby runs nothing");
    // The leader stops: the standby takes over (it retries every 5 seconds).
    stop_a.cancel();
    a.await.unwrap().unwrap();
    common::wal::wait_for(
        "the standby to take over",
        Duration::from_secs(15),
        async || runs("b").await > 0,
    )
    .await;
    let overlapping: i64 = db
        .scalar(
            "SELECT count(*) FROM lakets._job_runs x JOIN lakets._job_runs y
                ON x.instance <> y.instance AND x.started_at < y.finished_at AND y.started_at < x.finished_at",
        )
        .await;
    assert_eq!(overlapping, 0, "two instances ran jobs at the same time");
    stop_b.cancel();
    b.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_store_defers_tiering_and_a_racing_late_insert_ends_up_in_delta() {
    let _serial = SERIAL.lock().await;
    let mut db = fresh_db("tier_store").await;
    let dir = tempfile::tempdir().unwrap();
    let sync = common::synced_ticks(&mut db, dir.path(), Some(2)).await;
    lifecycle::policy::set_policy(&db.client, "ticks", Some(Interval::hours(2)), None)
        .await
        .unwrap();
    let (shutdown, run) = start(&db).await;
    let oldest: String = db
        .scalar("SELECT chunk_name FROM lakets._chunk_metadata ORDER BY range_start LIMIT 1")
        .await;

    // The object store fails (the next log entry's name is taken): a late row cannot reach
    // Delta, so its chunk is not tiered.
    let version = lakets::delta::table::open(&sync.location)
        .await
        .unwrap()
        .unwrap()
        .version()
        .unwrap();
    let squatter = dir
        .path()
        .join("ticks/_delta_log")
        .join(format!("{:020}.json", version + 1));
    std::fs::create_dir(&squatter).unwrap();
    db.exec(
        "INSERT INTO ticks VALUES (now() - interval '9 hours 59 minutes 30 seconds', 'LATE', 1)",
    )
    .await;
    let report = lifecycle::tier(&db.config(), None, Some(&oldest), QUICK, None)
        .await
        .unwrap();
    assert!(report.moved.is_empty(), "{report:?}");
    assert!(report.deferred[0].1.starts_with("lagging"), "{report:?}");

    // The store heals. A late insert races with the tiering of its chunk: it waits for the
    // gate's lock, commits after it, and still reaches Delta.
    std::fs::remove_dir(&squatter).unwrap();
    let url = db.url.clone();
    let chunk = oldest.clone();
    let tiering = tokio::spawn(async move {
        let db = lakets::db::parse_config(&url).unwrap();
        lifecycle::tier(&db, None, Some(&chunk), PATIENT, None).await
    });
    common::wal::wait_for("the gate to lock the chunk", Duration::from_secs(10), async || {
        db.scalar::<i64>(
            "SELECT count(*) FROM pg_locks WHERE mode = 'ExclusiveLock' AND locktype = 'relation' AND granted",
        )
        .await
            > 0
    })
    .await;
    let writer = db.connect().await;
    writer
        .batch_execute(
            "INSERT INTO ticks VALUES (now() - interval '9 hours 59 minutes 40 seconds', 'RACE', 2)",
        )
        .await
        .unwrap();
    let report = tiering.await.unwrap().unwrap();
    assert_eq!(report.moved, vec![oldest.clone()], "{report:?}");
    // Both late rows are in Delta once the stream catches up (the gate re-checks at drop).
    common::wal::wait_for(
        "the late rows in Delta",
        Duration::from_secs(30),
        async || {
            let delta = lakets::delta::table::open(&sync.location)
                .await
                .unwrap()
                .unwrap();
            let shape = lakets::delta::mirror::shape_of(&delta, "time", Partitioning::Day).unwrap();
            lakets::delta::read::scan(&delta, &shape)
            .await
            .unwrap()
            .iter()
            .filter(|r| {
                matches!(&r[1], lakets::delta::schema::Cell::Str(s) if s == "LATE" || s == "RACE")
            })
            .count()
            == 2
        },
    )
    .await;
    stop(shutdown, run).await;
}

/// Chunks changed behind lakets' back are never dropped: one detached by hand (it leaves
/// the publication, so later writes to it would never reach Delta) and then updated with
/// its row count unchanged, and one dropped by hand. Both defer with the reason, at every
/// run, and the Delta table keeps every row of both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_detached_or_dropped_by_hand_defer_and_lose_nothing() {
    let _serial = SERIAL.lock().await;
    common::init_test_logging();
    let mut db = fresh_db("tier_by_hand").await;
    let dir = tempfile::tempdir().unwrap();
    let sync = common::synced_ticks(&mut db, dir.path(), Some(2)).await;
    tier_after_2h_drop_after_4h(&db).await;
    let old: Vec<(String, i64, i64)> = db
        .client
        .query(
            "SELECT chunk_name, (extract(epoch FROM range_start) * 1000000)::bigint,
                    (extract(epoch FROM range_end) * 1000000)::bigint
               FROM lakets._chunk_metadata
              WHERE range_end < now() - interval '5 hours' ORDER BY range_start DESC LIMIT 2",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let [(detached, d_start, d_end), (dropped, x_start, x_end)] = &old[..] else {
        panic!("two old chunks expected: {old:?}");
    };
    let (shutdown, run) = start(&db).await;
    // Everything so far reaches Delta (the first tier run waits for it), then the two
    // chunks are changed by hand.
    let report = lifecycle::tier(&db.config(), None, None, PATIENT, None)
        .await
        .unwrap();
    assert!(report.deferred.is_empty(), "{report:?}");
    let in_delta_detached = common::delta_rows_in(&sync.location, *d_start, *d_end).await;
    let in_delta_dropped = common::delta_rows_in(&sync.location, *x_start, *x_end).await;
    assert!(in_delta_detached > 0 && in_delta_dropped > 0);
    db.exec(&format!(
        "ALTER TABLE ticks DETACH PARTITION {detached};
         UPDATE {detached} SET price = price + 1000;
         DROP TABLE {dropped};"
    ))
    .await;

    for _ in 0..2 {
        let report = lifecycle::retention(&db.config(), None, QUICK, None)
            .await
            .unwrap();
        let reason = |chunk: &str| {
            report
                .deferred
                .iter()
                .find(|(c, _)| c.contains(chunk))
                .map(|(_, r)| r.clone())
                .unwrap_or_else(|| panic!("{chunk} was not deferred: {report:?}"))
        };
        assert!(
            reason(detached).contains("no longer a partition"),
            "{report:?}"
        );
        assert!(reason(dropped).contains("missing"), "{report:?}");
        assert!(
            !report
                .moved
                .iter()
                .any(|c| c.contains(detached.as_str()) || c.contains(dropped.as_str())),
            "{report:?}"
        );
    }
    let statuses: Vec<String> = db
        .client
        .query(
            "SELECT status FROM lakets._chunk_metadata WHERE chunk_name = ANY($1) ORDER BY 1",
            &[&vec![detached.clone(), dropped.clone()]],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(statuses, vec!["tiered", "tiered"], "neither is dropped");
    let still_there: bool = db
        .scalar(&format!("SELECT to_regclass('{detached}') IS NOT NULL"))
        .await;
    assert!(still_there, "the detached chunk is left to its owner");
    stop(shutdown, run).await;
    assert_eq!(
        common::delta_rows_in(&sync.location, *d_start, *d_end).await,
        in_delta_detached
    );
    assert_eq!(
        common::delta_rows_in(&sync.location, *x_start, *x_end).await,
        in_delta_dropped
    );
}

/// TRUNCATE of a table whose oldest chunks were dropped empties the hot table, and the
/// Delta rows and candles of the hot chunks go with it; but the dropped chunks' rows live
/// only in the cold tier, so they stay in Delta, their candles stay in the rollup, and
/// `verify` passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_keeps_the_history_of_dropped_chunks() {
    let _serial = SERIAL.lock().await;
    common::init_test_logging();
    let mut db = fresh_db("tier_truncate").await;
    let dir = tempfile::tempdir().unwrap();
    let sync = common::synced_ticks(&mut db, dir.path(), Some(2)).await;
    lakets::rollup::create_rollup(
        &mut db.client,
        &lakets::rollup::CreateRollup {
            name: "ticks_1h".into(),
            source: "ticks".into(),
            bucket: Interval::hours(1),
            group_by: vec!["symbol".into()],
            aggregate: "count(*)".into(),
            refresh_lag: Interval::ZERO,
        },
    )
    .await
    .unwrap();
    lakets::rollup::refresh::refresh(&mut db.client, Some("ticks_1h"), true, true)
        .await
        .unwrap();
    tier_after_2h_drop_after_4h(&db).await;
    let (shutdown, run) = start(&db).await;
    lifecycle::tier(&db.config(), None, None, PATIENT, None)
        .await
        .unwrap();
    lifecycle::retention(&db.config(), None, PATIENT, None)
        .await
        .unwrap();
    let dropped = common::dropped_chunks(&db).await;
    assert!(dropped.len() >= 4, "{} chunks dropped", dropped.len());
    let cutoff = dropped.iter().map(|c| c.end).max().unwrap();
    for c in &dropped {
        assert_eq!(
            common::delta_rows_in(&sync.location, c.start, c.end).await,
            c.rows as u64
        );
    }
    let cold_rows: i64 = dropped.iter().map(|c| c.rows).sum();
    let candles = |below: bool| {
        format!(
            "SELECT count(*) FROM ticks_1h WHERE (bucket < to_timestamp({cutoff} / 1e6)) = {below}"
        )
    };
    let cold_candles: i64 = db.scalar(&candles(true)).await;
    let hot_candles: i64 = db.scalar(&candles(false)).await;
    assert!(cold_candles > 0 && hot_candles > 0);
    let hot_rows: i64 = db.scalar("SELECT count(*) FROM ticks").await;
    assert!(hot_rows > 0);

    db.exec("TRUNCATE ticks").await;
    let started = std::time::Instant::now();
    while common::delta_rows_in(&sync.location, i64::MIN / 2, i64::MAX / 2).await
        != cold_rows as u64
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the TRUNCATE did not reach Delta, or took the cold history with it: {} rows",
            common::delta_rows_in(&sync.location, i64::MIN / 2, i64::MAX / 2).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for c in &dropped {
        assert_eq!(
            common::delta_rows_in(&sync.location, c.start, c.end).await,
            c.rows as u64,
            "chunk {} keeps its rows in Delta",
            c.name
        );
    }
    // The invalidation reaches the log once the operator flushed; then a refresh empties
    // the hot candles and keeps the cold ones.
    let started = std::time::Instant::now();
    loop {
        lakets::rollup::refresh::refresh(&mut db.client, Some("ticks_1h"), true, true)
            .await
            .unwrap();
        if db.scalar::<i64>(&candles(false)).await == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "hot candles stay after the TRUNCATE"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(db.scalar::<i64>(&candles(true)).await, cold_candles);
    stop(shutdown, run).await;
    let report = lakets::verify::verify(&db.client, "ticks").await.unwrap();
    assert!(report.ok, "{:?}", report.differences);
}

/// A tmpfs of a given size, mounted for the test (needs root, which CI has) and
/// unmounted when dropped, whatever the test's outcome.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// `None` (the test is skipped, and says so) when not root.
    fn mount(size: &str) -> Option<SmallDisk> {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: mounting a tmpfs needs root");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        Self::mount_command(dir.path(), &format!("size={size}"));
        Some(SmallDisk { dir })
    }

    fn grow(&self, size: &str) {
        Self::mount_command(self.dir.path(), &format!("remount,size={size}"));
    }

    fn mount_command(path: &std::path::Path, options: &str) {
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mount -o {options}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// The disk under the Delta table fills up: nothing is acknowledged past what Delta took,
/// the Delta log stays readable, the chunk whose late write is stuck is not dropped, and
/// once space returns the stream catches up by itself, `verify` passes and the drop goes
/// through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_under_delta_holds_the_slot_and_the_drops_back_until_space_returns() {
    let _serial = SERIAL.lock().await;
    common::init_test_logging();
    let Some(disk) = SmallDisk::mount("4m") else {
        return;
    };
    let mut db = fresh_db("tier_disk_full").await;
    let sync = common::synced_ticks(&mut db, disk.path(), Some(2)).await;
    tier_after_2h_drop_after_4h(&db).await;
    let slot = lakets::wal::slot::default_slot_name(&db.name);
    let (shutdown, run, status) = start_with_status(&db).await;
    let report = lifecycle::tier(&db.config(), None, None, PATIENT, None)
        .await
        .unwrap();
    assert!(report.deferred.is_empty(), "{report:?}");
    let oldest: String = db
        .scalar("SELECT chunk_name FROM lakets._chunk_metadata ORDER BY range_start LIMIT 1")
        .await;

    // About 10 MB of Parquet (random hex compresses only about 2:1), then a late row into
    // the oldest chunk, which therefore cannot reach Delta either.
    db.exec(
        "INSERT INTO ticks
           SELECT now() + i * interval '1 ms',
                  (SELECT string_agg(md5(random()::text || i || j), '') FROM generate_series(1, 50) j),
                  i
             FROM generate_series(1, 12000) i",
    )
    .await;
    db.exec(
        "INSERT INTO ticks VALUES (now() - interval '9 hours 59 minutes 30 seconds', 'LATE', 1)",
    )
    .await;
    let end: lakets::wal::Lsn = db
        .scalar::<String>("SELECT pg_current_wal_insert_lsn()::text")
        .await
        .parse()
        .unwrap();
    common::wal::wait_for(
        "a Delta write refused for want of space",
        Duration::from_secs(60),
        async || {
            let status = status.lock().unwrap();
            status
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("No space left on device"))
        },
    )
    .await;
    let confirmed = common::wal::slot_confirmed(&db.client, &slot).await;
    assert!(
        confirmed < end,
        "acknowledged {confirmed}, past changes a full disk refused (end {end})"
    );
    assert!(!run.is_finished(), "a full disk is retried, not fatal");
    let delta = lakets::delta::table::open(&sync.location)
        .await
        .unwrap()
        .unwrap();
    let shape = lakets::delta::mirror::shape_of(&delta, "time", Partitioning::Day).unwrap();
    lakets::delta::read::scan(&delta, &shape)
        .await
        .expect("the Delta table stays readable on a full disk");

    let report = lifecycle::retention(&db.config(), None, QUICK, None)
        .await
        .unwrap();
    assert!(
        !report.moved.iter().any(|c| c.contains(&oldest)),
        "dropped a chunk whose late write is not in Delta: {report:?}"
    );
    let reason = report
        .deferred
        .iter()
        .find(|(c, _)| c.contains(&oldest))
        .map(|(_, r)| r.as_str())
        .unwrap_or_default();
    assert!(reason.starts_with("lagging"), "{report:?}");

    // Space returns: the pipeline's retries get through without help.
    disk.grow("256m");
    common::wal::wait_until_confirmed(&db.client, &slot, end, Duration::from_secs(90)).await;
    let verified = lakets::verify::verify(&db.client, "ticks").await.unwrap();
    assert!(verified.ok, "{:?}", verified.differences);
    let report = lifecycle::retention(&db.config(), None, PATIENT, None)
        .await
        .unwrap();
    assert!(
        report.moved.iter().any(|c| c.contains(&oldest)),
        "{report:?}"
    );
    stop(shutdown, run).await;
    // Every row ever written (600 + 12,000 + 1; nothing was deleted) is in Delta, the
    // dropped chunks' only copy.
    let in_delta = common::delta_rows_in(&sync.location, i64::MIN, i64::MAX).await;
    assert_eq!(in_delta, 12_601);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_retention_beside_the_job_takes_turns_and_labels_every_drop_truly() {
    let _serial = SERIAL.lock().await;
    let mut db = fresh_db("tier_concurrent").await;
    let dir = tempfile::tempdir().unwrap();
    common::synced_ticks(&mut db, dir.path(), Some(2)).await;
    tier_after_2h_drop_after_4h(&db).await;
    // No consumer yet: two runs at once each wait for the gate (longer than partition
    // DDL's 5 s lock timeout). Neither fails; both defer with the true reason.
    let slow = GateSettings {
        lock_timeout: Duration::from_secs(2),
        wait: Duration::from_secs(6),
    };
    let config = db.config();
    let (a, b) = tokio::join!(
        lifecycle::tier(&config, None, None, slow, None),
        lifecycle::tier(&config, None, None, slow, None),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(a.moved.is_empty() && b.moved.is_empty());
    for (chunk, reason) in a.deferred.iter().chain(&b.deferred) {
        assert!(
            reason.starts_with("lagging") || reason.starts_with("busy"),
            "{chunk}: {reason}"
        );
    }

    // With the consumer: tier everything, then two retentions at once (a job and a
    // command). Each chunk is dropped once, by one of them, and measured when it was.
    let (shutdown, run) = start(&db).await;
    let tiered = lifecycle::tier(&db.config(), None, None, PATIENT, None)
        .await
        .unwrap();
    assert!(!tiered.moved.is_empty(), "{tiered:?}");
    let eligible: i64 = db
        .scalar("SELECT count(*) FROM lakets._chunk_metadata WHERE status = 'tiered' AND range_end <= now() - interval '4 hours'")
        .await;
    assert!(eligible > 0);
    let (a, b) = tokio::join!(
        lifecycle::retention(&config, None, PATIENT, None),
        lifecycle::retention(&config, None, PATIENT, None),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let mut dropped: Vec<&String> = a.moved.iter().chain(&b.moved).collect();
    dropped.sort();
    let unique = {
        let mut d = dropped.clone();
        d.dedup();
        d.len()
    };
    assert_eq!(unique, dropped.len(), "a chunk dropped twice: {dropped:?}");
    assert_eq!(dropped.len() as i64, eligible, "{a:?} {b:?}");
    // Every drop was measured by the run that made it (none recorded as "gone outside").
    let unmeasured: i64 = db
        .scalar("SELECT count(*) FROM lakets._chunk_metadata WHERE status = 'dropped' AND (row_count IS NULL OR stats_updated_at IS NULL OR stats_updated_at < dropped_at - interval '1 second')")
        .await;
    assert_eq!(unmeasured, 0);
    stop(shutdown, run).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_sync_moves_the_gate_reads_its_evidence_from_the_new_table() {
    let _serial = SERIAL.lock().await;
    let mut db = fresh_db("tier_moved").await;
    let dir = tempfile::tempdir().unwrap();
    common::synced_ticks(&mut db, dir.path(), Some(2)).await;
    tier_after_2h_drop_after_4h(&db).await;
    let (shutdown, run) = start(&db).await;
    lakets::sync::disable_sync(&mut db.client, "ticks")
        .await
        .unwrap();
    let moved = common::sync_to(&db, "ticks", dir.path().join("moved").to_str().unwrap()).await;
    // A correction in an old chunk after the move: the row count stays, only the new
    // table can vouch for it.
    db.exec("UPDATE ticks SET price = -42 WHERE time = (SELECT min(time) FROM ticks)")
        .await;
    let report = lifecycle::tier(&db.config(), None, None, PATIENT, None)
        .await
        .unwrap();
    assert!(!report.moved.is_empty(), "{report:?}");
    // What passed the gate is in the new table, correction included.
    let delta = lakets::delta::table::open(&moved.location)
        .await
        .unwrap()
        .unwrap();
    let shape = lakets::delta::mirror::shape_of(&delta, "time", Partitioning::Day).unwrap();
    let corrected = lakets::delta::read::scan(&delta, &shape)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r[2] == lakets::delta::schema::Cell::Float((-42f64).to_bits()))
        .count();
    assert_eq!(corrected, 1);
    // Stopped: nothing new is recorded in the new table, so a late write defers.
    stop(shutdown, run).await;
    db.exec(
        "INSERT INTO ticks VALUES (now() - interval '150 minutes' + interval '1 ms', 'LATE', 1)",
    )
    .await;
    let late = lifecycle::tier(&db.config(), None, None, QUICK, None)
        .await
        .unwrap();
    assert!(
        late.deferred
            .iter()
            .all(|(_, r)| r.starts_with("lagging") && r.contains("moved")),
        "{late:?}"
    );
}
