//! The command line's arguments: every command, flag and environment variable `lakets`
//! accepts (the contract scripts rely on).

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use lakets::chronotable::DEFAULT_PREMAKE;
use lakets::interval::Interval;

#[derive(Parser, Debug)]
#[command(
    name = "lakets",
    version,
    about = "Time-series on PostgreSQL with a Delta Lake cold tier"
)]
pub struct Cli {
    /// PostgreSQL URL (postgres://user@host:port/db). Falls back to DATABASE_URL. Put
    /// passwords in PGPASSWORD or LAKETS_DATABASE_PASSWORD_FILE, not on the command line.
    #[arg(
        long,
        global = true,
        env = "LAKETS_DATABASE_URL",
        hide_env_values = true
    )]
    pub database_url: Option<String>,

    /// Log format on stderr.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "pretty",
        env = "LAKETS_LOG_FORMAT"
    )]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Install or upgrade the lakets schema in the database (idempotent).
    Init,
    /// Time-partitioned tables.
    #[command(subcommand)]
    Chronotable(ChronotableCommand),
    /// The service: reconcile the database with the config, then stream the WAL through
    /// the operators, run the jobs, and serve metrics and gRPC until Ctrl-C or SIGTERM.
    Run {
        /// The config file (TOML); every key can also come from a LAKETS_* variable.
        #[arg(long, env = "LAKETS_CONFIG")]
        config: Option<PathBuf>,
        #[command(flatten)]
        overrides: RunOverrides,
    },
    /// Slot, lag, operators, chunks, rollups and jobs; live figures from the running
    /// service when its gRPC endpoint answers.
    Status {
        #[arg(long, env = "LAKETS_CONFIG")]
        config: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Check the config, or reconcile the database with it without starting the service.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Stream synthetic stock ticks into stock_ticks (stream_ticks).
    #[cfg(feature = "devtools")]
    Ingest {
        /// Symbols to tick (from stock_assets, filled if needed).
        #[arg(long, default_value_t = 10)]
        symbols: u32,
        /// Rows per second.
        #[arg(long, default_value_t = 1000)]
        rate: u64,
        /// Five times the rate for two seconds of every ten.
        #[arg(long)]
        burst: bool,
        /// Stop after this long; default: until Ctrl-C.
        #[arg(long, value_parser = parse_interval)]
        duration: Option<Interval>,
        /// How rows are written: a multi-row INSERT of bound arrays (faster here, see
        /// `lakets bench ingest`) or COPY.
        #[arg(long, value_enum, default_value = "insert")]
        method: lakets::ingest::Method,
        /// Print the final report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Compare the Delta table and the Last Value Cache with the table; exits non-zero and
    /// names the first differences when anything disagrees.
    Verify {
        table: String,
        #[arg(long)]
        json: bool,
        /// Seconds to wait for the streaming service to store everything committed before
        /// verify began (every active lakets slot confirming that WAL position); 0 compares
        /// at once.
        #[arg(long, default_value_t = 30, value_name = "SECONDS")]
        wait: u64,
    },
    /// Close a gap in the WAL stream (slot invalidated or dropped): recreate the slot,
    /// re-copy the hot rows into Delta (keeping dropped chunks' history), refill the
    /// caches, invalidate the rollups. Run it with the service stopped.
    Resync {
        /// Re-copy even when no gap is recorded.
        #[arg(long)]
        force: bool,
        #[arg(long)]
        json: bool,
    },
    /// Tiered retention policies (add_tiered_retention_policy).
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Tier the chunks older than their policy's tier_after, through the durability gate
    /// (tier_chunk); deferred chunks say why.
    Tier {
        #[arg(long)]
        table: Option<String>,
        /// One chunk, whatever its age.
        #[arg(long)]
        chunk: Option<String>,
        /// How long to wait for the consumer to confirm a chunk's writes.
        #[arg(long, default_value = "15 seconds", value_parser = parse_interval)]
        wait: Interval,
        #[arg(long)]
        json: bool,
    },
    /// Drop the chunks older than their policy's drop_after; a synced table's chunks only
    /// once tiered and through the gate again (execute_retention).
    Retention {
        #[arg(long)]
        table: Option<String>,
        #[arg(long, default_value = "15 seconds", value_parser = parse_interval)]
        wait: Interval,
        #[arg(long)]
        json: bool,
    },
    /// Last Value Cache: the latest row per key of a ChronoTable.
    #[command(subcommand)]
    Lvc(LvcCommand),
    /// RollUps: incrementally refreshed aggregates (OHLCV candles and more) forming a DAG.
    #[command(subcommand)]
    Rollup(RollupCommand),
    /// Mirror a ChronoTable into a Delta Lake table (the cold tier).
    #[command(subcommand)]
    Sync(SyncCommand),
    /// The replication slot: show its state, or drop it.
    #[command(subcommand)]
    Slot(SlotCommand),
    /// End-to-end benchmarks on an embedded PostgreSQL (ratios measured in one run).
    #[cfg(feature = "devtools")]
    #[command(subcommand)]
    Bench(BenchCommand),
    /// The stock-tick demo on an embedded PostgreSQL (or --database-url).
    #[cfg(feature = "devtools")]
    Demo {
        /// Stop after this long (for example '5 minutes'); default: until Ctrl-C.
        #[arg(long, value_parser = parse_interval)]
        duration: Option<Interval>,
        /// Where the demo keeps its files.
        #[arg(long, default_value = "lakets-data")]
        data_dir: PathBuf,
        /// Hours of synthetic history written at start (so tiering and drops show early).
        #[arg(long, default_value_t = 5)]
        history_hours: i32,
        /// Symbols to tick.
        #[arg(long, default_value_t = 10)]
        symbols: u32,
        /// Live ticks per second.
        #[arg(long, default_value_t = 100)]
        rate: u64,
    },
}

/// Command-line overrides of the config (they win over the file and the environment).
#[derive(clap::Args, Debug, Clone)]
pub struct RunOverrides {
    /// Replication slot name (service.slot; default lakets_<database>).
    #[arg(long)]
    pub slot: Option<String>,
    /// Publication name (service.publication).
    #[arg(long)]
    pub publication: Option<String>,
    /// Receive values in text format instead of binary (service.protocol = "text").
    #[arg(long)]
    pub text_protocol: bool,
    /// Do not run the scheduled jobs (jobs.enabled = false).
    #[arg(long)]
    pub no_jobs: bool,
    /// Partition manager interval (jobs.partitions_every; 0 disables it).
    #[arg(long, value_parser = parse_interval)]
    pub partitions_every: Option<Interval>,
    /// Rollup cascade refresh interval (jobs.rollups_every).
    #[arg(long, value_parser = parse_interval)]
    pub rollups_every: Option<Interval>,
    /// Tiering interval (jobs.tiering_every).
    #[arg(long, value_parser = parse_interval)]
    pub tiering_every: Option<Interval>,
    /// Retention interval (jobs.retention_every).
    #[arg(long, value_parser = parse_interval)]
    pub retention_every: Option<Interval>,
    /// Delta maintenance interval (jobs.maintenance_every).
    #[arg(long, value_parser = parse_interval)]
    pub maintenance_every: Option<Interval>,
    /// Metrics and probes address (http.listen; `off` disables).
    #[arg(long, alias = "metrics-addr")]
    pub http_listen: Option<String>,
    /// gRPC address (grpc.listen; `off` disables).
    #[arg(long)]
    pub grpc_listen: Option<String>,
}

impl RunOverrides {
    pub fn apply(&self, c: &mut lakets::config::Config) {
        if let Some(v) = &self.slot {
            c.service.slot = Some(v.clone());
        }
        if let Some(v) = &self.publication {
            c.service.publication = v.clone();
        }
        if self.text_protocol {
            c.service.protocol = lakets::config::Protocol::Text;
        }
        if self.no_jobs {
            c.jobs.enabled = false;
        }
        for (flag, key) in [
            (self.partitions_every, &mut c.jobs.partitions_every),
            (self.rollups_every, &mut c.jobs.rollups_every),
            (self.tiering_every, &mut c.jobs.tiering_every),
            (self.retention_every, &mut c.jobs.retention_every),
            (self.maintenance_every, &mut c.jobs.maintenance_every),
        ] {
            if let Some(v) = flag {
                *key = v;
            }
        }
        if let Some(v) = &self.http_listen {
            c.http.listen = v.clone();
        }
        if let Some(v) = &self.grpc_listen {
            c.grpc.listen = v.clone();
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Parse and check the config (file + LAKETS_* environment); print it as resolved.
    Check {
        #[arg(long, env = "LAKETS_CONFIG")]
        config: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Create what the config names and is missing; report drift (changes nothing else).
    Apply {
        #[arg(long, env = "LAKETS_CONFIG")]
        config: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Set a table's policy: tier chunks after one interval, drop them after another.
    Set {
        table: String,
        #[arg(long, value_parser = parse_interval)]
        tier_after: Option<Interval>,
        #[arg(long, value_parser = parse_interval)]
        drop_after: Option<Interval>,
    },
    /// List the policies.
    Show {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum LvcCommand {
    /// Create and fill the cache, kept current by `lakets run` (enable_lvc).
    Enable {
        table: String,
        /// Key column(s), comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        key: Vec<String>,
        /// Value columns to cache, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        columns: Vec<String>,
    },
    /// Print the cached row of a key as JSON (one value per key column).
    Get {
        table: String,
        #[arg(required = true)]
        key: Vec<String>,
    },
    /// Drop the cache; `lakets run` stops keeping it at exactly this point in the stream.
    Disable { table: String },
}

#[derive(Subcommand, Debug)]
pub enum RollupCommand {
    /// Create a rollup of a ChronoTable or of another rollup; nothing is materialized until
    /// the first refresh.
    Create {
        /// The rollup's name; its table is created under this name in the source's schema,
        /// with a real-time view NAME_realtime.
        name: String,
        /// The ChronoTable or the rollup to aggregate.
        #[arg(long)]
        source: String,
        /// Bucket width, such as '1 minute' (a multiple of the source rollup's bucket).
        #[arg(long, value_parser = parse_interval)]
        bucket: Interval,
        /// Group-by columns, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "")]
        group_by: Vec<String>,
        /// Aggregates: ohlcv(price, volume), first(c), last(c), min(c), max(c), sum(c),
        /// count(c), count(*), avg(c), comma-separated.
        #[arg(long)]
        aggregate: String,
        /// Skip a refresh when the last one is more recent than this.
        #[arg(long, default_value = "0 seconds", value_parser = parse_interval)]
        refresh_lag: Interval,
    },
    /// List rollups: source, bucket, groups, watermark, pending invalidations.
    Show {
        #[arg(long)]
        json: bool,
    },
    /// Drop a rollup (refused while another rollup reads it).
    Drop { name: String },
    /// Refresh every rollup (or NAME; with --cascade, NAME and the rollups reading it),
    /// sources before readers (refresh_rollup_cascade).
    Refresh {
        name: Option<String>,
        #[arg(long)]
        cascade: bool,
        /// Ignore refresh_lag.
        #[arg(long)]
        force: bool,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum SyncCommand {
    /// Create the Delta table, copy the rows the table holds now, and mirror every later
    /// change through `lakets run` (enable_sync). Credentials come from the environment.
    Enable {
        table: String,
        /// A local path, file://, s3://, gs:// or az:// URI.
        #[arg(long = "to")]
        to: String,
        /// Partition the Delta table by the time column's day, month, or not at all.
        #[arg(long, default_value = "day", value_parser = ["day", "month", "none"])]
        partition_by: String,
        /// Share the Delta table with other PostgreSQL clusters (fan-in of shards): this
        /// cluster's rows carry this name in its `lakets_source` partition column. The
        /// first cluster creates the table; the others join it with names of their own.
        #[arg(long)]
        source: Option<String>,
        /// Connections reading the copy at once, all under one snapshot (each a backend
        /// on the server while the copy runs).
        #[arg(long, default_value_t = lakets::sync::DEFAULT_READERS as u16,
              value_parser = clap::value_parser!(u16).range(1..=64))]
        readers: u16,
        /// Create the Delta table with Change Data Feed: commits that mirror updates or
        /// deletes carry `_change_data/` files (protocol writer 4; readers stay at 1).
        /// An existing table keeps its protocol (see `sync upgrade`).
        #[arg(long)]
        change_data_feed: bool,
        /// Create the Delta table with deletion vectors: a mirrored delete or update marks
        /// the old row deleted instead of rewriting its file (protocol reader 3 / writer 7,
        /// table features: readers must support them).
        #[arg(long)]
        deletion_vectors: bool,
    },
    /// List synced tables: location, state, snapshot position, Delta protocol and
    /// features.
    Show {
        #[arg(long)]
        json: bool,
    },
    /// Turn a feature on in a synced table's existing Delta table (one commit raising its
    /// protocol; refused where the table carries features lakets does not write).
    Upgrade {
        table: String,
        /// Change Data Feed (protocol writer 4, or the feature at writer 7).
        #[arg(long)]
        change_data_feed: bool,
        /// Deletion vectors (protocol reader 3 / writer 7: readers without table features
        /// can no longer read the table; refused for a table several clusters share).
        #[arg(long)]
        deletion_vectors: bool,
    },
    /// Stop mirroring a table (its Delta table is kept).
    Disable { table: String },
}

#[cfg(feature = "devtools")]
#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Every figure of the design in one run, against its target: the write path (bare,
    /// with the service streaming, with the spec's triggers), catch-up vs pg_recvlogical,
    /// freshness, peak memory over N and 10N rows, and the sustained rate. About 12 min.
    All {
        /// Tiny sizes: checks that every phase runs (seconds, not figures).
        #[arg(long)]
        quick: bool,
        /// Rows of the catch-up backlog.
        #[arg(long)]
        catchup_rows: Option<u64>,
        /// Seconds per write-path run.
        #[arg(long)]
        write_seconds: Option<f64>,
        /// Ingest rate of the freshness phase, rows/s (also the sustained-rate target).
        #[arg(long)]
        freshness_rate: Option<u64>,
        /// N of the memory phase (it drains N and 10N rows).
        #[arg(long)]
        memory_rows: Option<u64>,
        /// Seconds per sustained-rate step.
        #[arg(long)]
        sustain_seconds: Option<u64>,
        /// Also write the JSON report to this file.
        #[arg(long)]
        output: Option<std::path::PathBuf>,
        /// Print the JSON report instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// What the writers pay: insert rows/s bare, with the service streaming, and with the
    /// spec's triggers; with the cores shared and split; commit latency at a fixed rate.
    WritePath {
        /// Writer connections, one run each (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "2,4")]
        writers: Vec<usize>,
        /// Seconds per run.
        #[arg(long, default_value_t = 8.0)]
        seconds: f64,
        #[arg(long, default_value_t = 2)]
        repetitions: usize,
        /// Rows/s of the commit-latency runs (2 writers).
        #[arg(long, default_value_t = 10_000)]
        latency_rate: u64,
        /// Print the JSON report instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// The whole service at a moderate rate for a long stretch (chunks tiered and dropped
    /// under load): lag and memory over time, then `verify`.
    Soak {
        /// How long to write.
        #[arg(long, default_value = "30 minutes", value_parser = parse_interval)]
        duration: Interval,
        /// Rows per second.
        #[arg(long, default_value_t = 20_000)]
        rate: u64,
        #[arg(long, default_value_t = 50)]
        symbols: u32,
        #[arg(long, default_value = "30 seconds", value_parser = parse_interval)]
        sample_every: Interval,
        /// Chunk width (tiered after two widths, dropped after three).
        #[arg(long, default_value = "5 minutes", value_parser = parse_interval)]
        chunk_interval: Interval,
        #[arg(long)]
        json: bool,
    },
    /// Catch-up rows/s of lakets vs pg_recvlogical over the same backlog, text and binary.
    Catchup {
        #[arg(long, default_value_t = 2_000_000)]
        rows: u64,
        #[arg(long, default_value_t = 1)]
        repetitions: usize,
        /// Print the JSON report instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Aggregate rows/s of two PostgreSQL clusters mirroring into one shared Delta table
    /// (fan-in) against one cluster alone, in one run.
    Fanin {
        /// Backlog rows per cluster.
        #[arg(long, default_value_t = 1_000_000)]
        rows: u64,
        #[arg(long, default_value_t = 2)]
        repetitions: usize,
        /// Print the JSON report instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Rollup refresh time with the same invalidations on a 1x and a 10x table, and the
    /// apply rates of the LVC and invalidation operators.
    Rollup {
        /// Hours of history of the small table (the large one has ten times more).
        #[arg(long, default_value_t = 4)]
        hours: i32,
        #[arg(long, default_value_t = 10)]
        symbols: i32,
        /// Late ticks written per repetition (into both tables).
        #[arg(long, default_value_t = 200)]
        late_ticks: i32,
        #[arg(long, default_value_t = 5)]
        repetitions: usize,
        /// Rows of the backlog for the operator apply rates.
        #[arg(long, default_value_t = 500_000)]
        backlog_rows: u64,
        #[arg(long)]
        json: bool,
    },
    /// Rows/s of `lakets ingest`'s two writers, COPY and a multi-row INSERT, interleaved.
    Ingest {
        /// Rows per batch (one statement or one COPY each).
        #[arg(long, default_value_t = 1000)]
        batch_rows: usize,
        /// Seconds of writing per method.
        #[arg(long, default_value_t = 20.0)]
        seconds: f64,
        #[arg(long)]
        json: bool,
    },
    /// The initial copy into Delta (`sync enable`, by 1 and by N readers of one exported
    /// snapshot) against `COPY (SELECT ...) TO STDOUT` of the same rows into nothing.
    Snapshot {
        /// Table sizes, one measurement each (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "1000000,10000000")]
        rows: Vec<u64>,
        /// Readers of the copy, one run each (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
        readers: Vec<usize>,
        #[arg(long)]
        json: bool,
    },
    /// Updates and deletes through the Delta mirror, copy-on-write against deletion
    /// vectors: changes/s until durable, bytes written per changed row, peak RSS.
    Mutations {
        /// Table sizes (rows of history), one set of runs each (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "250000,1000000")]
        rows: Vec<u64>,
        /// Changes per backlog.
        #[arg(long, default_value_t = 1_000_000)]
        changes: u64,
        #[arg(long)]
        json: bool,
    },
    /// Insert latency into the current chunk, alone and while the durability gate holds
    /// an old chunk of the same table locked.
    Gate {
        #[arg(long, default_value_t = 2000)]
        inserts: usize,
        #[arg(long)]
        json: bool,
    },
    /// Peak memory of mirroring a one-row delete into one compacted file, against decoding
    /// that file whole, each in a fresh process.
    DeleteMemory {
        /// Rows of the file.
        #[arg(long, default_value_t = 4_000_000)]
        rows: u64,
        /// Print the JSON report instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// One measurement of `bench delete-memory`, in a fresh process (internal).
    #[command(hide = true)]
    DeleteProbe {
        #[arg(long)]
        location: String,
        #[arg(long)]
        rows: u64,
        #[arg(long, value_parser = ["delete", "whole"])]
        mode: String,
    },
    /// Commit -> received / stored in the LVC / committed to Delta, p50/p99/max, at a
    /// fixed ingest rate.
    Freshness {
        /// Target ingest rate, rows per second.
        #[arg(long, default_value_t = 50_000)]
        rate: u64,
        /// Rows per transaction.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
        txn_rows: u64,
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        /// The operators' flush interval.
        #[arg(long, default_value = "1 second", value_parser = parse_interval)]
        flush_interval: Interval,
        /// Print the JSON report instead of the table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum SlotCommand {
    /// Position, retained WAL and state of the slot.
    Show {
        /// Default: lakets_<database>.
        #[arg(long)]
        slot: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Drop the slot (refused while it holds unconfirmed changes, unless --force).
    Drop {
        slot: String,
        #[arg(long, default_value = lakets::wal::slot::DEFAULT_PUBLICATION)]
        publication: String,
        /// Drop even if changes not yet stored by every operator would be lost.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum ChronotableCommand {
    /// Convert an existing table into a ChronoTable, in place (create_chronotable).
    Create {
        /// The table, as [schema.]name.
        table: String,
        /// The timestamptz, timestamp or date column to partition by.
        #[arg(long)]
        time_column: String,
        /// Length of each chunk: a fixed interval such as '1 hour' or '7 days'.
        #[arg(long, value_parser = parse_interval, default_value = "7 days")]
        chunk_interval: Interval,
        /// Future chunks to keep pre-created.
        #[arg(long, default_value_t = DEFAULT_PREMAKE)]
        premake: i32,
    },
    /// Pre-create the rolling window of chunks (_ensure_partitions); all tables by default.
    EnsurePartitions {
        table: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// List chunks with range, status, row count and size (show_chunks).
    ShowChunks {
        table: String,
        /// Print a JSON array of objects named like lakets._chunk_metadata's columns.
        #[arg(long)]
        json: bool,
        /// Include dropped chunks.
        #[arg(long)]
        all: bool,
    },
    /// Change the interval of future chunks (set_chunk_interval).
    SetInterval {
        table: String,
        #[arg(value_parser = parse_interval)]
        interval: Interval,
    },
    /// Drop chunks entirely older than an age (drop_chunks).
    DropChunks {
        table: String,
        #[arg(long, value_parser = parse_interval)]
        older_than: Interval,
        #[arg(long)]
        json: bool,
    },
    /// Remove the ChronoTable, its chunks and everything lakets registered for it.
    Drop { table: String },
    /// Set the replica identity of the table and of every chunk (PostgreSQL does not pass
    /// `ALTER TABLE ... REPLICA IDENTITY` on to partitions): `full` or `default`.
    ReplicaIdentity {
        table: String,
        identity: String,
        #[arg(long)]
        json: bool,
    },
}

pub fn parse_interval(text: &str) -> Result<Interval, String> {
    Interval::parse(text).map_err(|e| e.to_string())
}
