//! Helpers shared by the WAL test binaries.

use std::time::{Duration, Instant};

use lakets::wal::lsn::Lsn;
use lakets::wal::{PipelineConfig, SourceSettings};

use super::TestDb;
use super::recording::RECORDED_DDL;

/// `setup`, plus the publication and the slot, so the stream covers every change from now.
pub async fn setup_streaming(db: &mut TestDb) {
    setup(db).await;
    publish_and_create_slot(db).await;
}

/// The `lakets` publication and the test's slot (named after its database).
pub async fn publish_and_create_slot(db: &TestDb) {
    lakets::catalog::replication::ensure_publication(&db.client, "lakets")
        .await
        .unwrap();
    lakets::wal::slot::ensure_slot(&db.client, &db.name)
        .await
        .unwrap();
}

/// `events` (a ChronoTable with one-hour chunks) and the `recorded` table.
pub async fn setup(db: &mut TestDb) {
    db.exec(&format!(
        "CREATE TABLE events (time timestamptz NOT NULL, id bigint NOT NULL, v text, PRIMARY KEY (id, time));
         {RECORDED_DDL};"
    ))
    .await;
    let mut opts = lakets::chronotable::CreateOptions::new("time");
    opts.chunk_interval = lakets::interval::Interval::hours(1);
    opts.premake = 2;
    lakets::chronotable::create_chronotable(&mut db.client, "events", &opts)
        .await
        .unwrap();
}

pub fn config(slot: &str) -> PipelineConfig {
    let mut c = PipelineConfig::new(SourceSettings::new(slot, "lakets"));
    c.flush_interval = Duration::from_millis(100);
    c.ack_interval = Duration::from_millis(100);
    c.heartbeat_interval = Some(Duration::from_millis(300));
    c
}

pub async fn lsn_now(db: &TestDb) -> Lsn {
    lsn_of(&db.client).await
}

/// The server's WAL insert position, through any session (a server not a [`TestDb`]'s).
pub async fn lsn_of(client: &tokio_postgres::Client) -> Lsn {
    let text: String = client
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    text.parse().unwrap()
}

/// The service's pipeline (every operator) on `slot` of `db`, streamed until `cancel`
/// with [`config`]'s short intervals.
pub async fn stream(
    db: &lakets::db::DbConfig,
    slot: &str,
    cancel: tokio_util::sync::CancellationToken,
) -> lakets::Result<()> {
    lakets::service::standard_pipeline(db, config(slot), Default::default(), None)
        .await?
        .run(cancel)
        .await
}

pub async fn durable(db: &TestDb, operator: &str) -> Lsn {
    let text: Option<String> = db
        .client
        .query_one(
            "SELECT (SELECT durable_lsn::text FROM lakets._sink_progress WHERE operator = $1 AND slot_name = $2)",
            &[&operator, &db.name],
        )
        .await
        .unwrap()
        .get(0);
    text.map(|t| t.parse().unwrap()).unwrap_or(Lsn::ZERO)
}

pub async fn confirmed_flush(db: &TestDb) -> Lsn {
    slot_confirmed(&db.client, &db.name).await
}

/// The slot's confirmed_flush_lsn (zero when the slot does not exist).
pub async fn slot_confirmed(client: &tokio_postgres::Client, slot: &str) -> Lsn {
    let text: Option<String> = client
        .query_one(
            "SELECT (SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1)",
            &[&slot],
        )
        .await
        .unwrap()
        .get(0);
    text.map(|t| t.parse().unwrap()).unwrap_or(Lsn::ZERO)
}

/// Waits until the slot is confirmed at or past `end`: it is confirmed only up to what
/// every operator has stored (or has nothing pending before), so this is "caught up".
pub async fn wait_until_confirmed(
    client: &tokio_postgres::Client,
    slot: &str,
    end: Lsn,
    timeout: Duration,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let confirmed = slot_confirmed(client, slot).await;
        if confirmed >= end {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the consumer did not catch up: slot {slot} at {confirmed} < {end}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn slot_active(db: &TestDb) -> Option<bool> {
    db.client
        .query_one(
            "SELECT (SELECT active FROM pg_replication_slots WHERE slot_name = $1)",
            &[&db.name],
        )
        .await
        .unwrap()
        .get(0)
}

/// Waits until no walsender holds `slot`: a walsender exits a moment after its client
/// hangs up, and a slot cannot be dropped or replaced while it is active.
pub async fn wait_slot_released(db: &TestDb, slot: &str) {
    wait_for(
        &format!("slot {slot} is released"),
        Duration::from_secs(30),
        async || {
            let active: Option<bool> = db
                .client
                .query_one(
                    "SELECT (SELECT active FROM pg_replication_slots WHERE slot_name = $1)",
                    &[&slot],
                )
                .await
                .unwrap()
                .get(0);
            active != Some(true)
        },
    )
    .await;
}

pub async fn wait_for(what: &str, timeout: Duration, check: impl AsyncFnMut() -> bool) {
    wait_for_every(what, timeout, Duration::from_millis(50), check).await
}

/// [`wait_for`], checking every `every`: for a state that lasts only a moment.
pub async fn wait_for_every(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut check: impl AsyncFnMut() -> bool,
) {
    let deadline = Instant::now() + timeout;
    while !check().await {
        if Instant::now() > deadline {
            let admin = lakets::db::connect(&super::cluster().url("postgres"))
                .await
                .unwrap();
            let sessions: Vec<String> = admin
                .query(
                    "SELECT format('%s %s %s/%s %s: %s', datname, backend_type, wait_event_type, wait_event, state, left(query, 120))
                       FROM pg_stat_activity WHERE datname IS NOT NULL",
                    &[],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
            panic!(
                "timed out waiting until {what}; sessions:\n{}",
                sessions.join("\n")
            );
        }
        tokio::time::sleep(every).await;
    }
}

/// Runs `statement` as its own transaction and returns the WAL positions around it.
pub async fn bracket(db: &TestDb, statement: &str) -> (Lsn, Lsn) {
    let before = lsn_now(db).await;
    db.exec(statement).await;
    (before, lsn_now(db).await)
}

pub async fn last_write_lsn(db: &TestDb, chunk: &str) -> Option<Lsn> {
    let text: Option<String> = db
        .client
        .query_one(
            "SELECT last_write_lsn::text FROM lakets._chunk_metadata WHERE chunk_name = $1",
            &[&chunk],
        )
        .await
        .unwrap()
        .get(0);
    text.map(|t| t.parse().unwrap())
}
