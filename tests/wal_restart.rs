//! PostgreSQL restarted (and crashed) mid-stream: the consumer reconnects with backoff and
//! resumes from the slot, and every committed change reaches the operators exactly once.
//! Its own test binary: it restarts the cluster, which would disturb other tests.

mod common;

use std::time::{Duration, Instant};

use common::recording::Recording;
use common::wal::{setup_streaming, wait_until_confirmed};
use common::{cluster, fresh_db};
use lakets::operators::chunk_tracker::ChunkTracker;
use lakets::wal::lsn::Lsn;
use lakets::wal::{Pipeline, PipelineConfig, SourceSettings, run_with_restarts};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarts_and_crashes_mid_stream_lose_nothing_and_double_nothing() {
    let mut db = fresh_db("restart").await;
    // The stream starts at the slot's creation: created before the first change.
    setup_streaming(&mut db).await;

    let db_config = lakets::db::parse_config(&db.url).unwrap();
    let mut config = PipelineConfig::new(SourceSettings::new(&db.name, "lakets"));
    config.flush_interval = Duration::from_millis(50);
    config.ack_interval = Duration::from_millis(50);
    config.heartbeat_interval = Some(Duration::from_millis(200));
    let shutdown = CancellationToken::new();
    let slot = db.name.clone();
    let consumer = tokio::spawn(run_with_restarts(
        move || {
            let (db, config, slot) = (db_config.clone(), config.clone(), slot.clone());
            async move {
                let tracker =
                    ChunkTracker::new(lakets::db::connect_with(&db).await?, slot.clone()).await?;
                let recording = Recording::new(lakets::db::connect_with(&db).await?, &slot);
                Ok(Pipeline::new(db, config)
                    .operator(tracker)
                    .operator(recording))
            }
        },
        shutdown.clone(),
    ));

    // Writers reconnect after each outage; a transaction whose COMMIT outcome is unknown is
    // settled afterwards by looking at the table, so the expectation is what committed.
    let url = db.url.clone();
    let writer = tokio::spawn(async move {
        let mut id = 0i64;
        let deadline = Instant::now() + Duration::from_secs(6);
        while Instant::now() < deadline {
            let Ok(client) = lakets::db::connect(&url).await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            loop {
                id += 1;
                let sql = format!(
                    "INSERT INTO events SELECT now(), {id} * 10 + i, 'x' FROM generate_series(0, 9) i"
                );
                if client.batch_execute(&sql).await.is_err() || Instant::now() > deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });

    tokio::time::sleep(Duration::from_millis(1500)).await;
    tokio::task::spawn_blocking(|| cluster().restart_server())
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    tokio::task::spawn_blocking(|| {
        cluster().crash_server()?;
        cluster().start_server()
    })
    .await
    .unwrap()
    .unwrap();
    writer.await.unwrap();

    let client = db.connect().await;
    let end: Lsn = client
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await
        .unwrap()
        .get::<_, String>(0)
        .parse()
        .unwrap();
    wait_until_confirmed(&client, &db.name, end, Duration::from_secs(90)).await;
    shutdown.cancel();
    consumer.await.unwrap().expect("consumer stops cleanly");

    let in_table: i64 = client
        .query_one("SELECT count(*) FROM events", &[])
        .await
        .unwrap()
        .get(0);
    let row = client
        .query_one(
            "SELECT count(*), count(DISTINCT id),
                    count(*) FILTER (WHERE id NOT IN (SELECT id FROM events))
               FROM recorded WHERE kind = 'insert'",
            &[],
        )
        .await
        .unwrap();
    let (recorded, distinct, phantom): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert!(in_table > 100, "the workload ran: {in_table} rows");
    assert_eq!(phantom, 0, "nothing recorded that did not commit");
    assert_eq!(distinct, recorded, "no duplicates");
    assert_eq!(recorded, in_table, "every committed row recorded");
}
