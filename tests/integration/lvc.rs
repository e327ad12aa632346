//! The Last Value Cache against a real PostgreSQL and a real pipeline: randomized in-order
//! and late ticks, corrections (price, time, symbol) and deletes of the latest rows; the
//! cache then equals the latest row per key recomputed from the table.

use crate::common;

use std::time::{Duration, Instant};

use common::wal::wait_until_confirmed;
use common::{TestDb, fresh_db};
use lakets::operators::last_value::LastValueCache;
use lakets::wal::lsn::Lsn;
use lakets::wal::{PipelineConfig, SourceSettings};
use tokio_util::sync::CancellationToken;

const RECOMPUTED: &str = "SELECT DISTINCT ON (symbol) symbol, time, price, volume
                            FROM ticks ORDER BY symbol, time DESC";

async fn ticks_table(db: &mut TestDb) {
    db.exec(
        "CREATE TABLE ticks (time timestamptz NOT NULL, symbol text NOT NULL,
                             price double precision, volume bigint);
         INSERT INTO ticks SELECT now() - i * interval '7 minutes', 'S' || (i % 5), i, i
           FROM generate_series(1, 50) i;",
    )
    .await;
    let mut opts = lakets::chronotable::CreateOptions::new("time");
    opts.chunk_interval = lakets::interval::Interval::hours(1);
    opts.premake = 2;
    lakets::chronotable::create_chronotable(&mut db.client, "ticks", &opts)
        .await
        .unwrap();
}

async fn rows(db: &TestDb, sql: &str) -> Vec<String> {
    let mut out: Vec<String> = db
        .client
        .query(&format!("SELECT row(t.*)::text FROM ({sql}) t"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    out.sort();
    out
}

async fn cache_rows(db: &TestDb) -> Vec<String> {
    rows(
        db,
        "SELECT symbol, time, price, volume FROM lakets.lvc_ticks",
    )
    .await
}

struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_equals_the_latest_row_per_key_under_late_rows_corrections_and_deletes() {
    let mut db = fresh_db("lvc_random").await;
    ticks_table(&mut db).await;
    let config = lakets::lvc::enable_lvc(
        &mut db.client,
        "ticks",
        &["symbol".to_string()],
        &["price".to_string(), "volume".to_string()],
    )
    .await
    .unwrap();
    assert_eq!(config.cache_table.name, "lvc_ticks");
    // Enabling created the consumer's slot before the fill: nothing after it can be missed.
    let slot = lakets::wal::slot::default_slot_name(&db.name);
    assert!(
        db.client
            .query_opt(
                "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot]
            )
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(
        cache_rows(&db).await,
        rows(&db, RECOMPUTED).await,
        "initial fill"
    );

    let db_config = lakets::db::parse_config(&db.url).unwrap();
    let mut pipeline_config = PipelineConfig::new(SourceSettings::new(&slot, "lakets"));
    pipeline_config.flush_interval = Duration::from_millis(50);
    pipeline_config.ack_interval = Duration::from_millis(50);
    pipeline_config.heartbeat_interval = Some(Duration::from_millis(200));
    let lvc = LastValueCache::new(db.connect().await, slot.clone())
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(
        lakets::operators::pipeline(db_config, pipeline_config)
            .operator(lvc)
            .run(shutdown.clone()),
    );

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("lvc seed {seed}");
    let mut rng = Rng(seed);
    // Distinct times (no ties): a counter of microseconds on top of a per-row offset.
    let mut tick = 0i64;
    for _ in 0..300 {
        tick += 1;
        let symbol = format!("S{}", rng.below(8));
        let sql = match rng.below(10) {
            // In order.
            0..=4 => format!(
                "INSERT INTO ticks VALUES (now() + {tick} * interval '1 microsecond', '{symbol}', {}, {})",
                rng.below(1000), rng.below(100)
            ),
            // Late: up to 50 minutes back.
            5 => format!(
                "INSERT INTO ticks VALUES (now() - {} * interval '1 minute' + {tick} * interval '1 microsecond', '{symbol}', {}, 1)",
                rng.below(50), rng.below(1000)
            ),
            // Correct the latest row of a symbol (price).
            6 => format!(
                "UPDATE ticks SET price = price + 0.5 WHERE (symbol, time) IN
                   (SELECT symbol, max(time) FROM ticks WHERE symbol = '{symbol}' GROUP BY symbol)"
            ),
            // Move the latest row back in time, or to another symbol.
            7 => format!(
                "UPDATE ticks SET time = greatest(time - {} * interval '1 minute', now() - interval '5 hours')
                                         + {tick} * interval '1 microsecond', symbol = 'S{}'
                  WHERE (symbol, time) IN (SELECT symbol, max(time) FROM ticks WHERE symbol = '{symbol}' GROUP BY symbol)",
                1 + rng.below(20),
                rng.below(8)
            ),
            // Delete the latest row (the cache falls back to the previous one).
            8 => format!(
                "DELETE FROM ticks WHERE (symbol, time) IN
                   (SELECT symbol, max(time) FROM ticks WHERE symbol = '{symbol}' GROUP BY symbol)"
            ),
            // Delete an old row (the cache does not change).
            _ => format!(
                "DELETE FROM ticks WHERE (symbol, time) IN
                   (SELECT symbol, min(time) FROM ticks WHERE symbol = '{symbol}' GROUP BY symbol)"
            ),
        };
        db.exec(&sql).await;
    }
    // Every row of a symbol deleted: its key leaves the cache.
    db.exec("DELETE FROM ticks WHERE symbol = 'S0'").await;

    let end: Lsn = db
        .scalar::<String>("SELECT pg_current_wal_insert_lsn()::text")
        .await
        .parse()
        .unwrap();
    wait_until_confirmed(&db.client, &slot, end, Duration::from_secs(60)).await;
    assert!(!run.is_finished(), "the pipeline stopped early");
    assert_eq!(
        cache_rows(&db).await,
        rows(&db, RECOMPUTED).await,
        "cache == latest row per key"
    );
    let s0: i64 = db
        .scalar("SELECT count(*) FROM lakets.lvc_ticks WHERE symbol = 'S0'")
        .await;
    assert_eq!(s0, 0);

    // The library read (and `lakets lvc get`) returns the cached row as JSON.
    let got = lakets::lvc::get_lvc(&db.client, "ticks", &["S1".to_string()])
        .await
        .unwrap();
    let expected_price: Option<f64> = db
        .scalar("SELECT (SELECT price FROM ticks WHERE symbol = 'S1' ORDER BY time DESC LIMIT 1)")
        .await;
    assert_eq!(got.map(|j| j["price"].as_f64()), expected_price.map(Some));
    shutdown.cancel();
    run.await.unwrap().unwrap();

    // A restart resumes from the stored position and loads the cache: still equal after
    // more writes.
    db.exec("INSERT INTO ticks VALUES (now() + interval '1 hour', 'S3', 1, 1)")
        .await;
    let db_config = lakets::db::parse_config(&db.url).unwrap();
    let mut pipeline_config = PipelineConfig::new(SourceSettings::new(&slot, "lakets"));
    pipeline_config.flush_interval = Duration::from_millis(50);
    let lvc = LastValueCache::new(db.connect().await, slot.clone())
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(
        lakets::operators::pipeline(db_config, pipeline_config)
            .operator(lvc)
            .run(shutdown.clone()),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while cache_rows(&db).await != rows(&db, RECOMPUTED).await {
        assert!(Instant::now() < deadline, "not equal after restart");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
    run.await.unwrap().unwrap();
}

#[tokio::test]
async fn enabling_a_cache_refuses_bad_requests_clearly() {
    let mut db = fresh_db("lvc_bad").await;
    ticks_table(&mut db).await;
    db.exec(
        "CREATE TABLE keyed (id int NOT NULL, time timestamptz NOT NULL, symbol text NOT NULL,
                             nullable text, price float8, PRIMARY KEY (id, time))",
    )
    .await;
    let mut opts = lakets::chronotable::CreateOptions::new("time");
    opts.chunk_interval = lakets::interval::Interval::hours(1);
    lakets::chronotable::create_chronotable(&mut db.client, "keyed", &opts)
        .await
        .unwrap();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let cases: Vec<(&str, Vec<String>, Vec<String>, &str)> = vec![
        (
            "ticks",
            s(&["nope"]),
            s(&["price"]),
            "has no column \"nope\"",
        ),
        (
            "ticks",
            s(&["symbol"]),
            s(&["missing"]),
            "has no column \"missing\"",
        ),
        ("ticks", s(&["symbol"]), s(&["time"]), "always cached"),
        ("ticks", s(&["symbol"]), s(&["symbol"]), "named twice"),
        ("ticks", s(&[]), s(&["price"]), "at least one --key"),
        (
            "ticks",
            s(&["symbol\"; drop table ticks; --"]),
            s(&["price"]),
            "invalid name",
        ),
        ("keyed", s(&["nullable"]), s(&["price"]), "may be NULL"),
        (
            "keyed",
            s(&["symbol"]),
            s(&["price"]),
            "not part of the replica identity",
        ),
        (
            "nope",
            s(&["symbol"]),
            s(&["price"]),
            "ChronoTable nope does not exist",
        ),
    ];
    for (table, keys, values, expected) in cases {
        let err = lakets::lvc::enable_lvc(&mut db.client, table, &keys, &values)
            .await
            .expect_err(expected)
            .to_string();
        assert!(err.contains(expected), "expected {expected:?}: {err}");
    }
    let leftovers: i64 = db
        .scalar(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE n.nspname = 'lakets' AND c.relname LIKE 'lvc%'",
        )
        .await;
    assert_eq!(leftovers, 0, "refused requests leave nothing behind");
    lakets::lvc::enable_lvc(&mut db.client, "ticks", &s(&["symbol"]), &s(&["price"]))
        .await
        .unwrap();
    let err = lakets::lvc::enable_lvc(&mut db.client, "ticks", &s(&["symbol"]), &s(&["price"]))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("already has a Last Value Cache"), "{err}");
    // Teardown with the table.
    lakets::chronotable::drop_chronotable(&mut db.client, "ticks")
        .await
        .unwrap();
    assert!(
        !db.scalar::<bool>("SELECT to_regclass('lakets.lvc_ticks') IS NOT NULL")
            .await
    );
}

/// `verify` accepts any of the rows that share a key's latest time (the cache keeps one of
/// them), and still counts a wrong cached value or a missing key.
#[tokio::test]
async fn verify_accepts_ties_at_the_latest_time_and_catches_wrong_values() {
    let mut db = fresh_db("lvc_ties").await;
    ticks_table(&mut db).await;
    db.exec(
        "INSERT INTO ticks VALUES (date_trunc('second', now()), 'S0', 1, 1),
                                  (date_trunc('second', now()), 'S0', 2, 2)",
    )
    .await;
    lakets::lvc::enable_lvc(
        &mut db.client,
        "ticks",
        &["symbol".into()],
        &["price".into(), "volume".into()],
    )
    .await
    .unwrap();
    assert_eq!(lvc_differences(&db).await, Some(0));
    db.exec("UPDATE lakets.lvc_ticks SET price = 99 WHERE symbol = 'S1'")
        .await;
    assert_eq!(lvc_differences(&db).await, Some(1));
    db.exec("DELETE FROM lakets.lvc_ticks WHERE symbol = 'S2'")
        .await;
    assert_eq!(lvc_differences(&db).await, Some(2));
}

async fn lvc_differences(db: &TestDb) -> Option<i64> {
    lakets::verify::verify(&db.client, "ticks")
        .await
        .unwrap()
        .lvc_differences
}

fn lvc_pipeline(db: &TestDb, slot: &str) -> PipelineConfig {
    let _ = db;
    let mut c = PipelineConfig::new(SourceSettings::new(slot, "lakets"));
    c.flush_interval = Duration::from_millis(50);
    c.ack_interval = Duration::from_millis(50);
    c.heartbeat_interval = Some(Duration::from_millis(200));
    c.max_slice_changes = 3; // transactions span several slices
    c
}

async fn start_lvc(
    db: &TestDb,
    slot: &str,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<lakets::Result<()>>,
) {
    let lvc = LastValueCache::new(db.connect().await, slot.to_owned())
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(
        lakets::operators::pipeline(db.config(), lvc_pipeline(db, slot))
            .operator(lvc)
            .run(shutdown.clone()),
    );
    (shutdown, run)
}

async fn caught_up(db: &TestDb, slot: &str, run: &tokio::task::JoinHandle<lakets::Result<()>>) {
    let end: Lsn = db
        .scalar::<String>("SELECT pg_current_wal_insert_lsn()::text")
        .await
        .parse()
        .unwrap();
    wait_until_confirmed(&db.client, slot, end, Duration::from_secs(60)).await;
    assert!(!run.is_finished(), "the pipeline stopped early: {run:?}");
}

/// Rows in one query and not the other, both ways, compared by value (not as text).
async fn differences(db: &TestDb, a: &str, b: &str) -> i64 {
    db.scalar(&format!(
        "SELECT (SELECT count(*) FROM (({a}) EXCEPT ALL ({b})) x)
              + (SELECT count(*) FROM (({b}) EXCEPT ALL ({a})) y)"
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_of_time_and_float_types_are_compared_as_values_under_any_time_zone() {
    let mut db = fresh_db("lvc_typed_keys").await;
    // The database's sessions read times in New York and floats at 0 extra digits: text
    // built by those sessions is not the stream's.
    db.exec(&format!(
        "ALTER DATABASE {} SET TimeZone = 'America/New_York';
         ALTER DATABASE {} SET extra_float_digits = 0",
        db.name, db.name
    ))
    .await;
    db.client = common::user_connect(&db.url).await;
    db.exec(
        "CREATE TABLE readings (time timestamptz NOT NULL, session timestamptz NOT NULL,
                                level double precision NOT NULL, price double precision);
         INSERT INTO readings
           SELECT now() - i * interval '10 minutes',
                  timestamptz '2026-03-01 09:30:00.25+00' + (i % 3) * interval '1 day',
                  (ARRAY[0.1, 1e20, 2.0000000000000004])[1 + i % 3 / 1],
                  i
             FROM generate_series(1, 30) i;",
    )
    .await;
    let mut opts = lakets::chronotable::CreateOptions::new("time");
    opts.chunk_interval = lakets::interval::Interval::hours(1);
    lakets::chronotable::create_chronotable(&mut db.client, "readings", &opts)
        .await
        .unwrap();
    lakets::lvc::enable_lvc(
        &mut db.client,
        "readings",
        &["session".into(), "level".into()],
        &["price".into()],
    )
    .await
    .unwrap();
    let slot = lakets::wal::slot::default_slot_name(&db.name);
    const CACHED: &str = "SELECT session, level, time, price FROM lakets.lvc_readings";
    const LATEST: &str = "SELECT DISTINCT ON (session, level) session, level, time, price
                            FROM readings ORDER BY session, level, time DESC";

    // Restarted between every step: each one reloads the keys from the cache table, as
    // this database's sessions print them.
    for round in 0..3 {
        let (shutdown, run) = start_lvc(&db, &slot).await;
        db.exec(&format!(
            "INSERT INTO readings SELECT now() + interval '{round} seconds', session, level, 1000 + {round}
               FROM (SELECT DISTINCT session, level FROM readings) k"
        ))
        .await;
        // The latest row of a key moves back in time (the cache falls back to the table).
        db.exec(
            "UPDATE readings SET time = time - interval '1 hour'
              WHERE (session, level, time) IN (SELECT session, level, max(time) FROM readings
                                                 WHERE level = 0.1 GROUP BY 1, 2)",
        )
        .await;
        // A key loses its latest row, and one key loses every row (it leaves the cache).
        db.exec(
            "DELETE FROM readings WHERE (session, level, time) IN
               (SELECT session, level, max(time) FROM readings WHERE level = 1e20 GROUP BY 1, 2)",
        )
        .await;
        if round == 1 {
            db.exec("DELETE FROM readings WHERE level = 2.0000000000000004 AND session = timestamptz '2026-03-03 09:30:00.25+00'")
                .await;
        }
        caught_up(&db, &slot, &run).await;
        shutdown.cancel();
        run.await.unwrap().unwrap();
        assert_eq!(
            differences(&db, CACHED, LATEST).await,
            0,
            "round {round}: the cache table == the latest row per key"
        );
    }
    let keys: i64 = db.scalar("SELECT count(*) FROM lakets.lvc_readings").await;
    let distinct: i64 = db
        .scalar("SELECT count(*) FROM (SELECT DISTINCT session, level FROM readings) k")
        .await;
    assert_eq!(keys, distinct);
    // A key typed in another zone's notation finds its row.
    let got = lakets::lvc::get_lvc(
        &db.client,
        "readings",
        &["2026-03-02 04:30:00.25-05".into(), "1e20".into()],
    )
    .await
    .unwrap();
    assert!(
        got.is_some(),
        "the key of the second session at 1e20 is cached"
    );
    // The key every row of which was deleted left the cache table.
    assert_eq!(
        db.scalar::<i64>(
            "SELECT count(*) FROM lakets.lvc_readings WHERE level = 2.0000000000000004"
        )
        .await,
        0
    );
    assert_eq!(lvc_verify(&db, "readings").await, Some(0));
}

async fn lvc_verify(db: &TestDb, table: &str) -> Option<i64> {
    lakets::verify::verify(&db.client, table)
        .await
        .unwrap()
        .lvc_differences
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_enabled_or_dropped_while_streaming_starts_and_ends_at_its_transaction() {
    let mut db = fresh_db("lvc_reconfigured").await;
    ticks_table(&mut db).await;
    lakets::catalog::replication::ensure_default_consumer(&db.client)
        .await
        .unwrap();
    let slot = lakets::wal::slot::default_slot_name(&db.name);
    let (shutdown, run) = start_lvc(&db, &slot).await;
    // A transaction of many slices, streaming while the cache does not exist yet.
    db.exec("INSERT INTO ticks SELECT now() + g * interval '1 ms', 'EARLY', g, g FROM generate_series(1, 20) g")
        .await;
    lakets::lvc::enable_lvc(
        &mut db.client,
        "ticks",
        &["symbol".into()],
        &["price".into(), "volume".into()],
    )
    .await
    .unwrap();
    // Every slice of this transaction reaches the new cache, not only its first.
    db.exec(
        "BEGIN;
         INSERT INTO ticks SELECT now() + g * interval '1 ms', 'S' || (g % 7), g, g FROM generate_series(1, 40) g;
         UPDATE ticks SET price = -1 WHERE symbol = 'S3';
         COMMIT;",
    )
    .await;
    caught_up(&db, &slot, &run).await;
    assert_eq!(cache_rows(&db).await, rows(&db, RECOMPUTED).await);
    // Dropped while streaming: the stream goes on without it.
    lakets::lvc::disable_lvc(&mut db.client, "ticks")
        .await
        .unwrap();
    db.exec("INSERT INTO ticks VALUES (now() + interval '1 hour', 'S1', 1, 1)")
        .await;
    caught_up(&db, &slot, &run).await;
    assert!(
        db.scalar::<Option<String>>("SELECT to_regclass('lakets.lvc_ticks')::text")
            .await
            .is_none()
    );
    shutdown.cancel();
    run.await.unwrap().unwrap();
}
