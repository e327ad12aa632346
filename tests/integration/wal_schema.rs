//! A schema change the chunk tracker cannot follow (the time column renamed) stops the
//! stream with a clear error, and nothing past the unplaceable write is confirmed.
//!
//! This cluster's walsenders decode every test database's WAL, and the other tests write
//! plenty of it at the same time: how long the walsender takes to reach the write is not
//! this test's business, what lakets does once it has been sent is.

use crate::common;

use std::time::{Duration, Instant};

use common::fresh_db;
use common::wal::*;
use lakets::operators::chunk_tracker::ChunkTracker;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_time_column_stops_the_stream_instead_of_missing_stamps() {
    let mut db = fresh_db("renamed_time").await;
    setup(&mut db).await;
    let db_config = lakets::db::parse_config(&db.url).unwrap();
    let tracker = ChunkTracker::new(db.connect().await, db.name.clone())
        .await
        .unwrap();
    let pipeline = lakets::operators::pipeline(db_config, config(&db.name)).operator(tracker);
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
    let written = lsn_now(&db).await;
    let err = stops_once_sent(&db, run, written).await;
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

/// Waits for the pipeline's error: without a bound while the walsender makes progress
/// towards `written`, then at most 30 s once it has sent that far. A pipeline that hangs is
/// told from a walsender that is slow, with what the server says about both.
async fn stops_once_sent(
    db: &common::TestDb,
    mut run: tokio::task::JoinHandle<lakets::error::Result<()>>,
    written: lakets::wal::lsn::Lsn,
) -> lakets::error::Error {
    let mut sent_at: Option<Instant> = None;
    let mut progress = (walsender_sent(db).await, Instant::now());
    loop {
        if let Ok(outcome) = tokio::time::timeout(Duration::from_millis(500), &mut run).await {
            return outcome
                .expect("the pipeline task")
                .expect_err("the pipeline stops with an error");
        }
        let sent = walsender_sent(db).await;
        if sent > progress.0 {
            progress = (sent, Instant::now());
        }
        if sent >= Some(written) {
            let since = *sent_at.get_or_insert_with(Instant::now);
            assert!(
                since.elapsed() < Duration::from_secs(30),
                "the walsender sent through {written} 30 s ago and the pipeline still runs; \
                 slot: {:?}",
                slot_state(db).await
            );
        } else {
            assert!(
                progress.1.elapsed() < Duration::from_secs(120),
                "the walsender made no progress for 120 s (sent {sent:?}, the write ends at \
                 {written}); slot: {:?}",
                slot_state(db).await
            );
        }
    }
}

/// How far the slot's walsender has sent (None while no walsender holds it).
async fn walsender_sent(db: &common::TestDb) -> Option<lakets::wal::lsn::Lsn> {
    let text: Option<String> = db
        .client
        .query_one(
            "SELECT (SELECT r.sent_lsn::text FROM pg_stat_replication r
                       JOIN pg_replication_slots s ON s.active_pid = r.pid
                      WHERE s.slot_name = $1)",
            &[&db.name],
        )
        .await
        .unwrap()
        .get(0);
    text.map(|t| t.parse().unwrap())
}

async fn slot_state(db: &common::TestDb) -> String {
    db.client
        .query_one(
            "SELECT coalesce((SELECT format('active %s, confirmed %s, walsender %s sent %s, \
                     state %s, wait %s/%s', s.active, s.confirmed_flush_lsn, r.pid, r.sent_lsn,
                     r.state, a.wait_event_type, a.wait_event)
                FROM pg_replication_slots s
                LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid
                LEFT JOIN pg_stat_activity a ON a.pid = s.active_pid
               WHERE s.slot_name = $1), 'no slot')",
            &[&db.name],
        )
        .await
        .unwrap()
        .get(0)
}
