//! Test harness: one embedded PostgreSQL cluster per test binary, one database per test.
#![allow(dead_code)]

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

pub mod browser;
pub mod recording;
pub mod s3;
pub mod sail;
pub mod wal;
pub mod workload;

use lakets::embedded::{EmbeddedOptions, EmbeddedPostgres};

pub fn cluster() -> &'static EmbeddedPostgres {
    static PG: OnceLock<EmbeddedPostgres> = OnceLock::new();
    PG.get_or_init(|| {
        EmbeddedPostgres::start(cluster_options()).expect("starting embedded PostgreSQL")
    })
}

/// The settings of the tests' cluster (a standby of it needs the same).
pub fn cluster_options() -> EmbeddedOptions {
    // Every test leaves its slot behind (its database stays until the cluster goes), and
    // tests/integration/ runs some 75 tests on this one cluster.
    EmbeddedOptions::default()
        .setting("max_replication_slots", "200")
        .setting("max_wal_senders", "40")
}

pub struct TestDb {
    pub name: String,
    pub url: String,
    pub client: tokio_postgres::Client,
}

impl TestDb {
    /// The database's settings, as lakets' own connections use them.
    pub fn config(&self) -> lakets::db::DbConfig {
        lakets::db::parse_config(&self.url).expect("parsing the test database URL")
    }

    /// A session as a user of the database has it (their search_path and settings, not
    /// the ones lakets pins for its own sessions).
    pub async fn connect(&self) -> tokio_postgres::Client {
        user_connect(&self.url).await
    }

    pub async fn exec(&self, sql: &str) {
        self.client
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {}", lakets::error::describe_pg_error(&e)));
    }

    pub async fn scalar<T: for<'a> tokio_postgres::types::FromSql<'a>>(&self, sql: &str) -> T {
        self.client
            .query_one(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {}", lakets::error::describe_pg_error(&e)))
            .get(0)
    }
}

/// A fresh database with the lakets schema installed.
pub async fn fresh_db(label: &str) -> TestDb {
    let db = fresh_empty_db(label).await;
    let mut client = db.connect().await;
    lakets::catalog::migrate(&mut client)
        .await
        .expect("migrating");
    db
}

/// Logs of the code under test, when `LAKETS_TEST_LOG` holds a filter (`lakets=debug`).
pub fn init_test_logging() {
    if let Ok(filter) = std::env::var("LAKETS_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}

/// A fresh database without the lakets schema.
pub async fn fresh_empty_db(label: &str) -> TestDb {
    init_test_logging();
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let name = format!(
        "t_{}_{}",
        label
            .to_lowercase()
            .replace(|c: char| !c.is_ascii_alphanumeric(), "_"),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let pg = tokio::task::spawn_blocking(cluster).await.unwrap();
    let url = pg.create_database(&name).await.expect("creating database");
    let client = user_connect(&url).await;
    TestDb { name, url, client }
}

/// A plain session, as a user's application opens one.
pub async fn user_connect(url: &str) -> tokio_postgres::Client {
    try_user_connect(url)
        .await
        .unwrap_or_else(|e| panic!("connecting to {url}: {e}"))
}

/// [`user_connect`], failing softly (the server may be restarting).
pub async fn try_user_connect(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// The password the tests give the roles they create.
pub const ROLE_PASSWORD: &str = "test-role-pw";

/// `url` for another role (with [`ROLE_PASSWORD`]).
pub fn url_as(url: &str, user: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let host = rest.split_once('@').map_or(rest, |(_, h)| h);
    format!("{scheme}://{user}:{ROLE_PASSWORD}@{host}")
}

/// Parses an RFC 3339 time.
pub fn ts(text: &str) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("{text}: {e}"))
        .with_timezone(&chrono::Utc)
}

/// Syncs `table` of `db` to a Delta table at `location` (partitioned by day).
pub async fn sync_to(db: &TestDb, table: &str, location: &str) -> lakets::sync::SyncConfig {
    lakets::sync::enable_sync(
        &lakets::db::parse_config(&db.url).unwrap(),
        table,
        location,
        lakets::delta::schema::Partitioning::Day,
        |_| {},
    )
    .await
    .unwrap()
}

/// [`sync_to`] creating the Delta table with `features` (Change Data Feed, deletion
/// vectors).
pub async fn sync_with(
    db: &TestDb,
    table: &str,
    path: &std::path::Path,
    features: lakets::sync::Features,
) -> lakets::sync::SyncConfig {
    lakets::sync::enable_sync_with_readers(
        &db.config(),
        table,
        path.to_str().unwrap(),
        lakets::delta::schema::Partitioning::Day,
        None,
        features,
        2,
        |_| {},
    )
    .await
    .unwrap()
}

/// `ticks` (time, symbol, price; PRIMARY KEY (symbol, time)) holding 600 rows, one a
/// minute up to now over 4 symbols: a ChronoTable of 1-hour chunks (`premake` future ones,
/// None: the default) synced to a Delta table under `dir`.
pub async fn synced_ticks(
    db: &mut TestDb,
    dir: &std::path::Path,
    premake: Option<i32>,
) -> lakets::sync::SyncConfig {
    db.exec(
        "CREATE TABLE ticks (time timestamptz NOT NULL, symbol text NOT NULL, price float8,
                             PRIMARY KEY (symbol, time));
         INSERT INTO ticks SELECT now() - i * interval '1 minute', 'S' || (i % 4), i
           FROM generate_series(1, 600) i;",
    )
    .await;
    let mut opts = lakets::chronotable::CreateOptions::new("time");
    opts.chunk_interval = lakets::interval::Interval::hours(1);
    if let Some(premake) = premake {
        opts.premake = premake;
    }
    lakets::chronotable::create_chronotable(&mut db.client, "ticks", &opts)
        .await
        .unwrap();
    sync_to(db, "ticks", dir.join("ticks").to_str().unwrap()).await
}

/// [`synced_ticks`] with every operator a gap in the stream would leave wrong: a Last
/// Value Cache and a one-minute rollup ([`lvc_and_minute_rollup`]), and a policy that
/// tiers chunks after 2 hours and drops them after 4.
pub async fn synced_ticks_with_every_operator(
    db: &mut TestDb,
    dir: &std::path::Path,
) -> lakets::sync::SyncConfig {
    let sync = synced_ticks(db, dir, None).await;
    lvc_and_minute_rollup(db).await;
    lakets::lifecycle::policy::set_policy(
        &db.client,
        "ticks",
        Some(lakets::interval::Interval::hours(2)),
        Some(lakets::interval::Interval::hours(4)),
    )
    .await
    .unwrap();
    sync
}

/// The table [`workload::statement`] writes, holding `rows` rows 10 s apart up to now, as
/// a ChronoTable of 1-hour chunks with 2 made ahead.
pub async fn workload_chronotable(db: &mut TestDb, rows: u32) {
    shard_workload_chronotable(db, rows, "").await;
}

/// [`workload_chronotable`] of one shard's symbols (those starting with `shard`).
pub async fn shard_workload_chronotable(db: &mut TestDb, rows: u32, shard: &str) {
    db.exec(&workload::shard_ticks_table_sql(rows, shard)).await;
    let mut opts = lakets::chronotable::CreateOptions::new("time");
    opts.chunk_interval = lakets::interval::Interval::hours(1);
    opts.premake = 2;
    lakets::chronotable::create_chronotable(&mut db.client, "ticks", &opts)
        .await
        .unwrap();
}

/// The process's peak resident set size.
pub fn peak_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

/// On `ticks (time, symbol, price)`: a Last Value Cache per symbol and the rollup
/// `ticks_1min` (first, last and max price, count), for tests that `verify` every operator.
pub async fn lvc_and_minute_rollup(db: &mut TestDb) {
    lakets::lvc::enable_lvc(
        &mut db.client,
        "ticks",
        &["symbol".into()],
        &["price".into()],
    )
    .await
    .unwrap();
    lakets::rollup::create_rollup(
        &mut db.client,
        &lakets::rollup::CreateRollup {
            name: "ticks_1min".into(),
            source: "ticks".into(),
            bucket: lakets::interval::Interval::from_secs(60),
            group_by: vec!["symbol".into()],
            aggregate: "first(price), last(price), max(price), count(*)".into(),
            refresh_lag: lakets::interval::Interval::ZERO,
        },
    )
    .await
    .unwrap();
}

/// Rows of the Delta table at `location` (day-partitioned, time column `time`) in
/// `[start, end)`, microseconds since the epoch.
pub async fn delta_rows_in(location: &url::Url, start: i64, end: i64) -> u64 {
    let delta = lakets::delta::table::open(location)
        .await
        .unwrap()
        .expect("the Delta table exists");
    let shape =
        lakets::delta::mirror::shape_of(&delta, "time", lakets::delta::schema::Partitioning::Day)
            .unwrap();
    lakets::delta::read::count_range(&delta, &shape, start, end)
        .await
        .unwrap()
}

/// A chunk `status = 'dropped'` in `_chunk_metadata`: name, rows when dropped, and range
/// (microseconds since the epoch).
pub struct DroppedChunk {
    pub name: String,
    pub rows: i64,
    pub start: i64,
    pub end: i64,
}

pub async fn dropped_chunks(db: &TestDb) -> Vec<DroppedChunk> {
    db.client
        .query(
            "SELECT chunk_name, row_count, (extract(epoch FROM range_start) * 1000000)::bigint,
                    (extract(epoch FROM range_end) * 1000000)::bigint
               FROM lakets._chunk_metadata WHERE status = 'dropped' ORDER BY range_start",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| DroppedChunk {
            name: r.get(0),
            rows: r.get(1),
            start: r.get(2),
            end: r.get(3),
        })
        .collect()
}

/// `lakets run` (the real binary), killed when dropped.
pub struct Service(pub std::process::Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Service {
    /// SIGKILL, and wait for the process to go.
    pub fn kill(&mut self) {
        let _ = self.0.kill(); // SIGKILL
        let _ = self.0.wait();
    }

    /// SIGTERM (flush, acknowledge, stop), and the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGTERM);
        }
        self.0.wait().unwrap()
    }
}

/// Starts `lakets run --config <config>` on `db`, its stderr appended to `log`, logging
/// `LAKETS_TEST_CHILD_LOG` (default: lakets at info, the rest at warn).
pub fn spawn_service(db: &TestDb, config: &std::path::Path, log: &std::path::Path) -> Service {
    let filter =
        std::env::var("LAKETS_TEST_CHILD_LOG").unwrap_or_else(|_| "warn,lakets=info".into());
    spawn_service_logging(db, config, log, &filter)
}

/// [`spawn_service`] with the log filter `filter`.
pub fn spawn_service_logging(
    db: &TestDb,
    config: &std::path::Path,
    log: &std::path::Path,
    filter: &str,
) -> Service {
    spawn_service_with(db, config, log, filter, &[])
}

/// `GET path` on 127.0.0.1:`port`: (status, body); (0, "") when nothing answers in 2 s.
pub async fn http_get(port: u16, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await.ok()?;
        let code = response.get(9..12)?.parse().ok()?;
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())?;
        Some((code, body))
    };
    tokio::time::timeout(std::time::Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or((0, String::new()))
}

/// A sample of the Prometheus text `scrape`: the sum over the series of `name` whose
/// labels contain every one of `labels`.
pub fn metric_sum(scrape: &str, name: &str, labels: &[&str]) -> f64 {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let metric = series.split('{').next()?;
            (metric == name && labels.iter().all(|label| series.contains(label)))
                .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// The gate's settings when a test expects a deferral: it gives up soon.
pub const QUICK_GATE: lakets::lifecycle::GateSettings = lakets::lifecycle::GateSettings {
    lock_timeout: std::time::Duration::from_secs(2),
    wait: std::time::Duration::from_secs(2),
};

/// The gate's settings when a test expects the move: it waits for the stream.
pub const PATIENT_GATE: lakets::lifecycle::GateSettings = lakets::lifecycle::GateSettings {
    lock_timeout: std::time::Duration::from_secs(2),
    wait: std::time::Duration::from_secs(30),
};

/// The number of chunks of each `_chunk_metadata` status.
pub async fn chunk_status_counts(client: &tokio_postgres::Client) -> Vec<(String, i64)> {
    client
        .query(
            "SELECT status, count(*) FROM lakets._chunk_metadata GROUP BY 1 ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// The `lakets` binary against `url` (given through the environment), logging warnings.
pub fn lakets_cli(url: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_lakets"))
        .args(args)
        .env_remove("DATABASE_URL")
        .env("LAKETS_DATABASE_URL", url)
        .env("LAKETS_LOG", "warn")
        .output()
        .unwrap()
}

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// [`spawn_service_logging`] with more environment (`LAKETS_HTTP_LISTEN`, ...).
pub fn spawn_service_with(
    db: &TestDb,
    config: &std::path::Path,
    log: &std::path::Path,
    filter: &str,
    env: &[(&str, String)],
) -> Service {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Service(
        std::process::Command::new(env!("CARGO_BIN_EXE_lakets"))
            .args(["run", "--config"])
            .arg(config)
            .env_remove("DATABASE_URL")
            .env("LAKETS_DATABASE_URL", &db.url)
            .env("LAKETS_LOG", filter)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

/// Each commit of the Delta table at `location`: (version, commitInfo timestamp in ms, the
/// lakets process that made it, from commitInfo's `lakets.writer`).
pub async fn delta_commit_writers(location: &url::Url) -> Vec<(u64, i64, Option<String>)> {
    let delta = lakets::delta::table::open(location).await.unwrap().unwrap();
    let latest = delta.version().unwrap_or(0);
    let mut out = Vec::new();
    for version in 0..=latest {
        let Some(bytes) = delta.log_store().read_commit_entry(version).await.unwrap() else {
            continue;
        };
        for line in bytes.split(|b| *b == b'\n') {
            let Ok(action) = serde_json::from_slice::<serde_json::Value>(line) else {
                continue;
            };
            if let Some(info) = action.get("commitInfo") {
                out.push((
                    version,
                    info["timestamp"].as_i64().unwrap_or(0),
                    info["lakets.writer"].as_str().map(str::to_owned),
                ));
            }
        }
    }
    out
}

/// The interop venv's Python (`LAKETS_INTEROP_PYTHON`) when it can `import` what `imports`
/// names, or `None` (the caller skips), unless `LAKETS_REQUIRE_INTEROP` is set: then a
/// failure saying what `.ci/run` installs (`installs`).
pub fn interop_python(imports: &str, installs: &str) -> Option<String> {
    let python = std::env::var("LAKETS_INTEROP_PYTHON").ok();
    let usable = python.as_ref().is_some_and(|p| {
        std::process::Command::new(p)
            .args(["-c", &format!("import {imports}")])
            .status()
            .is_ok_and(|s| s.success())
    });
    if usable {
        return python;
    }
    assert!(
        std::env::var_os("LAKETS_REQUIRE_INTEROP").is_none(),
        "LAKETS_REQUIRE_INTEROP is set, but LAKETS_INTEROP_PYTHON cannot import {imports} \
         (.ci/run installs {installs})"
    );
    None
}
