//! Exactly once per operator across kill -9: a mixed workload (inserts, late rows, updates,
//! deletes, multi-slice transactions, a schema change halfway) runs while the consumer process is killed at random
//! points (while decoding, applying, flushing, writing Parquet, committing to Delta or to
//! PostgreSQL). After a final clean run, the recording operator holds every change exactly
//! once, the chunk tracker stamped each chunk with its last writing transaction, the Last
//! Value Cache equals the latest row per key, every rollup (refreshed between crashes too)
//! equals its recomputation from scratch, and the Delta table equals the table.
//!
//! The consumer is this test binary itself, re-executed to run `consumer_child`.

mod common;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::recording::Recording;
use common::wal::{lsn_now, setup_streaming, wait_until_confirmed};
use common::{TestDb, fresh_db};
use lakets::delta::schema::Partitioning;
use lakets::ident::TableName;
use lakets::operators::chunk_tracker::ChunkTracker;
use lakets::operators::delta_sink::DeltaSink;
use lakets::operators::last_value::LastValueCache;
use lakets::wal::{PipelineConfig, SourceSettings, run_with_restarts};
use tokio_util::sync::CancellationToken;

const CHILD_URL: &str = "LAKETS_TEST_CONSUMER_URL";
const CHILD_SLOT: &str = "LAKETS_TEST_CONSUMER_SLOT";

/// The consumer process. Does nothing unless the parent test started it.
#[test]
fn consumer_child() {
    let (Ok(url), Ok(slot)) = (std::env::var(CHILD_URL), std::env::var(CHILD_SLOT)) else {
        return;
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            std::env::var("LAKETS_LOG").unwrap_or_else(|_| "warn".into()),
        ))
        .with_writer(std::io::stderr)
        .try_init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let db = lakets::db::parse_config(&url).unwrap();
        let mut config = PipelineConfig::new(SourceSettings::new(&slot, "lakets"));
        config.flush_interval = Duration::from_millis(40);
        config.ack_interval = Duration::from_millis(40);
        config.heartbeat_interval = Some(Duration::from_millis(200));
        config.max_slice_changes = 7; // many transactions span several slices
        let cancel = CancellationToken::new();
        let on_term = cancel.clone();
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
        tokio::spawn(async move {
            term.recv().await;
            on_term.cancel();
        });
        run_with_restarts(
            || {
                let (db, config, slot) = (db.clone(), config.clone(), slot.clone());
                async move {
                    let tracker =
                        ChunkTracker::new(lakets::db::connect_with(&db).await?, slot.clone())
                            .await?;
                    let recording = Recording::new(lakets::db::connect_with(&db).await?, &slot);
                    let lvc =
                        LastValueCache::new(lakets::db::connect_with(&db).await?, slot.clone())
                            .await?;
                    let invalidations = lakets::operators::invalidations::Invalidations::new(
                        lakets::db::connect_with(&db).await?,
                        slot.clone(),
                    )
                    .await?;
                    let delta =
                        DeltaSink::new(lakets::db::connect_with(&db).await?, slot.clone()).await?;
                    Ok(lakets::operators::pipeline(db, config)
                        .operator(tracker)
                        .operator(recording)
                        .operator(lvc)
                        .operator(invalidations)
                        .operator(delta))
                }
            },
            cancel,
        )
        .await
        .expect("consumer failed");
    });
}

/// Kills the consumer when dropped, so a failing test leaves no process behind.
struct Consumer(Child);

impl Drop for Consumer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_consumer(db: &TestDb) -> Consumer {
    Consumer(
        Command::new(std::env::current_exe().unwrap())
            .args([
                "consumer_child",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_URL, &db.url)
            .env(CHILD_SLOT, &db.name)
            .env(
                "LAKETS_LOG",
                std::env::var("LAKETS_TEST_CHILD_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    )
}

/// xorshift64*: deterministic per seed, printed so that a failure can be replayed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Runs the workload; returns the expected changes as (kind, id) -> count.
async fn workload(db: &TestDb, seed: u64, transactions: usize) -> BTreeMap<(String, i64), i64> {
    let client = db.connect().await;
    let mut rng = Rng(seed | 1);
    let mut expected: BTreeMap<(String, i64), i64> = BTreeMap::new();
    let mut live: Vec<i64> = Vec::new();
    let mut next_id = 1i64;
    for t in 0..transactions {
        // Halfway, a schema change: later rows carry a new column (earlier ones read NULL
        // in PostgreSQL and in Delta alike).
        if t == transactions / 2 {
            client
                .batch_execute("ALTER TABLE events ADD COLUMN note text")
                .await
                .unwrap();
        }
        let noted = t >= transactions / 2;
        let mut sql = String::from("BEGIN;");
        let statements = 1 + rng.below(4);
        for _ in 0..statements {
            match rng.below(10) {
                0..=5 => {
                    let rows = 1 + rng.below(25);
                    for _ in 0..rows {
                        // Mostly now; sometimes a late row an hour back, or ahead.
                        let offset = match rng.below(10) {
                            0 => -3000 - rng.below(600) as i64,
                            1 => 1800,
                            _ => 0,
                        };
                        let note = if noted {
                            format!(", 'n{next_id}'")
                        } else {
                            String::new()
                        };
                        sql.push_str(&format!(
                            "INSERT INTO events VALUES (now() + {offset} * interval '1 second', {next_id}, 'v'{note});"
                        ));
                        *expected.entry(("insert".into(), next_id)).or_default() += 1;
                        live.push(next_id);
                        next_id += 1;
                    }
                }
                6..=7 if !live.is_empty() => {
                    let id = live[rng.below(live.len() as u64) as usize];
                    sql.push_str(&format!("UPDATE events SET v = v || 'u' WHERE id = {id};"));
                    *expected.entry(("update".into(), id)).or_default() += 1;
                }
                8 if !live.is_empty() => {
                    let id = live.swap_remove(rng.below(live.len() as u64) as usize);
                    sql.push_str(&format!("DELETE FROM events WHERE id = {id};"));
                    *expected.entry(("delete".into(), id)).or_default() += 1;
                }
                _ => {
                    sql.push_str("SELECT 1;");
                }
            }
        }
        sql.push_str("COMMIT;");
        client.batch_execute(&sql).await.unwrap();
        tokio::time::sleep(Duration::from_millis(rng.below(8))).await;
    }
    expected
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_per_operator_across_kill_9_at_random_points() {
    let kills: usize = std::env::var("LAKETS_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let seed = common::workload::seed("LAKETS_CRASH_SEED");
    eprintln!("crash test seed {seed} (LAKETS_CRASH_SEED to replay), {kills} kills");

    let mut db = fresh_db("crash").await;
    // The stream starts at the slot's creation: created before the first change.
    setup_streaming(&mut db).await;
    lakets::lvc::enable_lvc(&mut db.client, "events", &["id".into()], &["v".into()])
        .await
        .unwrap();
    for (name, source, bucket) in [
        ("ev_1min", "events", "1 minute"),
        ("ev_1hour", "ev_1min", "1 hour"),
    ] {
        lakets::rollup::create_rollup(
            &mut db.client,
            &lakets::rollup::CreateRollup {
                name: name.into(),
                source: source.into(),
                bucket: lakets::interval::Interval::parse(bucket).unwrap(),
                group_by: vec![],
                aggregate: "count(*), count(v), max(v), min(id)".into(),
                refresh_lag: lakets::interval::Interval::ZERO,
            },
        )
        .await
        .unwrap();
    }
    let lake = tempfile::tempdir().unwrap();
    let sync = common::sync_to(&db, "events", lake.path().join("events").to_str().unwrap()).await;

    let work = {
        let db = fresh_handle(&db).await;
        tokio::spawn(async move { workload(&db, seed, 400).await })
    };
    let mut rng = Rng(seed.rotate_left(17) | 1);
    for i in 0..kills {
        let mut child = spawn_consumer(&db);
        let wait = Duration::from_millis(150 + rng.below(700));
        tokio::time::sleep(wait).await;
        if let Some(status) = child.0.try_wait().unwrap() {
            panic!("consumer exited by itself before kill {i}: {status}");
        }
        child.0.kill().unwrap();
        child.0.wait().unwrap();
        // A refresh between the crash and the restart.
        lakets::rollup::refresh::refresh(&mut db.client, None, true, false)
            .await
            .unwrap();
    }
    let expected = work.await.unwrap();
    let end = lsn_now(&db).await;

    let mut child = spawn_consumer(&db);
    wait_until_confirmed(&db.client, &db.name, end, Duration::from_secs(120)).await;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
    let status = child.0.wait().unwrap();
    assert!(
        status.success(),
        "clean shutdown on SIGTERM, got {status} (the consumer's log is above)"
    );

    // Exactly once: the recorded changes are the expected multiset, no more, no less.
    let mut recorded: BTreeMap<(String, i64), i64> = BTreeMap::new();
    for row in db
        .client
        .query("SELECT kind, id FROM recorded", &[])
        .await
        .unwrap()
    {
        *recorded.entry((row.get(0), row.get(1))).or_default() += 1;
    }
    let total: i64 = expected.values().sum();
    if recorded != expected {
        let missing: Vec<_> = expected
            .iter()
            .filter(|(k, v)| recorded.get(*k) != Some(v))
            .take(10)
            .collect();
        let extra: Vec<_> = recorded
            .iter()
            .filter(|(k, v)| expected.get(*k) != Some(v))
            .take(10)
            .collect();
        panic!(
            "recorded != expected ({total} changes): differing expected {missing:?}, recorded {extra:?}"
        );
    }

    // The chunk tracker: each chunk's stamp is the end of the last transaction touching it.
    let violations: i64 = db
        .scalar(
            "WITH touched AS (
                 SELECT m.chunk_name, max(r.commit_lsn) AS last_commit, m.last_write_lsn
                   FROM lakets._chunk_metadata m
                   LEFT JOIN recorded r ON r.time >= m.range_start AND r.time < m.range_end
                  GROUP BY m.chunk_name, m.last_write_lsn)
             SELECT count(*) FROM touched
              WHERE (last_commit IS NULL) <> (last_write_lsn IS NULL)
                 OR last_write_lsn <= last_commit
                 OR EXISTS (SELECT 1 FROM recorded r2 WHERE r2.commit_lsn > touched.last_commit
                              AND r2.commit_lsn < touched.last_write_lsn)",
        )
        .await;
    assert_eq!(
        violations, 0,
        "last_write_lsn is not the end of each chunk's last writer"
    );

    // The Last Value Cache: the latest row per key.
    let lvc_diff: i64 = db
        .scalar(
            "SELECT count(*) FROM (
                 (SELECT id, time, v FROM lakets.lvc_events
                  EXCEPT ALL
                  SELECT DISTINCT ON (id) id, time, v FROM events ORDER BY id, time DESC)
                 UNION ALL
                 (SELECT DISTINCT ON (id) id, time, v FROM events
                  EXCEPT ALL
                  SELECT id, time, v FROM lakets.lvc_events)) d",
        )
        .await;
    assert_eq!(
        lvc_diff, 0,
        "the Last Value Cache differs from the latest rows"
    );

    // The rollups: equal to their recomputation from scratch after one more refresh.
    lakets::rollup::refresh::refresh(&mut db.client, None, true, false)
        .await
        .unwrap();
    for rollup in lakets::rollup::list_rollups(&db.client).await.unwrap() {
        let check = lakets::rollup::check::check_rollup(&db.client, &rollup)
            .await
            .unwrap();
        assert!(
            check.ok,
            "rollup {} differs from its recomputation: {:?}",
            rollup.name, check.examples
        );
    }

    // The Delta table: the table, row for row, no duplicates.
    let delta = lakets::delta::table::open(&sync.location)
        .await
        .unwrap()
        .unwrap();
    let shape = lakets::delta::mirror::shape_of(&delta, "time", Partitioning::Day).unwrap();
    let lake_rows = sorted_rows(lakets::delta::read::scan(&delta, &shape).await.unwrap()).await;
    let hot_rows = sorted_rows(
        lakets::sync::postgres_rows(
            &db.connect().await,
            &TableName::new("public", "events"),
            &shape,
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(
        lake_rows.len(),
        hot_rows.len(),
        "Delta and PostgreSQL row counts differ"
    );
    assert!(
        lake_rows == hot_rows,
        "Delta rows differ from PostgreSQL rows"
    );

    // And `lakets verify`, as a user would run it, agrees on everything.
    let report = lakets::verify::verify(&db.client, "events").await.unwrap();
    assert!(report.ok, "{:?}", report.differences);
}

async fn sorted_rows(mut rows: Vec<lakets::delta::batch::CellRow>) -> Vec<String> {
    rows.sort_by_key(|r| format!("{r:?}"));
    rows.iter().map(|r| format!("{r:?}")).collect()
}

async fn fresh_handle(db: &TestDb) -> TestDb {
    TestDb {
        name: db.name.clone(),
        url: db.url.clone(),
        client: db.connect().await,
    }
}
