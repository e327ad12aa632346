//! Fan-in: two PostgreSQL clusters hold shards of one logical `ticks` (by symbol: cluster
//! a's start with `A`, b's with `B`), each with its own `lakets run`, both mirroring into
//! one Delta table (`sync enable --source`). A mixed workload runs on both while maintenance
//! compacts every 2 s and each service is SIGKILLed once; cluster a's table gains a column
//! (with values) that b's never has. Afterwards each source's `verify` passes, maintenance
//! never failed, each source's gate tiered its own chunks (it counts its own rows only), no
//! key is doubled, a resync of one source leaves the other's rows, and Sail (the PySpark
//! API) reads the union: per source, the rows of that cluster.
//!
//! Its own binary: it starts a second cluster and kills the processes it starts.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::wal::{lsn_now, wait_until_confirmed};
use common::workload::Rng;
use common::{Service, TestDb};
use lakets::delta::schema::{Cell, Partitioning};
use lakets::embedded::EmbeddedPostgres;

/// One shard: its cluster's database and its service.
struct Shard {
    source: &'static str,
    db: TestDb,
    config: std::path::PathBuf,
    log: std::path::PathBuf,
    port: u16,
    service: Option<Service>,
}

impl Shard {
    fn spawn(&mut self) {
        self.service = Some(common::spawn_service_with(
            &self.db,
            &self.config,
            &self.log,
            "warn,lakets=info",
            &[("LAKETS_HTTP_LISTEN", format!("127.0.0.1:{}", self.port))],
        ));
    }

    async fn streaming(&mut self) {
        let started = Instant::now();
        loop {
            if let Some(exit) = self.service.as_mut().unwrap().0.try_wait().unwrap() {
                panic!(
                    "the service of source {} exited ({exit}):\n{}",
                    self.source,
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            let (code, body) = common::http_get(self.port, "/readyz").await;
            if code == 200 {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "source {} is not streaming after 60 s: {code} {body}\n{}",
                self.source,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn shard_prefix(&self) -> &'static str {
        match self.source {
            "a" => "A",
            _ => "B",
        }
    }
}

/// A database on `pg` with the lakets schema, holding this shard's `ticks` (2,000 rows
/// over the last 5.5 hours) as a ChronoTable of 1-hour chunks.
async fn shard_db(pg: &EmbeddedPostgres, name: &str, prefix: &str) -> TestDb {
    let url = pg.create_database(name).await.unwrap();
    let mut client = common::user_connect(&url).await;
    lakets::catalog::migrate(&mut client).await.unwrap();
    let mut db = TestDb {
        name: name.into(),
        url,
        client,
    };
    common::shard_workload_chronotable(&mut db, 2000, prefix).await;
    db
}

async fn enable(db: &TestDb, location: &str, source: Option<&str>) -> lakets::Result<()> {
    lakets::sync::enable_sync_with_readers(
        &db.config(),
        "ticks",
        location,
        Partitioning::Day,
        source,
        Default::default(),
        2,
        |_| {},
    )
    .await
    .map(|_| ())
}

/// (rows, sum of volume, distinct keys) of `ticks` in PostgreSQL.
async fn postgres_totals(db: &TestDb) -> (i64, i64, i64) {
    let row = db
        .client
        .query_one(
            "SELECT count(*), coalesce(sum(volume), 0)::bigint,
                    count(DISTINCT (symbol, time)) FROM ticks",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clusters_mirror_into_one_delta_table_each_exactly_once() {
    let second = tokio::task::spawn_blocking(|| {
        EmbeddedPostgres::start(common::cluster_options()).expect("starting a second cluster")
    })
    .await
    .unwrap();
    let first = tokio::task::spawn_blocking(common::cluster).await.unwrap();
    let mut dir = tempfile::tempdir().unwrap();
    let location = dir.path().join("ticks");
    let location = location.to_str().unwrap();

    let db_a = shard_db(first, "fanin", "A").await;
    let db_b = shard_db(&second, "fanin", "B").await;
    // The two clusters share nothing but the Delta table.
    let system_a: i64 = db_a
        .scalar("SELECT system_identifier FROM pg_control_system()")
        .await;
    let system_b: i64 = db_b
        .scalar("SELECT system_identifier FROM pg_control_system()")
        .await;
    assert_ne!(system_a, system_b);

    enable(&db_a, location, Some("a")).await.unwrap();
    // Refused, each with its reason, and nothing registered: a shared table without a
    // source name, a name another cluster took, a name that is no name.
    let refusals = [
        (None, "shared by several PostgreSQL clusters"),
        (Some("a"), "belongs to another PostgreSQL database"),
        (Some("B/1"), "source name"),
    ];
    for (source, why) in refusals {
        let err = enable(&db_b, location, source)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(why), "source {source:?}: {err}");
        assert!(
            lakets::sync::find_sync(
                &db_b.client,
                &lakets::ident::TableName::new("public", "ticks")
            )
            .await
            .unwrap()
            .is_none(),
            "a refused join registered nothing"
        );
    }
    // Another database of cluster a's server may not take its name either.
    let db_c = shard_db(first, "fanin_c", "C").await;
    let err = enable(&db_c, location, Some("a"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("belongs to another PostgreSQL database"),
        "{err}"
    );
    drop(db_c);
    enable(&db_b, location, Some("b")).await.unwrap();
    let show = common::lakets_cli(&db_b.url, &["sync", "show"]);
    let show = String::from_utf8_lossy(&show.stdout);
    assert!(show.contains("shared as source b"), "sync show: {show}");

    let config = |source: &str| {
        let path = dir.path().join(format!("lakets-{source}.toml"));
        std::fs::write(
            &path,
            r#"
[service]
flush_interval = "200 milliseconds"
[grpc]
listen = "off"
[jobs]
partitions_every = "2 seconds"
rollups_every = "2 seconds"
tiering_every = "2 seconds"
maintenance_every = "2 seconds"
[[tables]]
name = "ticks"
time_column = "time"
chunk_interval = "1 hour"
premake = 2
[tables.policy]
tier_after = "3 hours"
[tables.sync]
to = "{location}"
source = "{source}"
"#
            .replace("{location}", location)
            .replace("{source}", source),
        )
        .unwrap();
        path
    };
    let mut shards = [("a", db_a), ("b", db_b)].map(|(source, db)| Shard {
        source,
        config: config(source),
        log: dir.path().join(format!("lakets-{source}.log")),
        port: common::free_port(),
        db,
        service: None,
    });
    for shard in &mut shards {
        shard.spawn();
    }
    for shard in &mut shards {
        shard.streaming().await;
    }

    let stop = tokio_util::sync::CancellationToken::new();
    let seed = common::workload::seed("LAKETS_FANIN_SEED");
    eprintln!("fan-in seed {seed} (LAKETS_FANIN_SEED to replay)");
    let writers: Vec<_> = shards
        .iter()
        .enumerate()
        .map(|(i, s)| {
            common::workload::spawn_shard_writer(
                s.db.url.clone(),
                Rng((seed + i as u64) | 1),
                10,
                stop.clone(),
                s.shard_prefix(),
            )
        })
        .collect();
    // Each service is killed once while both stream and compact; in between, cluster a's
    // table gains a column (and values in it) that cluster b's never has.
    for i in [0, 1] {
        tokio::time::sleep(Duration::from_secs(6)).await;
        shards[i].service.as_mut().unwrap().kill();
        tokio::time::sleep(Duration::from_millis(500)).await;
        shards[i].spawn();
        shards[i].streaming().await;
        if i == 0 {
            shards[0]
                .db
                .exec(
                    "ALTER TABLE ticks ADD COLUMN venue text;
                     UPDATE ticks SET venue = 'XNAS' WHERE symbol = 'AS1';",
                )
                .await;
        }
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    stop.cancel();
    for writer in writers {
        let statements = writer.await.unwrap();
        assert!(
            statements > 200,
            "the workload ran: {statements} statements"
        );
    }

    // Each catches up to its cluster's end, the tiering job passes its gate, and stops.
    for shard in &shards {
        let slot = lakets::wal::slot::default_slot_name(&shard.db.name);
        let end = lsn_now(&shard.db).await;
        wait_until_confirmed(&shard.db.client, &slot, end, Duration::from_secs(60)).await;
    }
    let started = Instant::now();
    loop {
        let mut tiered = Vec::new();
        for shard in &shards {
            let counts = common::chunk_status_counts(&shard.db.client).await;
            tiered.push(counts.iter().any(|(s, n)| s == "tiered" && *n > 0));
        }
        if tiered.iter().all(|t| *t) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "each source's gate tiers its own chunks: {tiered:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut rebases = 0.0;
    for shard in &mut shards {
        let (_, scrape) = common::http_get(shard.port, "/metrics").await;
        rebases += common::metric_sum(&scrape, "lakets_delta_commit_rebases_total", &[]);
        let exit = shard.service.as_mut().unwrap().stop();
        assert!(
            exit.success(),
            "source {} stopped cleanly: {exit:?}",
            shard.source
        );
    }

    // Maintenance ran on both, beside the other's commits and the other's column, and
    // never failed.
    for shard in &shards {
        let runs: Vec<(String, i64)> = shard
            .db
            .client
            .query(
                "SELECT outcome, count(*) FROM lakets._job_runs
                  WHERE job = 'delta_maintenance' AND outcome IS NOT NULL GROUP BY 1",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        assert!(
            runs.iter().any(|(o, n)| o == "ok" && *n > 0)
                && !runs.iter().any(|(o, _)| o == "failed"),
            "maintenance runs of source {}: {runs:?}\n{}",
            shard.source,
            std::fs::read_to_string(&shard.log).unwrap_or_default()
        );
    }

    // Each source is exact on its own, and holds no key twice.
    let delta =
        lakets::delta::table::open(&lakets::delta::table::parse_location(location).unwrap())
            .await
            .unwrap()
            .unwrap();
    let mut totals = Vec::new();
    for shard in &shards {
        let report = lakets::verify::verify(&shard.db.client, "ticks")
            .await
            .unwrap();
        if !report.ok {
            let kept = std::mem::replace(&mut dir, tempfile::tempdir().unwrap()).keep();
            eprintln!("the tables and logs are kept in {}", kept.display());
        }
        assert!(
            report.ok,
            "verify of source {}: {:?}",
            shard.source, report.differences
        );
        let shape = lakets::delta::mirror::shape_for_source(
            &delta,
            "time",
            Partitioning::Day,
            Some(shard.source),
        )
        .unwrap();
        let rows = lakets::delta::read::scan(&delta, &shape).await.unwrap();
        let keys: HashSet<(Cell, Cell)> =
            rows.iter().map(|r| (r[0].clone(), r[1].clone())).collect();
        assert_eq!(
            keys.len(),
            rows.len(),
            "duplicate keys in source {}",
            shard.source
        );
        let prefix = shard.shard_prefix();
        assert!(
            rows.iter()
                .all(|r| matches!(&r[1], Cell::Str(s) if s.starts_with(prefix))),
            "source {} holds only its own cluster's rows",
            shard.source
        );
        totals.push((shard.source, postgres_totals(&shard.db).await));
    }

    // A resync of one source replaces its own rows and leaves the other's.
    let out = common::lakets_cli(&shards[1].db.url, &["resync", "--force"]);
    assert!(
        out.status.success(),
        "lakets resync on source b: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for shard in &shards {
        let report = lakets::verify::verify(&shard.db.client, "ticks")
            .await
            .unwrap();
        assert!(
            report.ok,
            "verify of source {} after source b's resync: {:?}",
            shard.source, report.differences
        );
    }

    // An independent reader sees the union: per source, that cluster's rows.
    match common::sail::read_union(location) {
        None => eprintln!("skipped the Sail reading: no LAKETS_INTEROP_PYTHON with pysail"),
        Some(by_source) => {
            for (source, (rows, volume, keys)) in &totals {
                let sail = by_source
                    .get(*source)
                    .unwrap_or_else(|| panic!("Sail sees no rows of source {source}"));
                assert_eq!(
                    (sail.rows, sail.volume, sail.keys),
                    (*rows, *volume, *keys),
                    "Sail's reading of source {source} (rows, sum of volume, keys) against \
                     its PostgreSQL"
                );
            }
            assert_eq!(by_source.len(), 2, "Sail sees two sources: {by_source:?}");
        }
    }
    eprintln!(
        "fan-in: {:?} (rows, sum of volume, keys) per source; {rebases} commits rebased over \
         the other source's",
        totals
    );
}
