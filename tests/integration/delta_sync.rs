//! The cold tier against a real PostgreSQL and a real Delta table on a local directory:
//! the initial snapshot, a random workload of inserts, late rows, updates (key changes
//! across partitions included) and deletes, restarts, ADD COLUMN, and a type change the
//! mirror cannot follow. After each step the Delta table, read back through `deltalake`,
//! equals the PostgreSQL table row for row (as multisets: no loss, no duplicate).

use crate::common;

use std::time::Duration;

use common::wal::{wait_slot_released, wait_until_confirmed};
use common::{TestDb, fresh_db};
use lakets::delta::batch::CellRow;
use lakets::delta::mirror::{MaintenancePolicy, shape_of};
use lakets::delta::schema::Partitioning;
use lakets::ident::TableName;
use lakets::operators::delta_sink::{DeltaSink, MaintenanceSchedule};
use lakets::wal::lsn::Lsn;
use lakets::wal::{PipelineConfig, SourceSettings};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// One pipeline at a time in this process.
static SERIAL: Mutex<()> = Mutex::const_new(());

struct Rng(u64);
impl Rng {
    fn seeded(label: &str) -> Self {
        let seed = std::env::var("LAKETS_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            })
            | 1;
        eprintln!("{label}: LAKETS_TEST_SEED={seed}");
        Rng(seed)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

async fn ticks_table(db: &mut TestDb, rows: i64) {
    db.exec(&format!(
        "CREATE TABLE ticks (time timestamptz NOT NULL, symbol text NOT NULL,
                             price numeric(12, 4), volume bigint, note text,
                             PRIMARY KEY (symbol, time));
         INSERT INTO ticks
           SELECT date_trunc('hour', now()) - i * interval '7 minutes 13.000123 seconds',
                  'S' || (i % 7), (i % 1000) / 7.0, i, CASE WHEN i % 3 = 0 THEN NULL ELSE 'n' || i END
             FROM generate_series(1, {rows}) i;"
    ))
    .await;
    let mut opts = lakets::chronotable::CreateOptions::new("time");
    opts.chunk_interval = lakets::interval::Interval::hours(6);
    opts.premake = 2;
    lakets::chronotable::create_chronotable(&mut db.client, "ticks", &opts)
        .await
        .unwrap();
}

fn sorted(mut rows: Vec<CellRow>) -> Vec<CellRow> {
    rows.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
    rows
}

/// Asserts the Delta table equals the PostgreSQL table `ticks` (as multisets of rows).
async fn assert_mirrored(db: &TestDb, location: &url::Url, what: &str) {
    assert_table_mirrored(db, "ticks", location, what).await;
}

/// Asserts the Delta table at `location` equals the PostgreSQL table `table` (as multisets
/// of rows, in the Delta table's shape); returns how many rows they hold.
async fn assert_table_mirrored(db: &TestDb, table: &str, location: &url::Url, what: &str) -> usize {
    let delta = lakets::delta::table::open(location).await.unwrap().unwrap();
    let shape = shape_of(&delta, "time", Partitioning::Day).unwrap();
    let lake = sorted(lakets::delta::read::scan(&delta, &shape).await.unwrap());
    let client = db.connect().await;
    let hot = sorted(
        lakets::sync::postgres_rows(&client, &TableName::new("public", table), &shape)
            .await
            .unwrap(),
    );
    if lake != hot {
        let only_lake: Vec<_> = lake.iter().filter(|r| !hot.contains(r)).take(5).collect();
        let only_hot: Vec<_> = hot.iter().filter(|r| !lake.contains(r)).take(5).collect();
        panic!(
            "{what}: Delta has {} rows, PostgreSQL {}; only in Delta: {only_lake:?}; only in \
             PostgreSQL: {only_hot:?}",
            lake.len(),
            hot.len()
        );
    }
    lake.len()
}

/// Sets the Delta operator's durable position back to `lsn`, as a crash between a Delta
/// commit and its progress row leaves it: the stream replays from there.
async fn rewind_delta_progress(db: &TestDb, lsn: Lsn) {
    db.exec(&format!(
        "UPDATE lakets._sink_progress SET durable_lsn = '{lsn}' WHERE operator = 'delta'"
    ))
    .await;
}

fn pipeline_config(slot: &str) -> PipelineConfig {
    let mut c = PipelineConfig::new(SourceSettings::new(slot, "lakets"));
    c.flush_interval = Duration::from_millis(100);
    c.ack_interval = Duration::from_millis(100);
    c.heartbeat_interval = Some(Duration::from_millis(300));
    c
}

async fn start(db: &TestDb, slot: &str) -> (CancellationToken, JoinHandle<lakets::Result<()>>) {
    let sink = DeltaSink::new(db.connect().await, slot).await.unwrap();
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(
        lakets::operators::pipeline(
            lakets::db::parse_config(&db.url).unwrap(),
            pipeline_config(slot),
        )
        .operator(sink)
        .run(shutdown.clone()),
    );
    (shutdown, run)
}

async fn lsn_now(db: &TestDb) -> Lsn {
    db.scalar::<String>("SELECT pg_current_wal_insert_lsn()::text")
        .await
        .parse()
        .unwrap()
}

async fn catch_up(db: &TestDb, slot: &str, run: &JoinHandle<lakets::Result<()>>) {
    let end = lsn_now(db).await;
    wait_until_confirmed(&db.client, slot, end, Duration::from_secs(90)).await;
    assert!(!run.is_finished(), "the pipeline stopped early");
}

/// One random statement (or small transaction) of the workload.
fn random_statement(rng: &mut Rng, tick: &mut i64) -> String {
    *tick += 1;
    let t = *tick;
    let symbol = format!("S{}", rng.below(7));
    let pick = |rng: &mut Rng, order: &str| {
        format!(
            "(SELECT symbol, time FROM ticks WHERE symbol = '{symbol}' ORDER BY time {order} OFFSET {} LIMIT 1)",
            rng.below(5)
        )
    };
    match rng.below(12) {
        0..=3 => format!(
            "INSERT INTO ticks SELECT now() + ({t} * 1000 + i) * interval '1 microsecond', '{symbol}', {}.25, i, 'x' || i
               FROM generate_series(1, {}) i",
            rng.below(500),
            1 + rng.below(20)
        ),
        // Late rows, into older partitions.
        4 => format!(
            "INSERT INTO ticks VALUES (now() - interval '{} hours' + {t} * interval '1 microsecond', '{symbol}', 1.5, 1, NULL)",
            1 + rng.below(60)
        ),
        5 | 6 => {
            let order = if rng.below(2) == 0 { "DESC" } else { "ASC" };
            format!(
                "UPDATE ticks SET price = price + 1, note = 'corrected' WHERE (symbol, time) IN {}",
                pick(rng, order)
            )
        }
        // The key changes: another time (another partition) and symbol.
        7 => format!(
            "UPDATE ticks SET time = time - interval '{} hours' + {t} * interval '1 microsecond', symbol = 'S{}'
              WHERE (symbol, time) IN {}",
            1 + rng.below(30),
            rng.below(7),
            pick(rng, "DESC")
        ),
        8 | 9 => format!("DELETE FROM ticks WHERE (symbol, time) IN {}", pick(rng, "ASC")),
        // A transaction that inserts, corrects and deletes its own rows.
        10 => format!(
            "BEGIN;
             INSERT INTO ticks VALUES (now() + {t} * interval '1 millisecond', 'T', 1, 1, 'a'),
                                      (now() + {t} * interval '1 millisecond', 'U', 2, 2, 'b');
             UPDATE ticks SET price = 3 WHERE symbol = 'T' AND time = now() + {t} * interval '1 millisecond';
             DELETE FROM ticks WHERE symbol = 'U' AND time = now() + {t} * interval '1 millisecond';
             COMMIT;"
        ),
        _ => format!(
            "DELETE FROM ticks WHERE symbol = '{symbol}' AND time < now() - interval '{} hours' AND time > now() - interval '{} hours'",
            20 + rng.below(10),
            31 + rng.below(10)
        ),
    }
}

/// The random workload with Change Data Feed, restarts and a replay of already committed
/// windows: the feed (the `deltalake` package's `load_cdf`), applied version by version
/// from an empty table, builds exactly PostgreSQL's table, never deleting a row that is not
/// there or inserting one twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_change_feed_replays_to_the_table_through_a_random_workload_and_restarts() {
    random_workload_feed("delta_random_cdf", crate::delta_cdf::CDF).await;
}

/// The same with deletion vectors: every rewrite, `verify` and the log's row count read
/// the files through their vectors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_vectors_keep_the_table_and_its_feed_exact_through_a_random_workload() {
    random_workload_feed("delta_random_dv", crate::delta_cdf::CDF_AND_VECTORS).await;
}

async fn random_workload_feed(label: &str, features: lakets::sync::Features) {
    let Some(python) = common::interop_python("deltalake", "deltalake") else {
        eprintln!("SKIPPED: set LAKETS_INTEROP_PYTHON to the interop venv's Python");
        return;
    };
    let _serial = SERIAL.lock().await;
    let mut db = fresh_db(label).await;
    ticks_table(&mut db, 600).await;
    // The hour the history ends at (ranges below are taken from it, not from a clock
    // that may have passed the next hour by then).
    let hour_of_history: i64 = db
        .scalar("SELECT (extract(epoch FROM max(time) + interval '1 hour') * 1000000)::bigint / 3600000000 * 3600000000 FROM ticks")
        .await;
    let dir = tempfile::tempdir().unwrap();
    let location = dir.path().join("ticks");
    let config = common::sync_with(&db, "ticks", &location, features).await;
    let slot = lakets::wal::slot::default_slot_name(&db.name);
    let mut rng = Rng::seeded(label);
    let mut tick = 0;
    let (shutdown, run) = start(&db, &slot).await;
    for _ in 0..150 {
        db.exec(&random_statement(&mut rng, &mut tick)).await;
    }
    catch_up(&db, &slot, &run).await;
    shutdown.cancel();
    run.await.unwrap().unwrap();
    // Writes while the service is down, then a replay from before what Delta holds (a
    // crash between the Delta commit and the progress row).
    for _ in 0..40 {
        db.exec(&random_statement(&mut rng, &mut tick)).await;
    }
    rewind_delta_progress(&db, config.start_lsn.unwrap()).await;
    let (shutdown, run) = start(&db, &slot).await;
    for _ in 0..40 {
        db.exec(&random_statement(&mut rng, &mut tick)).await;
    }
    catch_up(&db, &slot, &run).await;
    shutdown.cancel();
    run.await.unwrap().unwrap();
    assert_mirrored(&db, &config.location, "after the workload").await;
    let report = lakets::verify::verify(&db.client, "ticks").await.unwrap();
    assert!(report.ok, "{:?}", report.differences);
    if features.deletion_vectors {
        let delta = lakets::delta::table::open(&config.location)
            .await
            .unwrap()
            .unwrap();
        let marked = lakets::delta::read::active_files(&delta)
            .await
            .unwrap()
            .iter()
            .filter(|f| f.deletion_vector_descriptor().is_some())
            .count();
        assert!(marked > 0, "no file carries a deletion vector");
        // The table's row count by its log alone subtracts the vectors' rows.
        let summary = lakets::delta::read::summary(&delta, None).await.unwrap();
        let rows: i64 = db.scalar("SELECT count(*) FROM ticks").await;
        assert_eq!(summary.rows, Some(rows as u64));
        // The gate's count of a time range (invariant 3): files wholly inside count by
        // their statistics less their vectors, straddling files are read through them.
        let shape = shape_of(&delta, "time", Partitioning::Day).unwrap();
        let now = hour_of_history;
        for (hours, ahead) in [9, 30, 1000]
            .into_iter()
            .flat_map(|h| [-2, 0, 1, 2].map(|a| (h, a)))
        {
            let now = now + ahead * 3_600_000_000;
            let start = now - hours * 3_600_000_000;
            let want: i64 = db
                .scalar(&format!(
                    "SELECT count(*) FROM ticks WHERE time >= 'epoch'::timestamptz + {start} * interval '1 microsecond'
                        AND time < 'epoch'::timestamptz + {now} * interval '1 microsecond'"
                ))
                .await;
            let got = lakets::delta::read::count_range(&delta, &shape, start, now)
                .await
                .unwrap();
            assert_eq!(
                got, want as u64,
                "rows of {hours} hours up to {ahead} h from now"
            );
        }
    }

    let read = crate::delta_cdf::read_back(&python, &location, Some(0));
    let by_version = crate::delta_cdf::feed_by_version(&read["feed"]);
    let changed = by_version
        .values()
        .flatten()
        .filter(|c| c.0 != "insert")
        .count();
    assert!(
        changed > 50,
        "the workload updated and deleted: {changed} changes"
    );
    let replayed = crate::delta_cdf::replay(&by_version);
    let want = crate::delta_cdf::pg_state(&db).await;
    assert_eq!(replayed.len(), want.len());
    assert_eq!(
        replayed, want,
        "the feed replayed against PostgreSQL's table"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_delta_table_equals_the_postgres_table_through_a_random_workload_and_restarts() {
    let _serial = SERIAL.lock().await;
    common::init_test_logging();
    let mut db = fresh_db("delta_random").await;
    ticks_table(&mut db, 600).await;
    let dir = tempfile::tempdir().unwrap();
    let location = dir.path().join("ticks");
    let db_config = lakets::db::parse_config(&db.url).unwrap();
    let config = lakets::sync::enable_sync(
        &db_config,
        "ticks",
        location.to_str().unwrap(),
        Partitioning::Day,
        |_| {},
    )
    .await
    .unwrap();
    assert_eq!(config.rows_copied, 600);
    assert_eq!(config.state, lakets::sync::SyncState::Active);
    assert_mirrored(&db, &config.location, "initial snapshot").await;
    // Day partitions, as directories.
    let days = std::fs::read_dir(&location)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("time_day=")
        })
        .count();
    assert!(days >= 3, "expected several day partitions, found {days}");

    // Enabling twice is refused; the registry says so.
    let again = lakets::sync::enable_sync(
        &db_config,
        "ticks",
        location.to_str().unwrap(),
        Partitioning::Day,
        |_| {},
    )
    .await
    .unwrap_err();
    assert!(again.to_string().contains("already synced"), "{again}");

    let slot = lakets::wal::slot::default_slot_name(&db.name);
    let (shutdown, run) = start(&db, &slot).await;
    let mut rng = Rng::seeded("delta_random");
    let mut tick = 0;
    for _ in 0..250 {
        db.exec(&random_statement(&mut rng, &mut tick)).await;
    }
    catch_up(&db, &slot, &run).await;
    assert_mirrored(&db, &config.location, "after the random workload").await;

    // The durable LSN is the `txn` action of the table's last commit.
    let delta = lakets::delta::table::open(&config.location)
        .await
        .unwrap()
        .unwrap();
    let txn = lakets::delta::table::txn_lsn(
        &delta,
        &lakets::sync::stream_app_id(&slot, &TableName::new("public", "ticks"), None),
    )
    .await
    .unwrap()
    .expect("a txn action");
    let durable: Lsn = db
        .scalar::<String>(
            "SELECT durable_lsn::text FROM lakets._sink_progress WHERE operator = 'delta'",
        )
        .await
        .parse()
        .unwrap();
    assert!(txn <= durable && txn > config.start_lsn.unwrap());

    shutdown.cancel();
    run.await.unwrap().unwrap();

    // Writes while the service is down, then a restart: caught up, still equal.
    for _ in 0..60 {
        db.exec(&random_statement(&mut rng, &mut tick)).await;
    }
    let (shutdown, run) = start(&db, &slot).await;
    catch_up(&db, &slot, &run).await;
    assert_mirrored(&db, &config.location, "after a restart").await;

    // A progress row older than the Delta table (a crash between the Delta commit and
    // the progress update): the stream replays, the table's txn skips, no duplicates.
    shutdown.cancel();
    run.await.unwrap().unwrap();
    rewind_delta_progress(&db, config.start_lsn.unwrap()).await;
    // The slot is ahead of that position: replay what it still holds.
    let (shutdown, run) = start(&db, &slot).await;
    for _ in 0..30 {
        db.exec(&random_statement(&mut rng, &mut tick)).await;
    }
    catch_up(&db, &slot, &run).await;
    assert_mirrored(&db, &config.location, "after a replay").await;

    // `lakets verify` agrees, chunk by chunk.
    let report = lakets::verify::verify(&db.client, "ticks").await.unwrap();
    assert!(report.ok, "{:?}", report.differences);
    assert!(report.chunks.len() >= 3);
    assert!(report.chunks.iter().any(|c| c.postgres_rows > 0));

    // TRUNCATE is mirrored.
    db.exec("TRUNCATE ticks").await;
    db.exec("INSERT INTO ticks VALUES (now(), 'Z', 1, 1, 'after truncate')")
        .await;
    catch_up(&db, &slot, &run).await;
    assert_mirrored(&db, &config.location, "after TRUNCATE").await;
    shutdown.cancel();
    run.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_column_evolves_the_delta_schema_and_a_type_change_stops_the_stream() {
    let _serial = SERIAL.lock().await;
    common::init_test_logging();
    let mut db = fresh_db("delta_schema").await;
    ticks_table(&mut db, 50).await;
    let dir = tempfile::tempdir().unwrap();
    let db_config = lakets::db::parse_config(&db.url).unwrap();
    let config = lakets::sync::enable_sync(
        &db_config,
        "ticks",
        dir.path().join("t").to_str().unwrap(),
        Partitioning::Day,
        |_| {},
    )
    .await
    .unwrap();
    let slot = lakets::wal::slot::default_slot_name(&db.name);
    let (_shutdown, run) = start(&db, &slot).await;
    db.exec("INSERT INTO ticks VALUES (now(), 'A', 1, 1, 'before')")
        .await;
    db.exec("ALTER TABLE ticks ADD COLUMN exchange text").await;
    db.exec("INSERT INTO ticks VALUES (now() + interval '1 second', 'A', 2, 2, 'after', 'XNAS')")
        .await;
    db.exec("UPDATE ticks SET exchange = 'XNYS' WHERE note = 'before'")
        .await;
    catch_up(&db, &slot, &run).await;
    let delta = lakets::delta::table::open(&config.location)
        .await
        .unwrap()
        .unwrap();
    let shape = shape_of(&delta, "time", Partitioning::Day).unwrap();
    assert_eq!(shape.columns.last().unwrap().name, "exchange");
    assert_mirrored(&db, &config.location, "after ADD COLUMN").await;

    // A type change the mirror cannot follow: the stream stops, says why, and does not
    // acknowledge past it.
    let before = common::wal::slot_confirmed(&db.client, &slot).await;
    db.exec("ALTER TABLE ticks ALTER COLUMN volume TYPE text")
        .await;
    let change = lsn_now(&db).await;
    db.exec("INSERT INTO ticks VALUES (now() + interval '2 seconds', 'A', 3, 'three', 'x', NULL)")
        .await;
    let err = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the pipeline stops")
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(err, lakets::Error::Unsupported(_)) && err.to_string().contains("volume"),
        "{err}"
    );
    let after = common::wal::slot_confirmed(&db.client, &slot).await;
    assert!(
        after >= before && after < change,
        "{after} vs change at {change}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_initial_snapshot_meets_the_stream_while_writes_continue() {
    let _serial = SERIAL.lock().await;
    common::init_test_logging();
    let mut db = fresh_db("delta_snapshot").await;
    ticks_table(&mut db, 20_000).await;
    let slot = lakets::wal::slot::default_slot_name(&db.name);
    // The service runs before the sync exists (it must not lose what comes during the copy).
    lakets::catalog::replication::ensure_default_consumer(&db.client)
        .await
        .unwrap();
    let (shutdown, run) = start(&db, &slot).await;

    let writer_db = db.connect().await;
    let stop = CancellationToken::new();
    let stop_writer = stop.clone();
    let writer = tokio::spawn(async move {
        let mut i = 0i64;
        while !stop_writer.is_cancelled() {
            i += 1;
            writer_db
                .batch_execute(&format!(
                    "INSERT INTO ticks VALUES (now() + {i} * interval '1 microsecond', 'W', {i}, {i}, NULL);
                     UPDATE ticks SET note = 'touched {i}' WHERE (symbol, time) IN
                       (SELECT symbol, time FROM ticks WHERE symbol = 'S{}' ORDER BY time LIMIT 1 OFFSET {});",
                    i % 7,
                    i % 50
                ))
                .await
                .unwrap();
        }
        i
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let dir = tempfile::tempdir().unwrap();
    let db_config = lakets::db::parse_config(&db.url).unwrap();
    let mut reports = 0;
    let config = lakets::sync::enable_sync(
        &db_config,
        "ticks",
        dir.path().join("t").to_str().unwrap(),
        Partitioning::Day,
        |_| reports += 1,
    )
    .await
    .unwrap();
    assert!(reports >= 1, "the copy reports its progress");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    let writes = writer.await.unwrap();
    assert!(writes > 10, "writes went on during the copy ({writes})");
    catch_up(&db, &slot, &run).await;
    assert_mirrored(&db, &config.location, "snapshot + stream").await;
    shutdown.cancel();
    run.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_sync_requests_are_refused_and_change_nothing() {
    let _serial = SERIAL.lock().await;
    let mut db = fresh_db("delta_bad").await;
    ticks_table(&mut db, 10).await;
    db.exec("CREATE TABLE plain (time timestamptz NOT NULL, v int)")
        .await;
    let dir = tempfile::tempdir().unwrap();
    let db_config = lakets::db::parse_config(&db.url).unwrap();
    let path = dir.path().join("t");
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "plain",
            path.display().to_string(),
            "ChronoTable plain does not exist",
        ),
        ("nope", path.display().to_string(), "nope"),
        ("ticks", "ftp://host/x".into(), "unsupported scheme"),
        ("ticks", "s3://key:secret@bucket/x".into(), "environment"),
        ("ticks", "s3://bucket/x?access_key=1".into(), "environment"),
        ("ticks", "s3://".into(), "names no bucket"),
        ("ticks", "".into(), "empty"),
    ];
    for (table, location, expected) in cases {
        let err =
            lakets::sync::enable_sync(&db_config, table, &location, Partitioning::Day, |_| {})
                .await
                .unwrap_err()
                .to_string();
        assert!(
            err.to_lowercase().contains(&expected.to_lowercase()),
            "{table} -> {location}: {err}"
        );
    }
    // An unsupported column type is named.
    db.exec("ALTER TABLE ticks ADD COLUMN span int4range").await;
    let err = lakets::sync::enable_sync(
        &db_config,
        "ticks",
        path.to_str().unwrap(),
        Partitioning::Day,
        |_| {},
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("span"), "{err}");
    db.exec("ALTER TABLE ticks DROP COLUMN span").await;
    // A foreign Delta table at the location is not adopted.
    let other = dir.path().join("other");
    let shape = lakets::sync::postgres_shape(
        &db.client,
        &TableName::new("public", "ticks"),
        "time",
        Partitioning::None,
    )
    .await
    .unwrap();
    let url = lakets::delta::table::parse_location(other.to_str().unwrap()).unwrap();
    lakets::delta::table::create(&url, &shape, "other", Default::default())
        .await
        .unwrap();
    let err = lakets::sync::enable_sync(
        &db_config,
        "ticks",
        other.to_str().unwrap(),
        Partitioning::Day,
        |_| {},
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("already exists"), "{err}");
    let registered: i64 = db
        .scalar("SELECT count(*) FROM lakets._sync_registry")
        .await;
    assert_eq!(registered, 0, "nothing registered by refused requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_store_holds_the_slot_back_and_the_mirror_recovers_when_it_heals() {
    let _serial = SERIAL.lock().await;
    common::init_test_logging();
    let mut db = fresh_db("delta_store_fault").await;
    ticks_table(&mut db, 100).await;
    let dir = tempfile::tempdir().unwrap();
    let location = dir.path().join("t");
    let config = common::sync_to(&db, "ticks", location.to_str().unwrap()).await;
    let slot = lakets::wal::slot::default_slot_name(&db.name);
    let shutdown = CancellationToken::new();
    let run = {
        let (url, slot, shutdown) = (db.url.clone(), slot.clone(), shutdown.clone());
        tokio::spawn(async move {
            lakets::wal::run_with_restarts(
                || {
                    let (url, slot) = (url.clone(), slot.clone());
                    async move {
                        let db = lakets::db::parse_config(&url)?;
                        let sink =
                            DeltaSink::new(lakets::db::connect_with(&db).await?, slot.as_str())
                                .await?;
                        Ok(lakets::operators::pipeline(db, pipeline_config(&slot)).operator(sink))
                    }
                },
                shutdown,
            )
            .await
        })
    };
    db.exec("INSERT INTO ticks VALUES (now(), 'A', 1, 1, 'first')")
        .await;
    catch_up(&db, &slot, &run).await;
    let version = lakets::delta::table::open(&config.location)
        .await
        .unwrap()
        .unwrap()
        .version()
        .unwrap();

    // The store fails: the next log entry cannot be written (a directory squats its name).
    let squatter = location
        .join("_delta_log")
        .join(format!("{:020}.json", version + 1));
    std::fs::create_dir(&squatter).unwrap();
    let before = common::wal::slot_confirmed(&db.client, &slot).await;
    db.exec("INSERT INTO ticks SELECT now() + i * interval '1 ms', 'B', i, i, 'while failing' FROM generate_series(1, 100) i")
        .await;
    let end = lsn_now(&db).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = common::wal::slot_confirmed(&db.client, &slot).await;
    assert!(
        during < end,
        "the slot was acknowledged past changes the store never took ({before} -> {during}, end {end})"
    );
    assert_eq!(
        lakets::delta::table::open(&config.location)
            .await
            .unwrap()
            .unwrap()
            .version()
            .unwrap(),
        version,
        "nothing committed while the store fails"
    );
    assert!(!run.is_finished(), "a failing store is retried, not fatal");

    // The store heals: the mirror catches up, exactly once.
    std::fs::remove_dir(&squatter).unwrap();
    catch_up(&db, &slot, &run).await;
    assert_mirrored(&db, &config.location, "after the store healed").await;
    shutdown.cancel();
    run.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_compacts_checkpoints_and_vacuums_without_changing_a_row() {
    maintenance_case("delta_maintenance", lakets::sync::Features::default()).await;
}

/// The same on a table with deletion vectors and Change Data Feed: compaction drops the
/// vectors of the files it rewrites; vacuum keeps the vector files the current version
/// references.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_keeps_deletion_vectors_the_table_references() {
    maintenance_case("delta_maintenance_dv", crate::delta_cdf::CDF_AND_VECTORS).await;
}

async fn maintenance_case(label: &str, features: lakets::sync::Features) {
    let _serial = SERIAL.lock().await;
    let mut db = fresh_db(label).await;
    ticks_table(&mut db, 10).await;
    let dir = tempfile::tempdir().unwrap();
    let config = common::sync_with(&db, "ticks", &dir.path().join("t"), features).await;
    let slot = lakets::wal::slot::default_slot_name(&db.name);
    let (shutdown, run) = start(&db, &slot).await;
    // Many small commits: one file each.
    for i in 0..12 {
        db.exec(&format!(
            "INSERT INTO ticks VALUES (now() + {i} * interval '1 second', 'M', {i}, {i}, NULL)"
        ))
        .await;
        catch_up(&db, &slot, &run).await;
    }
    db.exec("DELETE FROM ticks WHERE symbol = 'M' AND volume < 3")
        .await;
    catch_up(&db, &slot, &run).await;
    shutdown.cancel();
    run.await.unwrap().unwrap();

    let mut delta = lakets::delta::table::open(&config.location)
        .await
        .unwrap()
        .unwrap();
    let shape = shape_of(&delta, "time", Partitioning::Day).unwrap();
    let files_before = delta.get_file_uris().unwrap().count();
    let outcome = lakets::delta::maintenance::compact(&mut delta, &shape, 4, 8 << 20)
        .await
        .unwrap()
        .expect("no other writer committed meanwhile");
    let files_after = delta.get_file_uris().unwrap().count();
    assert!(outcome.files_removed >= 4, "{outcome:?}");
    assert_eq!(
        files_after,
        files_before - outcome.files_removed + outcome.files_added
    );
    assert!(files_after < files_before);
    assert_mirrored(&db, &config.location, "after compaction").await;

    lakets::delta::maintenance::checkpoint(&delta)
        .await
        .unwrap();
    assert!(
        dir.path().join("t/_delta_log/_last_checkpoint").exists(),
        "a checkpoint was written"
    );
    let parquet_on_disk = |root: &std::path::Path| {
        fn walk(p: &std::path::Path, n: &mut usize) {
            for e in std::fs::read_dir(p).unwrap().flatten() {
                let path = e.path();
                if path.is_dir() {
                    walk(&path, n);
                } else if path.extension().is_some_and(|x| x == "parquet") {
                    *n += 1;
                }
            }
        }
        let mut n = 0;
        walk(root, &mut n);
        n
    };
    // A file no commit references (a window's file left by a crash before its commit).
    let orphan = dir
        .path()
        .join("t")
        .join("part-00000-orphan-c000.zstd.parquet");
    std::fs::write(&orphan, b"PAR1 never committed").unwrap();
    let on_disk_before = parquet_on_disk(&dir.path().join("t"));
    let vacuumed = lakets::delta::maintenance::vacuum(&mut delta, chrono::Duration::zero(), true)
        .await
        .unwrap();
    assert!(vacuumed > outcome.files_removed, "vacuumed {vacuumed}");
    assert!(!orphan.exists(), "the orphaned file went");
    assert_eq!(
        parquet_on_disk(&dir.path().join("t")),
        on_disk_before - vacuumed
    );
    // The table still opens (from the checkpoint) and still equals PostgreSQL.
    assert_mirrored(&db, &config.location, "after checkpoint and vacuum").await;

    // A delete into the compacted file, then a vacuum that keeps nothing old: with
    // deletion vectors, the vector the current version references stays.
    let (shutdown, run) = start(&db, &slot).await;
    db.exec("DELETE FROM ticks WHERE symbol = 'M' AND volume = 5")
        .await;
    catch_up(&db, &slot, &run).await;
    shutdown.cancel();
    run.await.unwrap().unwrap();
    let mut delta = lakets::delta::table::open(&config.location)
        .await
        .unwrap()
        .unwrap();
    lakets::delta::maintenance::vacuum(&mut delta, chrono::Duration::zero(), true)
        .await
        .unwrap();
    let vectors = std::fs::read_dir(dir.path().join("t"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("deletion_vector_")
        })
        .count();
    if features.deletion_vectors {
        assert_eq!(vectors, 1, "the referenced vector file, and only it");
    } else {
        assert_eq!(vectors, 0);
    }
    assert_mirrored(&db, &config.location, "after a delete and a vacuum").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_toast_values_survive_repeated_updates_and_deletes_in_one_window() {
    toast_case("delta_toast", lakets::sync::Features::default()).await;
}

/// The same with deletion vectors and Change Data Feed: the replaced rows are read from
/// their files (not rewritten) for their unchanged values; then ADD COLUMN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_toast_values_survive_with_deletion_vectors_and_change_data() {
    toast_case("delta_toast_dv", crate::delta_cdf::CDF_AND_VECTORS).await;
}

async fn toast_case(label: &str, features: lakets::sync::Features) {
    let _serial = SERIAL.lock().await;
    let mut db = fresh_db(label).await;
    db.exec(
        "CREATE TABLE docs (time timestamptz NOT NULL, id int NOT NULL, n int, body text,
                            PRIMARY KEY (id, time));
         INSERT INTO docs SELECT timestamptz '2026-11-20 00:00+00' + i * interval '1 hour', i, 0,
                                 (SELECT string_agg(md5(g::text || i::text), '') FROM generate_series(1, 400) g)
           FROM generate_series(1, 6) i;",
    )
    .await;
    let mut opts = lakets::chronotable::CreateOptions::new("time");
    opts.chunk_interval = lakets::interval::Interval::days(1);
    lakets::chronotable::create_chronotable(&mut db.client, "docs", &opts)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = common::sync_with(&db, "docs", &dir.path().join("docs"), features).await;
    let slot = lakets::wal::slot::default_slot_name(&db.name);
    let (shutdown, run) = start(&db, &slot).await;
    // The body (TOASTed, ~12 kB) is unchanged by these updates: pgoutput sends it as
    // "unchanged", and the rows were committed to Delta by the snapshot.
    db.exec(
        "BEGIN;
         UPDATE docs SET n = n + 1 WHERE id = 1;
         UPDATE docs SET n = n + 1 WHERE id = 1;
         UPDATE docs SET n = n + 1 WHERE id = 2;
         DELETE FROM docs WHERE id = 2;
         UPDATE docs SET n = 7 WHERE id = 3;
         UPDATE docs SET body = 'short', n = 8 WHERE id = 3;
         UPDATE docs SET n = 9 WHERE id = 3;
         COMMIT;",
    )
    .await;
    let end = lsn_now(&db).await;
    wait_until_confirmed(&db.client, &slot, end, Duration::from_secs(60)).await;
    assert!(!run.is_finished(), "the pipeline stopped");
    let rows = assert_table_mirrored(
        &db,
        "docs",
        &config.location,
        "after TOAST-unchanged updates",
    )
    .await;
    assert_eq!(rows, 5);

    // ADD COLUMN, then updates that set it and keep the TOASTed body.
    db.exec(
        "ALTER TABLE docs ADD COLUMN tag text;
         UPDATE docs SET tag = 'x', n = n + 1 WHERE id IN (4, 5);
         DELETE FROM docs WHERE id = 6",
    )
    .await;
    let end = lsn_now(&db).await;
    wait_until_confirmed(&db.client, &slot, end, Duration::from_secs(60)).await;
    assert!(!run.is_finished(), "the pipeline stopped");
    let delta = lakets::delta::table::open(&config.location)
        .await
        .unwrap()
        .unwrap();
    let shape = shape_of(&delta, "time", Partitioning::Day).unwrap();
    assert!(shape.columns.iter().any(|c| c.name == "tag"));
    let rows = assert_table_mirrored(&db, "docs", &config.location, "after ADD COLUMN").await;
    assert_eq!(rows, 4);
    shutdown.cancel();
    run.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_from_before_add_column_is_followed_and_a_second_enable_never_doubles() {
    let _serial = SERIAL.lock().await;
    let mut db = fresh_db("delta_replay").await;
    ticks_table(&mut db, 20).await;
    let dir = tempfile::tempdir().unwrap();
    let db_config = lakets::db::parse_config(&db.url).unwrap();
    let location = dir.path().join("t");
    let config = lakets::sync::enable_sync(
        &db_config,
        "ticks",
        location.to_str().unwrap(),
        Partitioning::Day,
        |_| {},
    )
    .await
    .unwrap();
    let slot = lakets::wal::slot::default_slot_name(&db.name);
    // A copy of the slot from before the ALTER, to replay from there later.
    db.exec(&format!(
        "SELECT pg_copy_logical_replication_slot('{slot}', 'before_alter')"
    ))
    .await;
    let before_alter: String = db
        .scalar("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'before_alter'")
        .await;
    let (shutdown, run) = start(&db, &slot).await;
    db.exec("INSERT INTO ticks VALUES (now(), 'OLD', 1, 1, 'old shape')")
        .await;
    db.exec("ALTER TABLE ticks ADD COLUMN venue text").await;
    db.exec("INSERT INTO ticks VALUES (now() + interval '1 s', 'NEW', 2, 2, 'new shape', 'XNAS')")
        .await;
    catch_up(&db, &slot, &run).await;
    shutdown.cancel();
    run.await.unwrap().unwrap();

    // As after a crash between the Delta commits and the acknowledgement: the slot and the
    // operator's progress are back before the ALTER; the Delta table already has `venue`.
    wait_slot_released(&db, &slot).await;
    db.exec(&format!(
        "SELECT pg_drop_replication_slot('{slot}');
         SELECT pg_copy_logical_replication_slot('before_alter', '{slot}');
         SELECT pg_drop_replication_slot('before_alter');
         UPDATE lakets._sink_progress SET durable_lsn = '{before_alter}' WHERE operator = 'delta';"
    ))
    .await;
    let (shutdown, run) = start(&db, &slot).await;
    db.exec("INSERT INTO ticks VALUES (now() + interval '2 s', 'AFTER', 3, 3, 'after', 'XNYS')")
        .await;
    catch_up(&db, &slot, &run).await;
    assert_mirrored(
        &db,
        &config.location,
        "after a replay from before ADD COLUMN",
    )
    .await;
    shutdown.cancel();
    run.await.unwrap().unwrap();

    // An `enable` interrupted after its copy was committed, run again: the new copy
    // replaces the old one, no row is doubled.
    db.exec(
        "UPDATE lakets._sync_registry SET state = 'copying', start_lsn = NULL;
         UPDATE lakets._chronotable_registry SET sync_enabled = false;",
    )
    .await;
    lakets::sync::enable_sync(
        &db_config,
        "ticks",
        location.to_str().unwrap(),
        Partitioning::Day,
        |_| {},
    )
    .await
    .unwrap();
    assert_mirrored(&db, &config.location, "after enabling twice").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_date_time_column_partitions_by_its_own_day() {
    let _serial = SERIAL.lock().await;
    let mut db = fresh_db("delta_date").await;
    db.exec(
        "CREATE TABLE daily (day date NOT NULL, v int);
         INSERT INTO daily VALUES ('2026-11-18', 1), ('2026-11-19', 2), ('2026-11-20', 3);",
    )
    .await;
    let mut opts = lakets::chronotable::CreateOptions::new("day");
    opts.chunk_interval = lakets::interval::Interval::days(1);
    lakets::chronotable::create_chronotable(&mut db.client, "daily", &opts)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    common::sync_to(&db, "daily", dir.path().join("d").to_str().unwrap()).await;
    let mut parts: Vec<String> = std::fs::read_dir(dir.path().join("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("day_day="))
        .collect();
    parts.sort();
    assert_eq!(
        parts,
        vec![
            "day_day=2026-11-18",
            "day_day=2026-11-19",
            "day_day=2026-11-20"
        ]
    );
}

/// A column dropped in PostgreSQL stops the stream with the reason (a replay of an older
/// shape, whose column PostgreSQL still has, does not: see the crash test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_column_stops_the_stream() {
    let _serial = SERIAL.lock().await;
    let mut db = fresh_db("delta_drop_column").await;
    ticks_table(&mut db, 10).await;
    let dir = tempfile::tempdir().unwrap();
    common::sync_to(&db, "ticks", dir.path().join("t").to_str().unwrap()).await;
    let slot = lakets::wal::slot::default_slot_name(&db.name);
    let (_shutdown, run) = start(&db, &slot).await;
    db.exec("ALTER TABLE ticks DROP COLUMN note").await;
    db.exec("INSERT INTO ticks VALUES (now() + interval '1 second', 'A', 1, 1)")
        .await;
    let err = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the pipeline stops")
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(err, lakets::Error::Unsupported(_))
            && err.to_string().contains("column \"note\"")
            && err.to_string().contains("is gone from PostgreSQL"),
        "{err}"
    );
}

/// A sink that compacts its own tables every `every` (small files: below 8 MB, from 4).
async fn maintaining_sink(db: &TestDb, slot: &str, every: Duration) -> DeltaSink {
    DeltaSink::new(db.connect().await, slot)
        .await
        .unwrap()
        .with_maintenance(MaintenanceSchedule {
            every,
            policy: MaintenancePolicy {
                compact_min_files: 4,
                small_file_bytes: 8 << 20,
                vacuum_retention: chrono::Duration::days(1),
            },
            instance: "test".into(),
        })
}

async fn start_sink(
    db: &TestDb,
    slot: &str,
    sink: DeltaSink,
) -> (CancellationToken, JoinHandle<lakets::Result<()>>) {
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(
        lakets::operators::pipeline(db.config(), pipeline_config(slot))
            .operator(sink)
            .run(shutdown.clone()),
    );
    (shutdown, run)
}

/// Twelve small commits of `symbol`'s rows (one file each), each streamed before the next.
async fn small_commits(
    db: &TestDb,
    slot: &str,
    run: &JoinHandle<lakets::Result<()>>,
    symbol: &str,
) {
    for i in 0..12 {
        db.exec(&format!(
            "INSERT INTO ticks SELECT now() + ({i} * 10 + g) * interval '1 second', '{symbol}', {i}, {i} * 10 + g, NULL
               FROM generate_series(0, 4) g"
        ))
        .await;
        catch_up(db, slot, run).await;
    }
}

async fn active_files(location: &url::Url) -> usize {
    let delta = lakets::delta::table::open(location).await.unwrap().unwrap();
    lakets::delta::read::active_files(&delta)
        .await
        .unwrap()
        .len()
}

/// Compaction with a command of another process: deltalake's Python package when the
/// interop Python has it (`pip install deltalake`), else a second writer in this process.
async fn compact_from_outside(location: &url::Url) -> &'static str {
    let path = location.to_file_path().unwrap();
    if let Ok(python) = std::env::var("LAKETS_INTEROP_PYTHON") {
        let probe = std::process::Command::new(&python)
            .args(["-c", "import deltalake"])
            .status()
            .unwrap();
        if probe.success() {
            let out = std::process::Command::new(&python)
                .args([
                    "-c",
                    "import sys, deltalake; print(deltalake.DeltaTable(sys.argv[1]).optimize.compact())",
                    path.to_str().unwrap(),
                ])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "deltalake (Python) compaction failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            return "deltalake (Python), another process";
        }
        assert!(
            std::env::var("LAKETS_REQUIRE_INTEROP").is_err(),
            "LAKETS_REQUIRE_INTEROP is set but {python} has no deltalake package"
        );
    }
    let mut delta = lakets::delta::table::open(location).await.unwrap().unwrap();
    let shape = shape_of(&delta, "time", Partitioning::Day).unwrap();
    lakets::delta::maintenance::compact(&mut delta, &shape, 4, 8 << 20)
        .await
        .unwrap()
        .expect("nothing else committed meanwhile");
    "a second deltalake writer in this process"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sinks_own_compaction_never_resurrects_or_doubles_rows() {
    let _serial = SERIAL.lock().await;
    let mut db = fresh_db("delta_own_compaction").await;
    ticks_table(&mut db, 10).await;
    let dir = tempfile::tempdir().unwrap();
    let config = common::sync_to(&db, "ticks", dir.path().join("t").to_str().unwrap()).await;
    let slot = lakets::wal::slot::default_slot_name(&db.name);
    let sink = maintaining_sink(&db, &slot, Duration::from_millis(300)).await;
    let (shutdown, run) = start_sink(&db, &slot, sink).await;
    small_commits(&db, &slot, &run, "M").await;
    // The sink compacts between its windows, and records it as a job run.
    common::wal::wait_for("the sink to compact", Duration::from_secs(30), async || {
        db.scalar::<i64>(
            "SELECT count(*) FROM lakets._job_runs, jsonb_array_elements(details) d
              WHERE job = 'delta_maintenance' AND outcome = 'ok'
                AND (d -> 'compaction' ->> 'files_removed')::int >= 4",
        )
        .await
            > 0
    })
    .await;
    // One DELETE and one UPDATE of rows now in the compacted file.
    db.exec("DELETE FROM ticks WHERE symbol = 'M' AND volume = 33")
        .await;
    db.exec("UPDATE ticks SET price = price + 100, note = 'corrected' WHERE symbol = 'M' AND volume = 57")
        .await;
    catch_up(&db, &slot, &run).await;
    assert_mirrored(&db, &config.location, "after the sink's own compaction").await;
    assert_eq!(
        db.scalar::<i64>("SELECT count(*) FROM ticks WHERE symbol = 'M'")
            .await,
        59
    );
    shutdown.cancel();
    run.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outside_compaction_between_two_windows_never_resurrects_or_doubles_rows() {
    let _serial = SERIAL.lock().await;
    let mut db = fresh_db("delta_outside_compaction").await;
    ticks_table(&mut db, 10).await;
    let dir = tempfile::tempdir().unwrap();
    let config = common::sync_to(&db, "ticks", dir.path().join("t").to_str().unwrap()).await;
    let slot = lakets::wal::slot::default_slot_name(&db.name);
    let (shutdown, run) = start(&db, &slot).await;
    small_commits(&db, &slot, &run, "M").await;
    let before = active_files(&config.location).await;
    let who = compact_from_outside(&config.location).await;
    assert!(
        active_files(&config.location).await < before,
        "{who} compacted"
    );
    // The sink's snapshot still lists the files the other writer removed: its next rewrite
    // must read the table's latest version.
    db.exec("DELETE FROM ticks WHERE symbol = 'M' AND volume = 33")
        .await;
    db.exec("UPDATE ticks SET price = price + 100, note = 'corrected' WHERE symbol = 'M' AND volume = 57")
        .await;
    catch_up(&db, &slot, &run).await;
    assert_mirrored(
        &db,
        &config.location,
        &format!("after a compaction by {who}"),
    )
    .await;
    // And again, with the other writer committing while the mirror streams.
    db.exec("INSERT INTO ticks SELECT now() + g * interval '1 ms', 'N', 1, g, NULL FROM generate_series(1, 50) g")
        .await;
    catch_up(&db, &slot, &run).await;
    compact_from_outside(&config.location).await;
    db.exec("DELETE FROM ticks WHERE symbol = 'N' AND volume % 7 = 0")
        .await;
    catch_up(&db, &slot, &run).await;
    assert_mirrored(&db, &config.location, "after a second outside compaction").await;
    shutdown.cancel();
    run.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_moved_while_streaming_mirrors_each_change_where_the_stream_says() {
    let _serial = SERIAL.lock().await;
    let mut db = fresh_db("delta_moved").await;
    ticks_table(&mut db, 10).await;
    let dir = tempfile::tempdir().unwrap();
    let first = common::sync_to(&db, "ticks", dir.path().join("l1").to_str().unwrap()).await;
    let slot = lakets::wal::slot::default_slot_name(&db.name);
    let (shutdown, run) = start(&db, &slot).await;
    db.exec("INSERT INTO ticks SELECT now() + g * interval '1 ms', 'A', 1, g, NULL FROM generate_series(1, 5) g")
        .await;
    catch_up(&db, &slot, &run).await;
    lakets::sync::disable_sync(&mut db.client, "ticks")
        .await
        .unwrap();
    // Not mirrored anywhere as it happens; the new location's copy will hold it.
    db.exec("INSERT INTO ticks SELECT now() + g * interval '1 ms', 'B', 2, g, NULL FROM generate_series(1, 5) g")
        .await;
    let second = common::sync_to(&db, "ticks", dir.path().join("l2").to_str().unwrap()).await;
    db.exec("INSERT INTO ticks SELECT now() + g * interval '1 ms', 'C', 3, g, NULL FROM generate_series(1, 5) g")
        .await;
    db.exec("UPDATE ticks SET price = 99 WHERE symbol = 'A' AND volume = 2")
        .await;
    db.exec("DELETE FROM ticks WHERE symbol = 'B' AND volume = 3")
        .await;
    catch_up(&db, &slot, &run).await;
    assert_mirrored(&db, &second.location, "the new location").await;
    // The old location stopped exactly at the disable: the first 10 rows and A's five,
    // none of what came later.
    let delta = lakets::delta::table::open(&first.location)
        .await
        .unwrap()
        .unwrap();
    let shape = shape_of(&delta, "time", Partitioning::Day).unwrap();
    let old = lakets::delta::read::scan(&delta, &shape).await.unwrap();
    let symbols: Vec<String> = old
        .iter()
        .filter_map(|r| match &r[1] {
            lakets::delta::schema::Cell::Str(s) => Some(s.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(old.len(), 15, "{symbols:?}");
    assert_eq!(symbols.iter().filter(|s| *s == "A").count(), 5);
    assert!(!symbols.iter().any(|s| s == "B" || s == "C"), "{symbols:?}");
    shutdown.cancel();
    run.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_missing_from_delta_stops_the_stream_for_good_naming_it() {
    let _serial = SERIAL.lock().await;
    let mut db = fresh_db("delta_diverged").await;
    ticks_table(&mut db, 10).await;
    let dir = tempfile::tempdir().unwrap();
    let config = common::sync_to(&db, "ticks", dir.path().join("t").to_str().unwrap()).await;
    let slot = lakets::wal::slot::default_slot_name(&db.name);
    // Someone removes a row from the Delta table behind lakets' back.
    let victim: (String, i64) = {
        let delta = lakets::delta::table::open(&config.location)
            .await
            .unwrap()
            .unwrap();
        let shape = shape_of(&delta, "time", Partitioning::Day).unwrap();
        let row = lakets::delta::read::scan(&delta, &shape)
            .await
            .unwrap()
            .into_iter()
            .next()
            .unwrap();
        let (lakets::delta::schema::Cell::Int(time), lakets::delta::schema::Cell::Str(symbol)) =
            (&row[0], &row[1])
        else {
            panic!("{row:?}")
        };
        let victim = (symbol.clone(), *time);
        let mut tamper =
            lakets::delta::mirror::TableMirror::new(shape, delta, "tamper".into(), Lsn::ZERO);
        let key = std::sync::Arc::new(vec![0, 1]);
        tamper
            .delete(&key, vec![row[0].clone(), row[1].clone()], Lsn(1))
            .await
            .unwrap();
        tamper.flush(Lsn(1)).await.unwrap();
        victim
    };
    let db_config = db.config();
    let stop = CancellationToken::new();
    let streaming = {
        let (slot, stop) = (slot.clone(), stop.clone());
        tokio::spawn(async move {
            lakets::wal::run_with_restarts(
                || {
                    let (db_config, slot) = (db_config.clone(), slot.clone());
                    async move {
                        let sink =
                            DeltaSink::new(lakets::db::connect_with(&db_config).await?, &slot)
                                .await?;
                        Ok(
                            lakets::operators::pipeline(db_config, pipeline_config(&slot))
                                .operator(sink),
                        )
                    }
                },
                stop,
            )
            .await
        })
    };
    let deleted = db
        .client
        .execute(
            "DELETE FROM ticks WHERE symbol = $1 AND time = timestamptz 'epoch' + $2 * interval '1 microsecond'",
            &[&victim.0, &(victim.1 as f64)],
        )
        .await
        .unwrap();
    assert_eq!(deleted, 1);
    let deleted = lsn_now(&db).await;
    // Definite: not retried, the stream stops with the reason, naming the row.
    let outcome = tokio::time::timeout(Duration::from_secs(60), streaming)
        .await
        .expect("the stream stopped instead of retrying")
        .unwrap();
    let err = outcome.unwrap_err();
    assert!(matches!(err, lakets::Error::Diverged(_)), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains(&victim.0) && text.contains("diverged"),
        "{text}"
    );
    // Nothing from the delete on was acknowledged: the slot holds it for a resync.
    let confirmed = common::wal::slot_confirmed(&db.client, &slot).await;
    assert!(
        confirmed < deleted,
        "confirmed {confirmed}, delete ended at {deleted}"
    );
    stop.cancel();
}

/// A column another writer added to the Delta table (a Databricks ADD COLUMNS, here the
/// `deltalake` Python package): while it holds no value in the files a DELETE rewrites,
/// the rewrite goes on (nothing is lost; another cluster's column in a shared table is
/// such a one). Once that writer put values into them, they would be lost: the stream
/// stops with a definite error naming the column instead, and the file keeps its rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_column_another_writer_added_stops_a_rewrite_instead_of_dropping_it() {
    let Ok(python) = std::env::var("LAKETS_INTEROP_PYTHON") else {
        assert!(
            std::env::var("LAKETS_REQUIRE_INTEROP").is_err(),
            "LAKETS_REQUIRE_INTEROP is set without LAKETS_INTEROP_PYTHON"
        );
        eprintln!("skipped: no LAKETS_INTEROP_PYTHON with the deltalake package");
        return;
    };
    let _serial = SERIAL.lock().await;
    let mut db = fresh_db("delta_foreign_column").await;
    ticks_table(&mut db, 10).await;
    let dir = tempfile::tempdir().unwrap();
    let config = common::sync_to(&db, "ticks", dir.path().join("t").to_str().unwrap()).await;
    let slot = lakets::wal::slot::default_slot_name(&db.name);
    let (_shutdown, run) = start(&db, &slot).await;
    db.exec("INSERT INTO ticks SELECT now() + g * interval '1 ms', 'F', 1, g, NULL FROM generate_series(1, 5) g")
        .await;
    catch_up(&db, &slot, &run).await;
    let path = config.location.to_file_path().unwrap();
    let python_on_table = |code: &str| {
        let out = std::process::Command::new(&python)
            .args(["-c", code, path.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "deltalake (Python) {code}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    python_on_table(
        "import sys, deltalake as d; d.DeltaTable(sys.argv[1]).alter.add_columns([d.Field('extra', 'string', nullable=True)])",
    );
    db.exec("DELETE FROM ticks WHERE symbol = 'F' AND volume = 1")
        .await;
    catch_up(&db, &slot, &run).await;
    python_on_table(
        "import sys, deltalake as d; d.DeltaTable(sys.argv[1]).update(updates={'extra': \"'x'\"}, predicate=\"symbol = 'F'\")",
    );
    db.exec("DELETE FROM ticks WHERE symbol = 'F' AND volume = 3")
        .await;
    let err = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the stream stops")
        .unwrap()
        .unwrap_err();
    assert!(!err.is_transient(), "{err:?}");
    assert!(err.to_string().contains("extra"), "{err}");
    let delta = lakets::delta::table::open(&config.location)
        .await
        .unwrap()
        .unwrap();
    let shape = shape_of(&delta, "time", Partitioning::Day).unwrap();
    assert!(shape.columns.iter().any(|c| c.name == "extra"));
    let rows = lakets::delta::read::scan(&delta, &shape).await.unwrap();
    assert_eq!(
        rows.len(),
        14,
        "the first delete applied, the second lost no row"
    );
}

/// Two writers of one stream (an older process whose commit lands late, a second
/// instance): the later one's window meets a commit carrying its own app id and must not
/// land its rows beside it a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_meeting_a_commit_of_its_own_stream_is_not_committed_twice() {
    use lakets::delta::schema::Cell;
    let _serial = SERIAL.lock().await;
    let mut db = fresh_db("delta_same_stream").await;
    ticks_table(&mut db, 10).await;
    let dir = tempfile::tempdir().unwrap();
    let config = common::sync_to(&db, "ticks", dir.path().join("t").to_str().unwrap()).await;
    let open = async || {
        let delta = lakets::delta::table::open(&config.location)
            .await
            .unwrap()
            .unwrap();
        let shape = shape_of(&delta, "time", Partitioning::Day).unwrap();
        lakets::delta::mirror::TableMirror::new(shape, delta, "stream-a".into(), Lsn::ZERO)
    };
    let row = |v: i64| -> CellRow {
        vec![
            Cell::Int(1_767_225_600_000_000 + v),
            Cell::Str("Z".into()),
            Cell::Decimal(10_000),
            Cell::Int(v),
            Cell::Null,
        ]
    };
    let (mut first, mut second) = (open().await, open().await);
    first.insert(row(1)).await.unwrap();
    first.flush(Lsn(100)).await.unwrap();
    second.insert(row(1)).await.unwrap();
    let err = second.flush(Lsn(100)).await.unwrap_err();
    assert!(err.to_string().contains("stream-a"), "{err}");
    let delta = lakets::delta::table::open(&config.location)
        .await
        .unwrap()
        .unwrap();
    let shape = shape_of(&delta, "time", Partitioning::Day).unwrap();
    let rows = lakets::delta::read::scan(&delta, &shape).await.unwrap();
    assert_eq!(rows.len(), 11, "the row landed once");
}

/// An ADD COLUMN that commits while `enable_sync` starts (after it read the columns,
/// before its snapshot): every copied row keeps its value in the new column, though the
/// stream never sends those rows again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_column_added_while_the_sync_starts_reaches_every_copied_row() {
    let _serial = SERIAL.lock().await;
    let mut db = fresh_db("delta_snapshot_add_column").await;
    ticks_table(&mut db, 200).await;
    let slot = lakets::wal::slot::default_slot_name(&db.name);
    // The slot first: creating one waits for the open ALTER below.
    lakets::catalog::replication::ensure_default_consumer(&db.client)
        .await
        .unwrap();
    let (shutdown, run) = start(&db, &slot).await;

    // The ALTER holds its lock until the snapshot waits for it.
    let alter = db.connect().await;
    alter
        .batch_execute(
            "BEGIN;
             ALTER TABLE ticks ADD COLUMN source text;
             UPDATE ticks SET source = 'copied ' || volume WHERE volume % 2 = 0;",
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let location = dir.path().join("t");
    let db_config = lakets::db::parse_config(&db.url).unwrap();
    // Both in this task: enable_sync's future is not Send (its row callback borrows).
    let enable = lakets::sync::enable_sync(
        &db_config,
        "ticks",
        location.to_str().unwrap(),
        Partitioning::Day,
        |_| {},
    );
    let commit_when_waited_for = async {
        common::wal::wait_for(
            "the snapshot waiting for the ALTER's lock",
            Duration::from_secs(30),
            async || {
                db.scalar::<i64>(
                    "SELECT count(*) FROM pg_stat_activity
                      WHERE datname = current_database() AND wait_event_type = 'Lock'
                        AND query LIKE '%LOCK TABLE%IN SHARE MODE%'",
                )
                .await
                    > 0
            },
        )
        .await;
        alter.batch_execute("COMMIT").await.unwrap();
    };
    let (config, ()) = tokio::join!(enable, commit_when_waited_for);
    let config = config.unwrap();

    let delta = lakets::delta::table::open(&config.location)
        .await
        .unwrap()
        .unwrap();
    let shape = shape_of(&delta, "time", Partitioning::Day).unwrap();
    assert!(
        shape.columns.iter().any(|c| c.name == "source"),
        "the snapshot's Delta table has the new column: {:?}",
        shape.columns
    );
    // The stream goes on in the new shape.
    db.exec("INSERT INTO ticks VALUES (now(), 'NEW', 1, 1, NULL, 'streamed')")
        .await;
    catch_up(&db, &slot, &run).await;
    assert_mirrored(&db, &config.location, "a copy that met an ADD COLUMN").await;
    let report = lakets::verify::verify(&db.client, "ticks").await.unwrap();
    assert!(report.ok, "{report:?}");
    shutdown.cancel();
    run.await.unwrap().unwrap();
}

/// A copy read by several connections in heap-page ranges of one exported snapshot (a
/// chunk of about 80 MB: three ranges), while updates move rows to pages no range had
/// and inserts land: every row reaches Delta exactly once, in its state at the snapshot,
/// and the stream brings the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_split_across_readers_and_page_ranges_reads_every_row_once() {
    let _serial = SERIAL.lock().await;
    let mut db = fresh_db("delta_snapshot_ranges").await;
    db.exec(
        "CREATE TABLE ticks (time timestamptz NOT NULL, symbol text NOT NULL,
                             price numeric(12, 4), volume bigint, note text,
                             PRIMARY KEY (symbol, time));
         INSERT INTO ticks
           SELECT date_trunc('hour', now()) - i * interval '10 ms', 'S' || (i % 7), i % 1000,
                  i, repeat('x', 1000)
             FROM generate_series(1, 70000) i;",
    )
    .await;
    let mut opts = lakets::chronotable::CreateOptions::new("time");
    opts.chunk_interval = lakets::interval::Interval::hours(6);
    lakets::chronotable::create_chronotable(&mut db.client, "ticks", &opts)
        .await
        .unwrap();
    let pages: i64 = db
        .scalar(
            "SELECT max(pg_relation_size(relid) / 8192) FROM pg_partition_tree('ticks') WHERE isleaf",
        )
        .await;
    assert!(
        pages > 2 * 4096,
        "a chunk spans three page ranges: {pages} pages"
    );
    let slot = lakets::wal::slot::default_slot_name(&db.name);
    lakets::catalog::replication::ensure_default_consumer(&db.client)
        .await
        .unwrap();
    let (shutdown, run) = start(&db, &slot).await;

    let writer_db = db.connect().await;
    let stop = CancellationToken::new();
    let stop_writer = stop.clone();
    let writer = tokio::spawn(async move {
        let mut i = 0i64;
        while !stop_writer.is_cancelled() {
            i += 1;
            writer_db
                .batch_execute(&format!(
                    "UPDATE ticks SET price = price + 1, note = 'moved {i}' WHERE volume = {};
                     INSERT INTO ticks VALUES (now() + {i} * interval '1 microsecond', 'W', {i}, {i}, NULL);",
                    (i * 7919) % 70000 + 1
                ))
                .await
                .unwrap();
        }
        i
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = lakets::sync::enable_sync_with_readers(
        &lakets::db::parse_config(&db.url).unwrap(),
        "ticks",
        dir.path().join("t").to_str().unwrap(),
        Partitioning::Day,
        None,
        Default::default(),
        3,
        |_| {},
    )
    .await
    .unwrap();
    stop.cancel();
    let writes = writer.await.unwrap();
    assert!(writes > 10, "writes went on during the copy ({writes})");
    catch_up(&db, &slot, &run).await;
    assert_mirrored(&db, &config.location, "a copy by three readers").await;
    shutdown.cancel();
    run.await.unwrap().unwrap();
}

/// An ALTER TABLE issued while one reader copies the first of several chunks queues
/// behind the snapshot's locks. The reader must not then queue behind the ALTER for the
/// next chunk (the copy waited for a lock that waited for the copy, and neither ever
/// ended: the server sees no deadlock, since the snapshot's exporter waits on lakets,
/// not on a lock). The readers hold every chunk's lock from the start: the ALTER waits for
/// the copy, then runs, and the stream carries the new column.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alter_table_during_the_copy_waits_for_it_instead_of_deadlocking_it() {
    let _serial = SERIAL.lock().await;
    let mut db = fresh_db("delta_snapshot_alter_during_copy").await;
    // Yesterday's chunk is created first (the ALTER locks chunks in that order, so it
    // queues on it) and is small (the reader copies the largest first, so today's).
    db.exec(
        "CREATE TABLE ticks (time timestamptz NOT NULL, symbol text NOT NULL,
                             price numeric(12, 4), volume bigint, note text,
                             PRIMARY KEY (symbol, time));
         INSERT INTO ticks
           SELECT date_trunc('day', now()) - interval '1 day' + i * interval '1 second',
                  'S' || (i % 7), i % 1000, i, NULL
             FROM generate_series(1, 1000) i;
         INSERT INTO ticks
           SELECT date_trunc('day', now()) + i * interval '100 ms', 'S' || (i % 7), i % 1000,
                  i, 'n' || i
             FROM generate_series(1, 500000) i;",
    )
    .await;
    let mut opts = lakets::chronotable::CreateOptions::new("time");
    opts.chunk_interval = lakets::interval::Interval::days(1);
    opts.premake = 1;
    lakets::chronotable::create_chronotable(&mut db.client, "ticks", &opts)
        .await
        .unwrap();
    let slot = lakets::wal::slot::default_slot_name(&db.name);
    lakets::catalog::replication::ensure_default_consumer(&db.client)
        .await
        .unwrap();
    let (shutdown, run) = start(&db, &slot).await;
    let dir = tempfile::tempdir().unwrap();
    let db_config = lakets::db::parse_config(&db.url).unwrap();
    let location = dir.path().join("t");
    let enable = lakets::sync::enable_sync_with_readers(
        &db_config,
        "ticks",
        location.to_str().unwrap(),
        Partitioning::Day,
        None,
        Default::default(),
        1,
        |_| {},
    );
    let alter = db.connect().await;
    let alter_while_copying = async {
        // The copy of today's chunk lasts a moment on a fast machine: look often (a check
        // every 50 ms once missed all of it, in one CI run of five).
        common::wal::wait_for_every(
            "the reader copying a chunk",
            Duration::from_secs(30),
            Duration::from_millis(2),
            async || {
                db.scalar::<i64>(
                    "SELECT count(*) FROM pg_stat_activity
                      WHERE datname = current_database() AND query LIKE 'COPY (SELECT %'",
                )
                .await
                    > 0
            },
        )
        .await;
        alter
            .batch_execute("ALTER TABLE ticks ADD COLUMN source text")
            .await
            .unwrap();
        alter
            .batch_execute("INSERT INTO ticks VALUES (now(), 'NEW', 1, 1, NULL, 'after the copy')")
            .await
            .unwrap();
    };
    let (config, ()) = tokio::time::timeout(Duration::from_secs(120), async {
        tokio::join!(enable, alter_while_copying)
    })
    .await
    .expect("the copy and the ALTER TABLE both end");
    let config = config.unwrap();
    catch_up(&db, &slot, &run).await;
    assert_mirrored(&db, &config.location, "a copy an ALTER TABLE waited for").await;
    let delta = lakets::delta::table::open(&config.location)
        .await
        .unwrap()
        .unwrap();
    let shape = shape_of(&delta, "time", Partitioning::Day).unwrap();
    assert!(
        shape.columns.iter().any(|c| c.name == "source"),
        "the stream brought the column added after the copy: {:?}",
        shape.columns
    );
    shutdown.cancel();
    run.await.unwrap().unwrap();
}

/// The copy reads binary COPY; comparisons read text. Every type the mirror maps, with
/// its edge values and NULLs, reads the same both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mapped_type_copies_exactly_as_postgres_prints_it() {
    let _serial = SERIAL.lock().await;
    let mut db = fresh_db("delta_snapshot_types").await;
    db.exec(
        "CREATE TABLE ticks (time timestamptz NOT NULL, id int4 NOT NULL, b bool, i2 int2,
                             i8 int8, f4 float4, f8 float8, n numeric(12, 4), nx numeric,
                             t text, v varchar(10), c char(5), nm name, u uuid, j json,
                             jb jsonb, by bytea, ts timestamp, d date, PRIMARY KEY (id, time));
         INSERT INTO ticks VALUES
           ('2026-11-20 10:00:00.000001+00', 1, true, -32768, -9223372036854775808,
            'NaN', '-Infinity', -12345678.9999, 'NaN', 'quote '' and \\ backslash', 'ünïcødé',
            'ab', 'a name', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{\"a\": [1, 2.50]}',
            '{\"b\": {\"c\": null}, \"a\": 1}', '\\x00ff10', '2026-11-20 10:00:00.5',
            '2026-11-20'),
           ('2026-11-20 11:00:00+00', 2, false, 32767, 9223372036854775807, '-0', 1e308,
            0.0001, 123456789012345678901234567890.123456789, '', '', '', '', NULL, '[]',
            '[]', '\\x', '9999-12-31 23:59:59.999999', '0001-01-01'),
           ('2026-11-20 12:00:00+00', 3, NULL, NULL, NULL, 3.4028235e38, 5e-324, NULL, -0.5,
            NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, '1970-01-01 00:00:00', '0001-01-01');",
    )
    .await;
    let mut opts = lakets::chronotable::CreateOptions::new("time");
    opts.chunk_interval = lakets::interval::Interval::hours(1);
    lakets::chronotable::create_chronotable(&mut db.client, "ticks", &opts)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = common::sync_to(&db, "ticks", dir.path().join("t").to_str().unwrap()).await;
    assert_eq!(config.rows_copied, 3);
    assert_mirrored(&db, &config.location, "every mapped type").await;
    let report = lakets::verify::verify(&db.client, "ticks").await.unwrap();
    assert!(report.ok, "{:?}", report.differences);

    // A date Delta cannot hold refuses the copy by name (it used to panic in deltalake's
    // statistics) and leaves the sync pending, to finish once the row is changed.
    lakets::sync::disable_sync(&mut db.client, "ticks")
        .await
        .unwrap();
    db.exec("UPDATE ticks SET d = '-infinity' WHERE id = 3")
        .await;
    let err = lakets::sync::enable_sync(
        &lakets::db::parse_config(&db.url).unwrap(),
        "ticks",
        dir.path().join("t2").to_str().unwrap(),
        Partitioning::Day,
        |_| {},
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("\"d\"") && err.contains("-infinity") && err.contains("0001-01-01"),
        "{err}"
    );
    // The rerun finishes it, in the shape the table has by then.
    db.exec(
        "UPDATE ticks SET d = '2026-01-01' WHERE id = 3;
         ALTER TABLE ticks ADD COLUMN added_meanwhile text;
         UPDATE ticks SET added_meanwhile = 'v' || id;",
    )
    .await;
    let config = common::sync_to(&db, "ticks", dir.path().join("t2").to_str().unwrap()).await;
    assert_mirrored(&db, &config.location, "the copy finished after the fix").await;
    let delta = lakets::delta::table::open(&config.location)
        .await
        .unwrap()
        .unwrap();
    let shape = shape_of(&delta, "time", Partitioning::Day).unwrap();
    assert_eq!(
        shape.columns.last().map(|c| c.name.as_str()),
        Some("added_meanwhile")
    );
}

/// Invariant 6 with deletion vectors: a commit that marks a row in a file's vector, built
/// on a snapshot after which another commit gave the same file a vector of its own, is
/// chosen again, never moved onto the newer version: re-adding the file with its vector
/// would bring back the row the other commit deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_marked_by_another_commit_since_the_snapshot_is_chosen_again() {
    let _serial = SERIAL.lock().await;
    let mut db = fresh_db("delta_vector_race").await;
    ticks_table(&mut db, 30).await;
    let dir = tempfile::tempdir().unwrap();
    let config = common::sync_with(
        &db,
        "ticks",
        &dir.path().join("t"),
        crate::delta_cdf::CDF_AND_VECTORS,
    )
    .await;
    // A writer's snapshot, and the file it marks (row 0 deleted by its vector).
    let mut stale = lakets::delta::table::open(&config.location)
        .await
        .unwrap()
        .unwrap();
    let shape = shape_of(&stale, "time", Partitioning::Day).unwrap();
    let view = lakets::delta::read::active_files(&stale)
        .await
        .unwrap()
        .into_iter()
        .find(|f| f.num_records().is_some_and(|n| n >= 2))
        .expect("a file of two rows or more");
    let file = lakets::delta::table::DataFile::of(&view);
    let mut rows = lakets::delta::table::open_live(&stale, &file, None)
        .await
        .unwrap();
    let first =
        lakets::delta::read::batch_rows(&rows.next().await.unwrap().unwrap(), &shape).unwrap();
    let (descriptors, _) =
        lakets::delta::deletion_vector::write(&stale, vec![std::iter::once(0u64).collect()])
            .await
            .unwrap();
    #[allow(deprecated)] // deltalake 1.1's one way to a file's Add action
    let mut add = view.add_action();
    add.deletion_vector = Some(descriptors[0].clone());
    let actions = vec![
        deltalake::kernel::Action::Remove(view.remove_action(true)),
        deltalake::kernel::Action::Add(add),
    ];

    // Meanwhile the stream deletes row 1 of the same file: the file gets a vector of its own.
    let time_of = |row: &CellRow| match row[shape.time_index] {
        lakets::delta::schema::Cell::Int(t) => t,
        ref other => panic!("time cell {other:?}"),
    };
    let symbol_of = |row: &CellRow| match &row[1] {
        lakets::delta::schema::Cell::Str(s) => s.clone(),
        other => panic!("symbol cell {other:?}"),
    };
    let slot = lakets::wal::slot::default_slot_name(&db.name);
    let (shutdown, run) = start(&db, &slot).await;
    db.exec(&format!(
        "DELETE FROM ticks WHERE symbol = '{}'
            AND time = 'epoch'::timestamptz + {} * interval '1 microsecond'",
        symbol_of(&first[1]),
        time_of(&first[1])
    ))
    .await;
    catch_up(&db, &slot, &run).await;
    shutdown.cancel();
    run.await.unwrap().unwrap();

    let landed = lakets::delta::table::try_commit(
        &mut stale,
        actions,
        deltalake::protocol::DeltaOperation::Delete { predicate: None },
        Some(("another writer", Lsn(1))),
    )
    .await
    .unwrap();
    assert_eq!(landed, None, "the stale marks must be chosen again");
    // PostgreSQL still has row 0 and lacks row 1: so must the Delta table.
    assert_mirrored(&db, &config.location, "after a stale vector commit").await;
}
