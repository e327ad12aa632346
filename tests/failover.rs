//! PostgreSQL failover: a physical standby of the source promoted to primary. On
//! PostgreSQL 15 the logical slot does not follow, and the standby may lack changes the
//! mirror already holds (it lagged when the primary died). lakets must see the new
//! timeline on its first look at the promoted server, record a gap, refuse to stream and
//! to drop any chunk, and `lakets resync` must make Delta, the cache and the rollup equal
//! the new primary again (the rows lost with the old primary leave Delta too; the
//! history of chunks dropped before stays). Then the stream resumes on the new timeline.
//! Its own test binary: it crashes the cluster and promotes a standby of it.

mod common;

use std::time::Duration;

use common::{dropped_chunks, fresh_db};
use lakets::lifecycle;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_standby_is_a_gap_that_refuses_drops_until_resync_recovers_it() {
    let mut db = fresh_db("failover").await;
    let dir = tempfile::tempdir().unwrap();
    let sync = common::synced_ticks_with_every_operator(&mut db, dir.path()).await;
    let slot = lakets::wal::slot::default_slot_name(&db.name);
    let pipeline = |url: String, cancel: CancellationToken| {
        let slot = slot.clone();
        async move {
            let db_config = lakets::db::parse_config(&url).unwrap();
            common::wal::stream(&db_config, &slot, cancel).await
        }
    };

    // A standby replays the primary; the service streams, and the oldest chunks are
    // tiered and dropped (their rows then live only in Delta).
    let standby = tokio::task::spawn_blocking(|| {
        common::cluster()
            // Reports its replay position every second, not every ten.
            .start_standby(common::cluster_options().setting("wal_receiver_status_interval", "1s"))
            .expect("starting a standby")
    })
    .await
    .unwrap();
    let cancel = CancellationToken::new();
    let running = tokio::spawn(pipeline(db.url.clone(), cancel.clone()));
    let earlier = Some(chrono::Utc::now() - chrono::Duration::hours(2));
    lifecycle::tier(&db.config(), None, None, common::PATIENT_GATE, earlier)
        .await
        .unwrap();
    let report = lifecycle::retention(&db.config(), None, common::PATIENT_GATE, earlier)
        .await
        .unwrap();
    assert!(!report.moved.is_empty(), "{report:?}");
    let dropped = dropped_chunks(&db).await;
    let mut cold = Vec::new();
    for c in &dropped {
        cold.push(common::delta_rows_in(&sync.location, c.start, c.end).await);
    }
    let end = common::wal::lsn_of(&db.client).await;
    common::wal::wait_for(
        "the standby to replay",
        Duration::from_secs(30),
        async || {
            db.scalar::<bool>(&format!(
                "SELECT coalesce(bool_and(replay_lsn >= '{end}'), false) FROM pg_stat_replication"
            ))
            .await
        },
    )
    .await;

    // The standby stops replaying (it lags); the service mirrors changes it never gets,
    // then the primary dies and the standby is promoted.
    tokio::task::block_in_place(|| standby.stop_server()).unwrap();
    db.exec(
        "INSERT INTO ticks VALUES (now(), 'LOST', 1);
         UPDATE ticks SET price = price + 500 WHERE symbol = 'S1' AND time > now() - interval '1 hour';
         DELETE FROM ticks WHERE symbol = 'S2' AND time > now() - interval '20 minutes';",
    )
    .await;
    let end = common::wal::lsn_of(&db.client).await;
    common::wal::wait_until_confirmed(&db.client, &slot, end, Duration::from_secs(60)).await;
    cancel.cancel();
    running.await.unwrap().unwrap();
    assert_eq!(
        common::delta_rows_in(&sync.location, 0, i64::MAX / 2).await - cold.iter().sum::<u64>(),
        db.scalar::<i64>("SELECT count(*) FROM ticks").await as u64,
        "the mirror held the old primary's last changes"
    );
    let before_gap = common::chunk_status_counts(&db.client).await;
    tokio::task::block_in_place(|| common::cluster().crash_server()).unwrap();
    tokio::task::block_in_place(|| standby.start_server()).unwrap();
    let url = standby.url(&db.name);
    let promoted = common::user_connect(&url).await;
    promoted
        .batch_execute("SELECT pg_promote(true, 60)")
        .await
        .unwrap();
    let lost: i64 = promoted
        .query_one("SELECT count(*) FROM ticks WHERE symbol = 'LOST'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        lost, 0,
        "the standby lagged: the old primary's last changes are lost"
    );
    // Written on the new primary before lakets looks at it.
    promoted
        .batch_execute("INSERT INTO ticks VALUES (now(), 'PROMOTED', 2)")
        .await
        .unwrap();

    // The jobs may run before the stream looks at the new server: the gate sees the new
    // timeline itself, and no chunk leaves the hot tier.
    let new_db = lakets::db::parse_config(&url).unwrap();
    let report = lifecycle::tier(&new_db, None, None, common::QUICK_GATE, None)
        .await
        .unwrap();
    assert!(report.moved.is_empty(), "{report:?}");
    assert!(
        !report.deferred.is_empty()
            && report
                .deferred
                .iter()
                .all(|(_, why)| why.contains("new WAL timeline")),
        "chunks were due and wait for the resync: {report:?}"
    );
    let report = lifecycle::retention(&new_db, None, common::QUICK_GATE, None)
        .await
        .unwrap();
    assert!(report.moved.is_empty(), "{report:?}");
    assert_eq!(
        common::chunk_status_counts(&promoted).await,
        before_gap,
        "nothing tiered or dropped on the new primary"
    );

    // The service refuses to stream from the new timeline, and says what happened.
    let err = pipeline(url.clone(), CancellationToken::new())
        .await
        .expect_err("streaming from a promoted standby")
        .to_string();
    for needle in [
        "new WAL timeline",
        "timeline 1 -> 2",
        "nothing will be dropped",
        "resync",
    ] {
        assert!(err.contains(needle), "{needle:?} not in: {err}");
    }
    let out = common::lakets_cli(&url, &["status", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        status["stream_gaps"]
            .as_array()
            .is_some_and(|gaps| gaps.iter().any(|g| g["reason"]
                .as_str()
                .is_some_and(|r| r.contains("new WAL timeline")))),
        "lakets status shows the gap: {}",
        status["stream_gaps"]
    );
    // `lakets resync` closes the gap: the lost changes leave Delta, the kept history stays.
    let out = common::lakets_cli(&url, &["resync", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cancel = CancellationToken::new();
    let running = tokio::spawn(pipeline(url.clone(), cancel.clone()));
    promoted
        .batch_execute("INSERT INTO ticks VALUES (now() + interval '1 second', 'AFTER', 7)")
        .await
        .unwrap();
    let end = common::wal::lsn_of(&promoted).await;
    common::wal::wait_until_confirmed(&promoted, &slot, end, Duration::from_secs(60)).await;
    let mut promoted = promoted;
    lakets::rollup::refresh::refresh(&mut promoted, None, true, true)
        .await
        .unwrap();
    let verified = lakets::verify::verify(&promoted, "ticks").await.unwrap();
    assert!(verified.ok, "{:?}", verified.differences);
    assert_eq!(verified.lvc_differences, Some(0), "{verified:?}");
    for (c, rows) in dropped.iter().zip(&cold) {
        assert_eq!(
            common::delta_rows_in(&sync.location, c.start, c.end).await,
            *rows,
            "the history of dropped chunk {} stays in Delta",
            c.name
        );
    }
    // And the chunks move again.
    let report = lifecycle::tier(&new_db, None, None, common::PATIENT_GATE, None)
        .await
        .unwrap();
    assert!(!report.moved.is_empty(), "{report:?}");
    assert!(report.deferred.is_empty(), "{report:?}");
    cancel.cancel();
    running.await.unwrap().unwrap();
}
