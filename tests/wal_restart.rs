//! PostgreSQL restarted (and crashed) mid-stream: the consumer reconnects with backoff and
//! resumes from the slot, and every committed change reaches the operators exactly once;
//! with the service's operators, the Delta table, the Last Value Cache and the rollup end
//! equal to the table (`lakets verify`); the same when the replication connection, then
//! every connection of the service, is cut. Its own test binary: it restarts the cluster,
//! which would disturb other tests (and its tests take turns).

mod common;

use std::time::{Duration, Instant};

use common::recording::Recording;
use common::wal::{setup_streaming, wait_until_confirmed};
use common::{cluster, fresh_db};
use lakets::operators::chunk_tracker::ChunkTracker;
use lakets::wal::lsn::Lsn;
use lakets::wal::{PipelineConfig, SourceSettings, run_with_restarts};
use tokio_util::sync::CancellationToken;

/// The tests restart the shared cluster: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarts_and_crashes_mid_stream_lose_nothing_and_double_nothing() {
    let _serial = SERIAL.lock().await;
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
                Ok(lakets::operators::pipeline(db, config)
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
            let Ok(client) = common::try_user_connect(&url).await else {
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

    restart_then_crash_the_server().await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_with_every_operator_on_leave_delta_lvc_and_rollup_equal_to_the_table() {
    every_operator_through("restart_all", async |_| {
        restart_then_crash_the_server().await
    })
    .await;
}

/// The replication connection is cut on its own (the walsender terminated, PostgreSQL
/// stays up), then every session of the service at once (the operators' SQL connections
/// too): the pipeline rebuilds itself, and nothing is lost or doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_connections_with_every_operator_on_leave_delta_lvc_and_rollup_equal_to_the_table() {
    every_operator_through("cut_all", async |slot| {
        for round in 0..4 {
            tokio::time::sleep(Duration::from_millis(1000)).await;
            let admin = lakets::db::connect(&cluster().url("postgres"))
                .await
                .unwrap();
            let target = if round == 2 {
                // Every lakets session but this one: the walsender, the operators' SQL
                // connections and the writer (which reconnects like any client would).
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                  WHERE application_name = 'lakets' AND pid <> pg_backend_pid()"
            } else {
                "SELECT count(pg_terminate_backend(active_pid)) FROM pg_replication_slots
                  WHERE slot_name = $1 AND active_pid IS NOT NULL"
            };
            let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
                if round == 2 { vec![] } else { vec![&slot] };
            let cut: i64 = admin.query_one(target, &params).await.unwrap().get(0);
            assert!(cut > 0, "round {round}: nothing to cut");
        }
    })
    .await;
}

/// With the database's default `synchronous_commit = off`, an operator commit the slot is
/// confirmed past must still survive a crash: operator sessions set it back on. Crashed
/// (immediate stop) three times mid-stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_synchronous_commit_off_by_default_crashes_lose_no_confirmed_change() {
    every_operator_through_with(
        "async_commit",
        "ALTER DATABASE {db} SET synchronous_commit = off",
        async |_| {
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_millis(1200)).await;
                tokio::task::spawn_blocking(|| {
                    cluster().crash_server()?;
                    cluster().start_server()
                })
                .await
                .unwrap()
                .unwrap();
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lakets_sessions_commit_synchronously_whatever_the_database_default() {
    let _serial = SERIAL.lock().await;
    let db = fresh_db("sync_default").await;
    db.exec(&format!(
        "ALTER DATABASE {} SET synchronous_commit = off",
        db.name
    ))
    .await;
    let user = common::user_connect(&db.url).await;
    assert_eq!(
        show(&user).await,
        "off",
        "the database default applies to users"
    );
    let lakets_session = lakets::db::connect(&db.url).await.unwrap();
    assert_eq!(show(&lakets_session).await, "on");
    // A session lakets did not open, once an operator prepared it.
    lakets::operators::prepare_session(&user, "probe")
        .await
        .unwrap();
    assert_eq!(show(&user).await, "on");
}

async fn show(c: &tokio_postgres::Client) -> String {
    c.query_one("SHOW synchronous_commit", &[])
        .await
        .unwrap()
        .get(0)
}

/// Streams a mixed workload (new ticks, late ticks, corrections, deletes) through every
/// operator while `fault` runs, then checks Delta, the LVC and a rollup with `verify`.
async fn every_operator_through(label: &str, fault: impl AsyncFnOnce(String)) {
    every_operator_through_with(label, "", fault).await
}

/// [`every_operator_through`], after `setup` (`{db}`: the database's name) ran.
async fn every_operator_through_with(label: &str, setup: &str, fault: impl AsyncFnOnce(String)) {
    let _serial = SERIAL.lock().await;
    let mut db = fresh_db(label).await;
    if !setup.is_empty() {
        db.exec(&setup.replace("{db}", &db.name)).await;
        db.client = common::user_connect(&db.url).await;
    }
    db.exec(
        "CREATE TABLE ticks (time timestamptz NOT NULL, symbol text NOT NULL, price float8,
                             PRIMARY KEY (symbol, time));
         INSERT INTO ticks SELECT now() - i * interval '1 minute', 'S' || (i % 4), i
           FROM generate_series(1, 300) i;",
    )
    .await;
    let mut opts = lakets::chronotable::CreateOptions::new("time");
    opts.chunk_interval = lakets::interval::Interval::hours(1);
    lakets::chronotable::create_chronotable(&mut db.client, "ticks", &opts)
        .await
        .unwrap();
    common::lvc_and_minute_rollup(&mut db).await;
    lakets::rollup::refresh::refresh(&mut db.client, None, true, true)
        .await
        .unwrap();
    let lake = tempfile::tempdir().unwrap();
    common::sync_to(&db, "ticks", lake.path().join("ticks").to_str().unwrap()).await;

    let slot = lakets::wal::slot::default_slot_name(&db.name);
    let db_config = lakets::db::parse_config(&db.url).unwrap();
    let mut config = PipelineConfig::new(SourceSettings::new(&slot, "lakets"));
    config.flush_interval = Duration::from_millis(100);
    config.ack_interval = Duration::from_millis(50);
    config.heartbeat_interval = Some(Duration::from_millis(200));
    let shutdown = CancellationToken::new();
    let status = std::sync::Arc::new(std::sync::Mutex::new(Default::default()));
    let consumer = tokio::spawn(run_with_restarts(
        move || {
            let (db, config, status) = (db_config.clone(), config.clone(), status.clone());
            async move { lakets::service::standard_pipeline(&db, config, status, None).await }
        },
        shutdown.clone(),
    ));

    // New ticks, late ticks into older buckets, corrections and deletes, through outages.
    let url = db.url.clone();
    let writer = tokio::spawn(async move {
        let mut round = 0i64;
        let deadline = Instant::now() + Duration::from_secs(6);
        while Instant::now() < deadline {
            let Ok(client) = common::try_user_connect(&url).await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            loop {
                round += 1;
                let sql = format!(
                    "INSERT INTO ticks SELECT clock_timestamp() + i * interval '1 microsecond',
                                              'S' || (i % 4), {round} FROM generate_series(0, 9) i;
                     INSERT INTO ticks VALUES (now() - interval '{late} seconds', 'LATE{round}', 1)
                       ON CONFLICT DO NOTHING;
                     UPDATE ticks SET price = price + 0.5
                      WHERE symbol = 'S{s}' AND time < now() - interval '{late} seconds'
                        AND time > now() - interval '{late} seconds' - interval '2 minutes';
                     DELETE FROM ticks WHERE symbol = 'LATE{old}';",
                    late = 600 + round * 7 % 3000,
                    s = round % 4,
                    old = round - 5,
                );
                if client.batch_execute(&sql).await.is_err() || Instant::now() > deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    });

    fault(slot.clone()).await;
    writer.await.unwrap();

    let mut client = db.connect().await;
    let end: Lsn = client
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await
        .unwrap()
        .get::<_, String>(0)
        .parse()
        .unwrap();
    wait_until_confirmed(&client, &slot, end, Duration::from_secs(90)).await;
    shutdown.cancel();
    consumer.await.unwrap().expect("consumer stops cleanly");
    lakets::rollup::refresh::refresh(&mut client, None, true, true)
        .await
        .unwrap();

    let rows: i64 = client
        .query_one("SELECT count(*) FROM ticks", &[])
        .await
        .unwrap()
        .get(0);
    assert!(rows > 400, "the workload ran: {rows} rows");
    let report = lakets::verify::verify(&client, "ticks").await.unwrap();
    if !report.ok {
        let diff: Vec<String> = client
            .query(
                "(SELECT 'cache only', row(symbol, time, price)::text FROM lakets.lvc_ticks
                  EXCEPT SELECT 'cache only', row(symbol, time, price)::text FROM ticks
                   WHERE (symbol, time) IN (SELECT symbol, max(time) FROM ticks GROUP BY symbol))
                 UNION ALL
                 (SELECT 'latest', row(t.*)::text FROM (SELECT DISTINCT ON (symbol) symbol, time, price
                    FROM ticks ORDER BY symbol, time DESC) t
                  WHERE (symbol, time, price) NOT IN (SELECT symbol, time, price FROM lakets.lvc_ticks))",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| format!("{}: {}", r.get::<_, String>(0), r.get::<_, String>(1)))
            .collect();
        panic!("{:?}\n{diff:#?}", report.differences);
    }
    assert!(report.lvc_differences == Some(0), "{report:?}");
    assert_eq!(report.rollups.len(), 1, "{report:?}");
}

/// Mid-workload: a clean restart of PostgreSQL, then a crash (immediate stop) and start.
async fn restart_then_crash_the_server() {
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
}
