//! The `lakets` schema, as one ordered list of migrations.
//!
//! Each migration runs in its own transaction under an advisory lock, and is recorded in
//! `lakets._schema_migrations`, so `lakets init` is idempotent, safe to run concurrently,
//! and upgrades a database created by an older lakets. Never edit a released migration:
//! append a new one.

use tokio_postgres::Client;
use tracing::info;

use crate::error::{Error, PgResultExt, Result};

pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "chronotables",
        sql: r#"
CREATE TABLE lakets._chronotable_registry (
    schema_name      text        NOT NULL,
    table_name       text        NOT NULL,
    time_column      text        NOT NULL,
    time_type        text        NOT NULL CHECK (time_type IN ('timestamptz', 'timestamp', 'date')),
    chunk_interval   interval    NOT NULL CHECK (chunk_interval > interval '0'),
    premake          integer     NOT NULL CHECK (premake >= 0),
    tiering_enabled  boolean     NOT NULL DEFAULT false,
    sync_enabled     boolean     NOT NULL DEFAULT false,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (schema_name, table_name)
);

CREATE TABLE lakets._chunk_metadata (
    schema_name      text        NOT NULL,
    table_name       text        NOT NULL,
    chunk_name       text        NOT NULL,
    range_start      timestamptz NOT NULL,
    range_end        timestamptz NOT NULL,
    status           text        NOT NULL DEFAULT 'active'
                                 CHECK (status IN ('active', 'tiered', 'dropped')),
    row_count        bigint,
    size_bytes       bigint,
    last_write_lsn   pg_lsn,
    created_at       timestamptz NOT NULL DEFAULT now(),
    tiered_at        timestamptz,
    dropped_at       timestamptz,
    stats_updated_at timestamptz,
    PRIMARY KEY (schema_name, chunk_name),
    FOREIGN KEY (schema_name, table_name)
        REFERENCES lakets._chronotable_registry (schema_name, table_name) ON DELETE CASCADE,
    CHECK (range_start < range_end)
);
CREATE INDEX _chunk_metadata_table_range ON lakets._chunk_metadata (schema_name, table_name, range_start);

COMMENT ON TABLE lakets._chronotable_registry IS 'ChronoTables: time-partitioned tables managed by lakets';
COMMENT ON TABLE lakets._chunk_metadata IS 'One row per chunk (partition) ever created; status active, tiered or dropped';
COMMENT ON COLUMN lakets._chunk_metadata.last_write_lsn IS 'End LSN of the last transaction that wrote to the chunk, stamped by the WAL consumer';
"#,
    },
    Migration {
        version: 2,
        name: "sink_progress",
        sql: r#"
CREATE TABLE lakets._sink_progress (
    slot_name   text        NOT NULL,
    operator    text        NOT NULL,
    durable_lsn pg_lsn      NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (slot_name, operator)
);
COMMENT ON TABLE lakets._sink_progress IS 'Per WAL operator: end LSN of the last transaction whose effects it committed, written in the same transaction as those effects';
"#,
    },
    Migration {
        version: 3,
        name: "replication_registry",
        sql: r#"
CREATE TABLE lakets._replication (
    slot_name     text        PRIMARY KEY,
    publication   text        NOT NULL,
    registered_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE lakets._replication IS 'Slots consumed by lakets and their publications: a new ChronoTable joins each of them in the transaction that creates it';
"#,
    },
    Migration {
        version: 4,
        name: "last_value_cache",
        sql: r#"
CREATE TABLE lakets._lvc_registry (
    schema_name    text        NOT NULL,
    table_name     text        NOT NULL,
    key_columns    text[]      NOT NULL,
    value_columns  text[]      NOT NULL,
    cache_table    text        NOT NULL UNIQUE,
    -- Changes committed before this position are already in the cache table.
    start_lsn      pg_lsn      NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (schema_name, table_name),
    FOREIGN KEY (schema_name, table_name)
        REFERENCES lakets._chronotable_registry (schema_name, table_name) ON DELETE CASCADE
);
COMMENT ON TABLE lakets._lvc_registry IS 'Last Value Caches: latest row per key of a ChronoTable, kept in lakets.<cache_table> by the WAL consumer';
"#,
    },
    Migration {
        version: 5,
        name: "delta_sync",
        sql: r#"
CREATE TABLE lakets._sync_registry (
    schema_name    text        NOT NULL,
    table_name     text        NOT NULL,
    -- Where the Delta table lives (a file:// URL for local paths; never credentials).
    location       text        NOT NULL,
    partitioning   text        NOT NULL CHECK (partitioning IN ('day', 'month', 'none')),
    -- 'copying': the initial snapshot is being written; 'active': the stream mirrors it.
    state          text        NOT NULL CHECK (state IN ('copying', 'active')),
    -- Changes committed before this position are in the initial snapshot.
    start_lsn      pg_lsn,
    rows_copied    bigint      NOT NULL DEFAULT 0,
    rows_estimate  bigint,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (schema_name, table_name),
    FOREIGN KEY (schema_name, table_name)
        REFERENCES lakets._chronotable_registry (schema_name, table_name) ON DELETE CASCADE
);
COMMENT ON TABLE lakets._sync_registry IS 'ChronoTables mirrored into a Delta Lake table by the WAL consumer';
"#,
    },
    Migration {
        version: 6,
        name: "tiering_retention_jobs",
        sql: r#"
CREATE TABLE lakets._retention_policies (
    schema_name  text        NOT NULL,
    table_name   text        NOT NULL,
    -- Chunks whose whole range is older than this are tiered (synced tables only).
    tier_after   interval,
    -- Chunks whose whole range is older than this are dropped (synced: once tiered).
    drop_after   interval,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (schema_name, table_name),
    FOREIGN KEY (schema_name, table_name)
        REFERENCES lakets._chronotable_registry (schema_name, table_name) ON DELETE CASCADE,
    CHECK (tier_after IS NOT NULL OR drop_after IS NOT NULL),
    CHECK (tier_after IS NULL OR tier_after > interval '0'),
    CHECK (drop_after IS NULL OR tier_after IS NULL OR drop_after >= tier_after)
);
COMMENT ON TABLE lakets._retention_policies IS 'Tiered retention: when chunks move to the cold tier and when they leave the hot tier';

-- Why the last tiering or drop attempt of a chunk was deferred (NULL: not deferred).
ALTER TABLE lakets._chunk_metadata
    ADD COLUMN deferred_reason text,
    ADD COLUMN deferred_at     timestamptz;

CREATE TABLE lakets._job_runs (
    id            bigserial   PRIMARY KEY,
    job           text        NOT NULL,
    instance      text        NOT NULL,
    started_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz,
    outcome       text        CHECK (outcome IN ('ok', 'deferred', 'failed')),
    error         text,
    rows_affected bigint,
    details       jsonb
);
CREATE INDEX _job_runs_job_started ON lakets._job_runs (job, started_at DESC);
COMMENT ON TABLE lakets._job_runs IS 'History of the scheduled jobs of lakets run (partitions, tiering, retention, Delta maintenance)';
"#,
    },
    Migration {
        version: 7,
        name: "rollups",
        sql: r#"
CREATE TABLE lakets._rollup_registry (
    rollup_name        text        PRIMARY KEY,
    -- The materialized table is schema_name.rollup_name (the source's schema).
    schema_name        text        NOT NULL,
    source_schema      text        NOT NULL,
    source_name        text        NOT NULL,
    -- Set when the source is another rollup; a rollup with readers cannot be dropped.
    source_rollup      text        REFERENCES lakets._rollup_registry (rollup_name),
    source_time_column text        NOT NULL,
    source_time_type   text        NOT NULL,
    -- The ChronoTable at the bottom of the chain.
    root_schema        text        NOT NULL,
    root_name          text        NOT NULL,
    root_time_column   text        NOT NULL,
    root_time_type     text        NOT NULL,
    bucket_type        text        NOT NULL CHECK (bucket_type IN ('timestamptz', 'timestamp')),
    bucket_width       interval    NOT NULL CHECK (bucket_width > interval '0'),
    group_by           text[]      NOT NULL DEFAULT '{}',
    aggregate          text        NOT NULL,
    -- The planned output columns: name, function, base column, source inputs.
    columns            jsonb       NOT NULL,
    refresh_lag        interval    NOT NULL DEFAULT '0' CHECK (refresh_lag >= interval '0'),
    -- Buckets before the watermark are materialized (NULL: none yet).
    watermark          timestamptz,
    last_refresh_at    timestamptz,
    created_at         timestamptz NOT NULL DEFAULT now(),
    CHECK (source_rollup IS DISTINCT FROM rollup_name)
);
COMMENT ON TABLE lakets._rollup_registry IS 'RollUps: the DAG of incrementally refreshed aggregates and their watermarks';

CREATE TABLE lakets._rollup_invalidation_log (
    id          bigserial   PRIMARY KEY,
    rollup_name text        NOT NULL REFERENCES lakets._rollup_registry (rollup_name) ON DELETE CASCADE,
    -- Whole buckets [lo, hi) to re-aggregate.
    lo          timestamptz NOT NULL,
    hi          timestamptz NOT NULL,
    -- The group-by values touched ({"symbol": "AAPL"}); NULL: every group.
    group_key   jsonb,
    logged_at   timestamptz NOT NULL DEFAULT now(),
    CHECK (lo < hi)
);
CREATE INDEX _rollup_invalidation_log_rollup ON lakets._rollup_invalidation_log (rollup_name);
COMMENT ON TABLE lakets._rollup_invalidation_log IS 'Rollup buckets touched since their last refresh, coalesced into ranges';
"#,
    },
    Migration {
        version: 8,
        name: "ingest_profile",
        sql: r#"
CREATE TABLE lakets._ingest_profile (
    name          text             PRIMARY KEY,
    symbols       integer          NOT NULL CHECK (symbols BETWEEN 1 AND 100000),
    rate          bigint           NOT NULL CHECK (rate >= 0),
    burst         boolean          NOT NULL DEFAULT false,
    updated_at    timestamptz      NOT NULL DEFAULT now(),
    achieved_rate double precision,
    total_rows    bigint           NOT NULL DEFAULT 0,
    reported_at   timestamptz
);
COMMENT ON TABLE lakets._ingest_profile IS 'What lakets ingest produces (symbols, rows/s, burst); changed through the gRPC API, picked up by the running ingest within a second';
"#,
    },
    Migration {
        version: 9,
        name: "stream_gaps",
        sql: r#"
CREATE TABLE lakets._stream_gaps (
    slot_name   text        NOT NULL,
    since_lsn   pg_lsn,
    reason      text        NOT NULL,
    detected_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (slot_name, reason)
);
COMMENT ON TABLE lakets._stream_gaps IS 'Changes the stream missed (a slot invalidated, or dropped while lakets operators depended on it): streaming and every chunk drop wait until `lakets resync` has re-copied the hot data';
"#,
    },
    Migration {
        version: 10,
        name: "announcements_and_stops",
        sql: r#"
CREATE TABLE lakets._announcements (
    id         bigserial   PRIMARY KEY,
    -- The transaction that wrote the row: a logical message naming this row is believed
    -- only when it comes from the same transaction.
    xid        xid8        NOT NULL DEFAULT pg_current_xact_id(),
    kind       text        NOT NULL,
    payload    jsonb       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE lakets._announcements IS 'Configuration changes the WAL operators depend on (syncs, caches, rollups), each announced in the stream by a logical message in the transaction that made it';

-- What each operator was configured with at its durable position (NULL: read the
-- registries), so a replay never reinterprets history with today's catalog.
ALTER TABLE lakets._sink_progress ADD COLUMN config jsonb;

-- Why streaming stopped for good (a definite error), until a run starts streaming again.
ALTER TABLE lakets._replication
    ADD COLUMN stopped_reason text,
    ADD COLUMN stopped_kind   text,
    ADD COLUMN stopped_at     timestamptz;
"#,
    },
    Migration {
        version: 11,
        name: "instances_and_leaders",
        sql: r#"
CREATE TABLE lakets._instances (
    slot_name    text        NOT NULL,
    instance     text        NOT NULL,
    -- The application_name of every session of the process (so a new leader can end them).
    application  text        NOT NULL,
    -- Its leadership session: gone from pg_stat_activity when the process is.
    backend_pid  integer     NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (slot_name, instance)
);
COMMENT ON TABLE lakets._instances IS 'The lakets run processes of each stream, with their heartbeat';

CREATE TABLE lakets._leaders (
    slot_name  text        PRIMARY KEY,
    instance   text        NOT NULL,
    -- Raised at every change of hands.
    epoch      bigint      NOT NULL,
    since      timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
COMMENT ON TABLE lakets._leaders IS 'Which process streams each slot and runs the jobs (the others stand by), under a lease it renews';
"#,
    },
    Migration {
        version: 12,
        name: "server_identity",
        sql: r#"
-- The server each slot's stream came from: its system identifier and WAL timeline. A
-- promoted standby (failover) or a point-in-time restore moves to a new timeline, a
-- restore into a new cluster to a new system; either way the logical slot's history
-- does not follow (PostgreSQL 15-16) and the stream has a gap.
ALTER TABLE lakets._replication
    ADD COLUMN server_system   text,
    ADD COLUMN server_timeline bigint;
"#,
    },
    Migration {
        version: 13,
        name: "sync_source",
        sql: r#"
-- A sync into a Delta table that several PostgreSQL clusters (shards) share: the name this
-- cluster's rows carry there (the table's lakets_source partition column). NULL: the table
-- is this cluster's alone.
ALTER TABLE lakets._sync_registry
    ADD COLUMN source text CHECK (source ~ '^[a-z0-9][a-z0-9_-]{0,62}$');
"#,
    },
];

/// The schema version this build of lakets expects.
pub fn latest_version() -> i32 {
    MIGRATIONS.last().map(|m| m.version).unwrap_or(0)
}

/// Advisory lock key space of lakets ("LKTS"); the second key says what is locked.
pub const ADVISORY_NAMESPACE: i32 = 0x4c4b_5453;
/// Per-table locks use their own first key, with `hashtext` of the table's name second.
pub const TABLE_LOCK_NAMESPACE: i32 = 0x4c4b_5454;
/// Tiering and drops of one table's chunks (jobs and commands alike) take turns under this
/// first key (second: `hashtext` of the table's quoted name).
pub const LIFECYCLE_LOCK_NAMESPACE: i32 = 0x4c4b_5456;
const MIGRATION_LOCK: i32 = 1;

/// Installs or upgrades the `lakets` schema. Returns the versions it applied.
pub async fn migrate(client: &mut Client) -> Result<Vec<i32>> {
    // Already current: no DDL and no lock, so a role without CREATE on the database (see
    // deploy/postgresql/grants.sql) can run lakets once the schema is installed.
    if installed_version(&*client).await? == Some(latest_version()) {
        return Ok(Vec::new());
    }
    let mut applied = Vec::new();
    for migration in MIGRATIONS {
        let tx = client
            .transaction()
            .await
            .pg_context(|| "starting a migration transaction".into())?;
        tx.execute(
            "SELECT pg_advisory_xact_lock($1, $2)",
            &[&ADVISORY_NAMESPACE, &MIGRATION_LOCK],
        )
        .await
        .pg_context(|| "taking the migration lock".into())?;
        tx.batch_execute(
            "CREATE SCHEMA IF NOT EXISTS lakets;
             CREATE TABLE IF NOT EXISTS lakets._schema_migrations (
                 version    integer     PRIMARY KEY,
                 name       text        NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now()
             );",
        )
        .await
        .pg_context(|| "creating the lakets schema".into())?;
        let current = installed_version(&tx).await?.unwrap_or(0);
        if current > latest_version() {
            return Err(Error::NotReady(format!(
                "the lakets schema in this database is at version {current}, newer than this \
                 lakets build knows ({}); upgrade lakets",
                latest_version()
            )));
        }
        if migration.version <= current {
            continue;
        }
        tx.batch_execute(migration.sql).await.pg_context(|| {
            format!(
                "applying migration {} ({})",
                migration.version, migration.name
            )
        })?;
        tx.execute(
            "INSERT INTO lakets._schema_migrations (version, name) VALUES ($1, $2)",
            &[&migration.version, &migration.name],
        )
        .await
        .pg_context(|| "recording the migration".into())?;
        tx.commit()
            .await
            .pg_context(|| format!("committing migration {}", migration.version))?;
        info!(
            version = migration.version,
            name = migration.name,
            "applied migration"
        );
        applied.push(migration.version);
    }
    Ok(applied)
}

/// The version of the installed `lakets` schema; None when it is not installed.
async fn installed_version(client: &impl tokio_postgres::GenericClient) -> Result<Option<i32>> {
    let installed: bool = client
        .query_one(
            "SELECT to_regclass('lakets._schema_migrations') IS NOT NULL",
            &[],
        )
        .await
        .pg_context(|| "checking for the lakets schema".into())?
        .get(0);
    if !installed {
        return Ok(None);
    }
    let version: i32 = client
        .query_one(
            "SELECT coalesce(max(version), 0) FROM lakets._schema_migrations",
            &[],
        )
        .await
        .pg_context(|| "reading the schema version".into())?
        .get(0);
    Ok(Some(version))
}

/// Refuses to work on a database whose `lakets` schema is missing or at another version.
pub async fn check_installed(client: &impl tokio_postgres::GenericClient) -> Result<()> {
    let Some(current) = installed_version(client).await? else {
        return Err(Error::NotReady(
            "the lakets schema is not installed in this database; run `lakets init` first".into(),
        ));
    };
    let latest = latest_version();
    if current < latest {
        return Err(Error::NotReady(format!(
            "the lakets schema is at version {current}, this lakets needs {latest}; run `lakets init` to upgrade"
        )));
    }
    if current > latest {
        return Err(Error::NotReady(format!(
            "the lakets schema is at version {current}, newer than this lakets build knows ({latest}); upgrade lakets"
        )));
    }
    Ok(())
}
