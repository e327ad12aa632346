//! The WAL pipeline against a real PostgreSQL: the chunk tracker's `last_write_lsn`, the
//! slot never acknowledged past what every operator stored, and an idle slot moving on.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::recording::{RECORDED_DDL, Recording};
use common::{TestDb, fresh_db};
use lakets::operators::chunk_tracker::ChunkTracker;
use lakets::wal::lsn::Lsn;
use lakets::wal::{Pipeline, PipelineConfig, SourceSettings};
use tokio_util::sync::CancellationToken;

async fn setup(db: &mut TestDb) {
    db.exec(&format!(
        "CREATE TABLE events (time timestamptz NOT NULL, id bigint NOT NULL, v text, PRIMARY KEY (id, time));
         {RECORDED_DDL};"
    ))
    .await;
    let mut opts = lakets::chronotable::CreateOptions::new("time");
    opts.chunk_interval = lakets::interval::Interval::hours(1);
    opts.premake = 2;
    lakets::chronotable::create_chronotable(&mut db.client, "events", &opts)
        .await
        .unwrap();
}

fn config(slot: &str) -> PipelineConfig {
    let mut c = PipelineConfig::new(SourceSettings::new(slot, "lakets"));
    c.flush_interval = Duration::from_millis(100);
    c.ack_interval = Duration::from_millis(100);
    c.heartbeat_interval = Some(Duration::from_millis(300));
    c
}

async fn lsn_now(db: &TestDb) -> Lsn {
    let text: String = db.scalar("SELECT pg_current_wal_insert_lsn()::text").await;
    text.parse().unwrap()
}

async fn durable(db: &TestDb, operator: &str) -> Lsn {
    let text: Option<String> = db
        .client
        .query_one(
            "SELECT (SELECT durable_lsn::text FROM lakets._sink_progress WHERE operator = $1 AND slot_name = $2)",
            &[&operator, &db.name],
        )
        .await
        .unwrap()
        .get(0);
    text.map(|t| t.parse().unwrap()).unwrap_or(Lsn::ZERO)
}

async fn confirmed_flush(db: &TestDb) -> Lsn {
    let text: Option<String> = db
        .client
        .query_one(
            "SELECT (SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1)",
            &[&db.name],
        )
        .await
        .unwrap()
        .get(0);
    text.map(|t| t.parse().unwrap()).unwrap_or(Lsn::ZERO)
}

async fn slot_active(db: &TestDb) -> Option<bool> {
    db.client
        .query_one(
            "SELECT (SELECT active FROM pg_replication_slots WHERE slot_name = $1)",
            &[&db.name],
        )
        .await
        .unwrap()
        .get(0)
}

async fn wait_for(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `statement` as its own transaction and returns the WAL positions around it.
async fn bracket(db: &TestDb, statement: &str) -> (Lsn, Lsn) {
    let before = lsn_now(db).await;
    db.exec(statement).await;
    (before, lsn_now(db).await)
}

async fn last_write_lsn(db: &TestDb, chunk: &str) -> Option<Lsn> {
    let text: Option<String> = db
        .client
        .query_one(
            "SELECT last_write_lsn::text FROM lakets._chunk_metadata WHERE chunk_name = $1",
            &[&chunk],
        )
        .await
        .unwrap()
        .get(0);
    text.map(|t| t.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunk_tracker_stamps_the_last_writing_transaction_and_the_slot_waits_for_every_operator() {
    let mut db = fresh_db("pipeline").await;
    setup(&mut db).await;
    let now_chunk: String = db
        .scalar("SELECT 'events_' || to_char(date_trunc('hour', now() AT TIME ZONE 'UTC'), 'YYYYMMDD_HH24MISS')")
        .await;
    let old_chunk: String = db
        .scalar("SELECT 'events_' || to_char(date_trunc('hour', now() AT TIME ZONE 'UTC') - interval '1 hour', 'YYYYMMDD_HH24MISS')")
        .await;

    let db_config = lakets::db::parse_config(&db.url).unwrap();
    let recording = Recording::new(db.connect().await, &db.name);
    let gate = recording.gate.clone();
    let tracker = ChunkTracker::new(db.connect().await, db.name.clone())
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    let pipeline = Pipeline::new(db_config, config(&db.name))
        .operator(tracker)
        .operator(recording);
    let status = pipeline.status();
    let run = tokio::spawn(pipeline.run(shutdown.clone()));
    wait_for(
        "the slot is streaming",
        Duration::from_secs(20),
        async || slot_active(&db).await == Some(true),
    )
    .await;

    let (b1, a1) = bracket(&db, "INSERT INTO events VALUES (now(), 1, 'a')").await;
    let (b2, a2) = bracket(
        &db,
        "INSERT INTO events VALUES (now() - interval '1 hour', 2, 'b')",
    )
    .await;
    let (b3, a3) = bracket(&db, "UPDATE events SET v = 'c' WHERE id = 1").await;
    wait_for(
        "both operators stored txn 3",
        Duration::from_secs(20),
        async || durable(&db, "chunk_tracker").await >= a3 && durable(&db, "recording").await >= a3,
    )
    .await;
    let now_lsn = last_write_lsn(&db, &now_chunk)
        .await
        .expect("current chunk stamped");
    assert!(
        now_lsn > b3 && now_lsn <= a3,
        "{now_lsn} not in ({b3}, {a3}]"
    );
    let old_lsn = last_write_lsn(&db, &old_chunk)
        .await
        .expect("previous chunk stamped");
    assert!(
        old_lsn > b2 && old_lsn <= a2,
        "{old_lsn} not in ({b2}, {a2}]"
    );
    assert!(b1 < a1);
    let untouched: i64 = db
        .scalar("SELECT count(*) FROM lakets._chunk_metadata WHERE last_write_lsn IS NOT NULL")
        .await;
    assert_eq!(untouched, 2, "only the two written chunks are stamped");
    let recorded: Vec<(String, i64)> = db
        .client
        .query("SELECT kind, id FROM recorded ORDER BY commit_lsn", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        recorded,
        vec![
            ("insert".into(), 1),
            ("insert".into(), 2),
            ("update".into(), 1)
        ]
    );

    // A move between chunks touches both.
    let (b4, a4) = bracket(
        &db,
        "UPDATE events SET time = now() - interval '1 hour' WHERE id = 1",
    )
    .await;
    wait_for("txn 4 stored", Duration::from_secs(20), async || {
        durable(&db, "chunk_tracker").await >= a4
    })
    .await;
    for chunk in [&now_chunk, &old_chunk] {
        let l = last_write_lsn(&db, chunk).await.unwrap();
        assert!(l > b4 && l <= a4, "{chunk}: {l} not in ({b4}, {a4}]");
    }

    // Stall one operator: the slot must never pass the first transaction it has not
    // stored, whatever the other operator does. (Before that transaction, an operator with
    // nothing pending may confirm heartbeat positions past its stored LSN: nothing there
    // concerns it.)
    wait_for("acknowledged", Duration::from_secs(20), async || {
        confirmed_flush(&db).await >= a4
    })
    .await;
    gate.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stalled_at = durable(&db, "recording").await;
    let first_unstored = lsn_now(&db).await;
    for i in 0..20 {
        db.exec(&format!(
            "INSERT INTO events VALUES (now(), {}, 'x')",
            100 + i
        ))
        .await;
        let confirmed = confirmed_flush(&db).await;
        assert!(
            confirmed <= first_unstored,
            "slot confirmed {confirmed}, past the unstored transaction at {first_unstored}"
        );
        assert_eq!(durable(&db, "recording").await, stalled_at);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let tracker_ahead = durable(&db, "chunk_tracker").await;
    assert!(
        tracker_ahead > first_unstored,
        "the healthy operator kept going"
    );
    assert!(confirmed_flush(&db).await <= first_unstored);
    gate.store(true, Ordering::SeqCst);
    let end = lsn_now(&db).await;
    wait_for(
        "the stalled operator catches up and the slot follows",
        Duration::from_secs(20),
        async || confirmed_flush(&db).await >= end,
    )
    .await;
    let n: i64 = db
        .scalar("SELECT count(*) FROM recorded WHERE id >= 100")
        .await;
    assert_eq!(n, 20);

    // Idle: heartbeats move the slot past unrelated WAL.
    db.exec(
        "CREATE TABLE unrelated (x int); INSERT INTO unrelated SELECT generate_series(1, 1000)",
    )
    .await;
    let after_unrelated = lsn_now(&db).await;
    wait_for(
        "heartbeats advance the idle slot",
        Duration::from_secs(20),
        async || confirmed_flush(&db).await >= after_unrelated,
    )
    .await;
    let st = status.lock().unwrap().clone();
    assert!(st.transactions >= 24 && st.changes >= 24, "{st:?}");
    assert_eq!(st.operators.len(), 2);

    shutdown.cancel();
    run.await.unwrap().expect("clean shutdown");
    assert_eq!(
        slot_active(&db).await,
        Some(false),
        "the replication connection is closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_errors_say_what_to_change() {
    let db = fresh_db("preflight").await;
    db.exec("CREATE ROLE plain_user LOGIN").await;
    let url = db.url.replace("postgres@", "plain_user@");
    let client = lakets::db::connect(&url).await.unwrap();
    let err = lakets::wal::setup::preflight(&client, &db.name)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("ALTER ROLE \"plain_user\" REPLICATION"),
        "{err}"
    );

    // A slot of another plugin is refused, not reused.
    let other = format!("{}_other", db.name);
    db.exec(&format!(
        "SELECT pg_create_logical_replication_slot('{other}', 'test_decoding')"
    ))
    .await;
    let err = lakets::wal::setup::preflight(&db.client, &other)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("uses plugin"), "{err}");

    // Dropping a slot that still holds unconsumed published changes needs --force.
    let mut db = db;
    setup(&mut db).await;
    lakets::wal::setup::ensure_publication(&db.client, "lakets")
        .await
        .unwrap();
    let slot = db.name.clone();
    lakets::wal::setup::ensure_slot(&db.client, &slot)
        .await
        .unwrap();
    // Committed and flushed, so that logical decoding can see it.
    db.exec("SET synchronous_commit = on").await;
    db.exec("INSERT INTO events VALUES (now(), 1, 'a')").await;
    let err = lakets::wal::setup::drop_slot(&db.client, &slot, "lakets", false)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("--force"), "{err}");
    assert_eq!(slot_active(&db).await, Some(false), "still there");
    lakets::wal::setup::drop_slot(&db.client, &slot, "lakets", true)
        .await
        .unwrap();
    assert_eq!(slot_active(&db).await, None, "gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_time_column_stops_the_stream_instead_of_missing_stamps() {
    let mut db = fresh_db("renamed_time").await;
    setup(&mut db).await;
    let db_config = lakets::db::parse_config(&db.url).unwrap();
    let tracker = ChunkTracker::new(db.connect().await, db.name.clone())
        .await
        .unwrap();
    let pipeline = Pipeline::new(db_config, config(&db.name)).operator(tracker);
    let run = tokio::spawn(pipeline.run(CancellationToken::new()));
    wait_for(
        "the slot is streaming",
        Duration::from_secs(20),
        async || slot_active(&db).await == Some(true),
    )
    .await;
    db.exec("INSERT INTO events VALUES (now(), 1, 'a')").await;
    let before = lsn_now(&db).await;
    db.exec("ALTER TABLE events RENAME COLUMN time TO ts").await;
    db.exec("INSERT INTO events VALUES (now(), 2, 'b')").await;
    let err = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the pipeline stops")
        .unwrap()
        .unwrap_err();
    assert!(
        err.to_string().contains("is not in its replicated rows"),
        "{err}"
    );
    assert!(!lakets::wal::pipeline::is_retryable(&err));
    assert!(
        confirmed_flush(&db).await <= before,
        "nothing past the unplaceable write is confirmed"
    );
}
