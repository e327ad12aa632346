//! Everything at once, seeded and replayable: `lakets run` (a real process) with every
//! operator and every job on short intervals (Delta compaction included), a mixed workload
//! (inserts, late rows, corrections, updates that move keys to another symbol and time,
//! deletes, ADD COLUMN), reconfiguration mid-stream (a Last Value Cache enabled, the sync
//! disabled and enabled into another location, a rollup created), SIGKILLs of the service
//! at random points and a PostgreSQL crash. After the final catch-up: `verify` passes for
//! Delta, the LVC and every rollup, the Delta table holds no duplicate key, and every
//! chunk dropped along the way is in the Delta table it was mirrored to, row for row.
//!
//! `LAKETS_CHAOS_SEED` replays a run; `LAKETS_CHAOS_KILLS` (default 4, as in CI) sets how
//! many kills; the long run is `LAKETS_CHAOS_KILLS=20`. Its own test binary: it crashes
//! the cluster.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::wal::{lsn_now, wait_for, wait_until_confirmed};
use common::workload::{Rng, statement};
use common::{fresh_db, spawn_service};
use lakets::delta::schema::{Cell, Partitioning};
use lakets::interval::Interval;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_at_once_with_kills_and_a_postgres_crash_leaves_every_copy_exact() {
    let kills: usize = std::env::var("LAKETS_CHAOS_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let seed = common::workload::seed("LAKETS_CHAOS_SEED");
    eprintln!("chaos seed {seed} (LAKETS_CHAOS_SEED to replay), {kills} kills");
    let mut rng = Rng(seed | 1);

    let mut db = fresh_db("chaos").await;
    db.exec(&common::workload::ticks_table_sql(1800)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("lakets.toml");
    let log = dir.path().join("lakets.log");
    std::fs::write(
        &config,
        r#"
[service]
flush_interval = "200 milliseconds"
[http]
listen = "off"
[grpc]
listen = "off"
[jobs]
partitions_every = "2 seconds"
rollups_every = "1 second"
tiering_every = "2 seconds"
retention_every = "3 seconds"
maintenance_every = "2 seconds"
gate_wait = "3 seconds"
[[tables]]
name = "ticks"
time_column = "time"
chunk_interval = "1 hour"
premake = 2
"#,
    )
    .unwrap();
    // The table converts at the first start; the sync, the policy and a rollup come before.
    let mut opts = lakets::chronotable::CreateOptions::new("time");
    opts.chunk_interval = Interval::hours(1);
    opts.premake = 2;
    lakets::chronotable::create_chronotable(&mut db.client, "ticks", &opts)
        .await
        .unwrap();
    let first = common::sync_to(&db, "ticks", dir.path().join("l1").to_str().unwrap()).await;
    lakets::lifecycle::policy::set_policy(
        &db.client,
        "ticks",
        Some(Interval::hours(2)),
        Some(Interval::hours(3)),
    )
    .await
    .unwrap();
    let rollup = |name: &str, source: &str, bucket: &str| lakets::rollup::CreateRollup {
        name: name.into(),
        source: source.into(),
        bucket: Interval::parse(bucket).unwrap(),
        group_by: vec!["symbol".into()],
        aggregate: "ohlcv(price, volume), count(*)".into(),
        refresh_lag: Interval::ZERO,
    };
    lakets::rollup::create_rollup(&mut db.client, &rollup("ticks_1min", "ticks", "1 minute"))
        .await
        .unwrap();

    let mut service = spawn_service(&db, &config, &log);
    let stop = tokio_util::sync::CancellationToken::new();
    let writer = {
        let (url, stop) = (db.url.clone(), stop.clone());
        let mut wrng = Rng(seed.rotate_left(17) | 1);
        tokio::spawn(async move {
            let mut tick = 0i64;
            let mut statements = 0u64;
            let mut noted = false;
            while !stop.is_cancelled() {
                let Ok(client) = common::try_user_connect(&url).await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                while !stop.is_cancelled() {
                    if !noted && statements == 400 {
                        if client
                            .batch_execute("ALTER TABLE ticks ADD COLUMN note text")
                            .await
                            .is_err()
                        {
                            break;
                        }
                        noted = true;
                    }
                    let sql = statement(&mut wrng, &mut tick, noted);
                    statements += 1;
                    if let Err(e) = client.batch_execute(&sql).await {
                        if client.is_closed() {
                            break; // the server restarts: reconnect
                        }
                        // A key collision or a row that moved away meanwhile.
                        let _ = client.batch_execute("ROLLBACK").await;
                        let _ = e;
                    }
                    tokio::time::sleep(Duration::from_millis(wrng.below(15))).await;
                }
            }
            statements
        })
    };

    // The events, in seeded order: kills at random points, the reconfigurations and one
    // PostgreSQL crash.
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Event {
        Kill,
        EnableLvc,
        MoveSync,
        CreateRollup,
        CrashPostgres,
    }
    let mut events: Vec<Event> = vec![Event::Kill; kills];
    for (i, e) in [
        Event::EnableLvc,
        Event::MoveSync,
        Event::CreateRollup,
        Event::CrashPostgres,
    ]
    .into_iter()
    .enumerate()
    {
        let at = ((i + 1) * (events.len() + 1) / 5).min(events.len());
        events.insert(at, e);
    }
    let mut moved_at = None;
    let mut second = None;
    let started = Instant::now();
    for event in &events {
        tokio::time::sleep(Duration::from_millis(800 + rng.below(3000))).await;
        eprintln!("{:>6.1} s: {event:?}", started.elapsed().as_secs_f64());
        match event {
            Event::Kill => {
                service.kill();
                tokio::time::sleep(Duration::from_millis(rng.below(1000))).await;
                service = spawn_service(&db, &config, &log);
            }
            Event::EnableLvc => {
                lakets::lvc::enable_lvc(
                    &mut db.client,
                    "ticks",
                    &["symbol".into()],
                    &["price".into(), "volume".into()],
                )
                .await
                .unwrap();
            }
            Event::MoveSync => {
                lakets::sync::disable_sync(&mut db.client, "ticks")
                    .await
                    .unwrap();
                moved_at = Some(
                    db.scalar::<chrono::DateTime<chrono::Utc>>("SELECT now()")
                        .await,
                );
                tokio::time::sleep(Duration::from_millis(rng.below(1500))).await;
                second = Some(
                    common::sync_to(&db, "ticks", dir.path().join("l2").to_str().unwrap()).await,
                );
            }
            Event::CreateRollup => {
                lakets::rollup::create_rollup(
                    &mut db.client,
                    &rollup("ticks_5min", "ticks", "5 minutes"),
                )
                .await
                .unwrap();
            }
            Event::CrashPostgres => {
                tokio::task::spawn_blocking(|| {
                    common::cluster().crash_server()?;
                    common::cluster().start_server()
                })
                .await
                .unwrap()
                .unwrap();
                db.client = common::user_connect(&db.url).await;
            }
        }
    }
    stop.cancel();
    let statements = writer.await.unwrap();
    assert!(
        statements > 200,
        "the workload ran: {statements} statements"
    );

    // The final catch-up, then a clean stop (SIGTERM: flush and acknowledge).
    let slot = lakets::wal::slot::default_slot_name(&db.name);
    let end = lsn_now(&db).await;
    wait_until_confirmed(&db.client, &slot, end, Duration::from_secs(120)).await;
    // The run must exercise the sink's compaction (checked below): on a loaded machine the
    // kills can leave maintenance no window during the workload, so the running service
    // gets a bounded while more (maintenance every 2 s, the workload's small files remain).
    wait_for(
        "a compaction by the running service",
        Duration::from_secs(60),
        async || {
            db.scalar::<i64>(
                "SELECT count(*) FROM lakets._job_runs, jsonb_array_elements(details) d
              WHERE job = 'delta_maintenance' AND (d -> 'compaction' ->> 'files_removed')::int > 0",
            )
            .await
                > 0
        },
    )
    .await;
    let exit = service.stop();
    assert!(exit.success(), "lakets run stopped cleanly: {exit:?}");
    lakets::rollup::refresh::refresh(&mut db.client, None, true, true)
        .await
        .unwrap();

    let report = lakets::verify::verify(&db.client, "ticks").await.unwrap();
    if !report.ok {
        // Keep the service's log and both Delta tables for the post-mortem.
        let _ = dir.keep();
    }
    assert!(
        report.ok,
        "seed {seed}: verify: {:?}\n(service log: {})",
        report.differences,
        log.display()
    );
    assert_eq!(report.lvc_differences, Some(0), "{report:?}");
    assert_eq!(report.rollups.len(), 2, "{report:?}");

    // No duplicate key in the Delta table the sync writes now.
    let second = second.expect("the sync moved");
    let delta = lakets::delta::table::open(&second.location)
        .await
        .unwrap()
        .unwrap();
    let shape = lakets::delta::mirror::shape_of(&delta, "time", Partitioning::Day).unwrap();
    let rows = lakets::delta::read::scan(&delta, &shape).await.unwrap();
    let keys: HashSet<(Cell, Cell)> = rows.iter().map(|r| (r[0].clone(), r[1].clone())).collect();
    assert_eq!(
        keys.len(),
        rows.len(),
        "seed {seed}: duplicate keys in Delta"
    );

    // Every chunk dropped along the way is, row for row, in the table it was mirrored to
    // at the time of its drop.
    let moved_at = moved_at.unwrap();
    let dropped = common::dropped_chunks(&db).await;
    for chunk in &dropped {
        let dropped_at: chrono::DateTime<chrono::Utc> = db
            .client
            .query_one(
                "SELECT dropped_at FROM lakets._chunk_metadata WHERE chunk_name = $1",
                &[&chunk.name],
            )
            .await
            .unwrap()
            .get(0);
        let location = if dropped_at < moved_at {
            &first.location
        } else {
            &second.location
        };
        let in_delta = common::delta_rows_in(location, chunk.start, chunk.end).await;
        assert_eq!(
            in_delta, chunk.rows as u64,
            "seed {seed}: dropped chunk {} held {} rows, its Delta table {in_delta}",
            chunk.name, chunk.rows
        );
    }
    // The run exercised what it claims: drops under load and the sink's compaction.
    assert!(!dropped.is_empty(), "seed {seed}: no chunk was dropped");
    wait_for("a compaction record", Duration::from_secs(1), async || {
        db.scalar::<i64>(
            "SELECT count(*) FROM lakets._job_runs, jsonb_array_elements(details) d
              WHERE job = 'delta_maintenance' AND (d -> 'compaction' ->> 'files_removed')::int > 0",
        )
        .await
            > 0
    })
    .await;
    eprintln!(
        "chaos seed {seed}: {statements} statements, {} kills, {} chunks dropped, {} rows in Delta, {:.0} s",
        kills,
        dropped.len(),
        rows.len(),
        started.elapsed().as_secs_f64()
    );
}
