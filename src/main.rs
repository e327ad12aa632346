//! The `lakets` command line: a thin layer over the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use lakets::chronotable::{self, CreateOptions, DEFAULT_PREMAKE};
use lakets::interval::Interval;

#[derive(Parser, Debug)]
#[command(
    name = "lakets",
    version,
    about = "Time-series on PostgreSQL with a Delta Lake cold tier"
)]
struct Cli {
    /// PostgreSQL URL (postgres://user@host:port/db). Falls back to DATABASE_URL. Put
    /// passwords in PGPASSWORD or LAKETS_DATABASE_PASSWORD_FILE, not on the command line.
    #[arg(
        long,
        global = true,
        env = "LAKETS_DATABASE_URL",
        hide_env_values = true
    )]
    database_url: Option<String>,

    /// Log format on stderr.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "pretty",
        env = "LAKETS_LOG_FORMAT"
    )]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum LogFormat {
    Pretty,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
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
    #[command(subcommand)]
    Bench(BenchCommand),
    /// The stock-tick demo on an embedded PostgreSQL (or --database-url).
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
struct RunOverrides {
    /// Replication slot name (service.slot; default lakets_<database>).
    #[arg(long)]
    slot: Option<String>,
    /// Publication name (service.publication).
    #[arg(long)]
    publication: Option<String>,
    /// Receive values in text format instead of binary (service.protocol = "text").
    #[arg(long)]
    text_protocol: bool,
    /// Do not run the scheduled jobs (jobs.enabled = false).
    #[arg(long)]
    no_jobs: bool,
    /// Partition manager interval (jobs.partitions_every; 0 disables it).
    #[arg(long, value_parser = parse_interval)]
    partitions_every: Option<Interval>,
    /// Rollup cascade refresh interval (jobs.rollups_every).
    #[arg(long, value_parser = parse_interval)]
    rollups_every: Option<Interval>,
    /// Tiering interval (jobs.tiering_every).
    #[arg(long, value_parser = parse_interval)]
    tiering_every: Option<Interval>,
    /// Retention interval (jobs.retention_every).
    #[arg(long, value_parser = parse_interval)]
    retention_every: Option<Interval>,
    /// Delta maintenance interval (jobs.maintenance_every).
    #[arg(long, value_parser = parse_interval)]
    maintenance_every: Option<Interval>,
    /// Metrics and probes address (http.listen; `off` disables).
    #[arg(long, alias = "metrics-addr")]
    http_listen: Option<String>,
    /// gRPC address (grpc.listen; `off` disables).
    #[arg(long)]
    grpc_listen: Option<String>,
}

impl RunOverrides {
    fn apply(&self, c: &mut lakets::config::Config) {
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
enum ConfigCommand {
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
enum PolicyCommand {
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
enum LvcCommand {
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
enum RollupCommand {
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
enum SyncCommand {
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
    },
    /// List synced tables: location, state, snapshot position, Delta version.
    Show {
        #[arg(long)]
        json: bool,
    },
    /// Stop mirroring a table (its Delta table is kept).
    Disable { table: String },
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
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
enum SlotCommand {
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
enum ChronotableCommand {
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

fn parse_interval(text: &str) -> Result<Interval, String> {
    Interval::parse(text).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    lakets::install_crypto_provider();
    let matches = Cli::command().get_matches();
    let from_argv = matches.value_source("database_url") == Some(ValueSource::CommandLine);
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let mut log_format = cli.log_format;
    if matches.value_source("log_format") == Some(ValueSource::DefaultValue)
        && let Command::Run {
            config: Some(path), ..
        } = &cli.command
        && let Ok(config) = lakets::config::Config::load(Some(path))
        && config.log.format == lakets::config::LogFormat::Json
    {
        log_format = LogFormat::Json;
    }
    init_logging(log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli, from_argv)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            let user_error = err
                .downcast_ref::<lakets::Error>()
                .is_some_and(lakets::Error::is_user_error);
            ExitCode::from(if user_error { 2 } else { 1 })
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LAKETS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,lakets=info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Pretty => builder.compact().init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn database_url(cli: &Cli, from_argv: bool) -> anyhow::Result<Option<String>> {
    let url = cli
        .database_url
        .clone()
        .or_else(|| std::env::var("DATABASE_URL").ok());
    if let Some(url) = &url
        && from_argv
        && lakets::db::url_has_password(url)
    {
        bail!(
            "--database-url contains a password, which would be visible to every user of \
                 this machine (ps, shell history); pass it in PGPASSWORD or \
                 LAKETS_DATABASE_PASSWORD_FILE, or put the whole URL in LAKETS_DATABASE_URL"
        );
    }
    Ok(url)
}

/// The connection settings of the required database.
fn database_config(cli: &Cli, from_argv: bool) -> anyhow::Result<lakets::db::DbConfig> {
    let url = database_url(cli, from_argv)?.context(
        "no database given: pass --database-url or set LAKETS_DATABASE_URL (or DATABASE_URL)",
    )?;
    Ok(lakets::db::parse_config(&url)?)
}

async fn connect(cli: &Cli, from_argv: bool) -> anyhow::Result<tokio_postgres::Client> {
    Ok(lakets::db::connect_with(&database_config(cli, from_argv)?).await?)
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

async fn run(cli: Cli, from_argv: bool) -> anyhow::Result<()> {
    let shutdown = shutdown_signal()?;
    match &cli.command {
        Command::Init => {
            let mut client = connect(&cli, from_argv).await?;
            let applied = lakets::catalog::migrate(&mut client).await?;
            if applied.is_empty() {
                println!(
                    "lakets schema is up to date (version {})",
                    lakets::catalog::latest_version()
                );
            } else {
                println!(
                    "lakets schema installed at version {} (applied {:?})",
                    lakets::catalog::latest_version(),
                    applied
                );
            }
        }
        Command::Chronotable(cmd) => {
            // On Ctrl-C the command is dropped mid-flight: the connection closes and
            // PostgreSQL rolls back whatever transaction was open.
            tokio::select! {
                result = async {
                    let db = database_config(&cli, from_argv)?;
                    let mut client = lakets::db::connect_with(&db).await?;
                    run_chronotable(&db, &mut client, cmd).await
                } => result?,
                _ = shutdown => bail!("interrupted; the open transaction was rolled back"),
            }
        }
        Command::Run { config, overrides } => {
            let config = load_config(&cli, from_argv, config.as_deref(), Some(overrides))?;
            // Refused before the catalog is touched, not only before anything binds.
            config.check_listeners()?;
            let db = config.database_config()?;
            lakets::config::reconcile::reconcile(&db, &config).await?;
            let cancel = tokio_util::sync::CancellationToken::new();
            let service = lakets::service::start(&config, db, cancel.clone()).await?;
            if let Some(addr) = service.http_addr {
                eprintln!("metrics: http://{addr}/metrics");
            }
            if let Some(addr) = service.grpc_addr {
                eprintln!("gRPC: {addr}");
            }
            tokio::spawn(async move {
                shutdown.await;
                cancel.cancel();
            });
            service.wait().await?;
        }
        Command::Status { config, json } => {
            let config = load_config(&cli, from_argv, config.as_deref(), None)?;
            let db = config.database_config()?;
            let client = lakets::db::connect_with(&db).await?;
            let slot = lakets::service::slot_name(&config, &db);
            let mut status = lakets::status::collect(&client, &slot, None).await?;
            overlay_live_status(&config, &mut status).await;
            if *json {
                print_json(&status)?;
            } else {
                print!("{}", lakets::status::render(&status));
            }
        }
        Command::Config(ConfigCommand::Check { config, json }) => {
            let config = load_config(&cli, from_argv, config.as_deref(), None)?;
            if *json {
                print_json(&config)?;
            } else {
                print!("{}", toml::to_string(&config)?);
                eprintln!(
                    "config OK: {} table(s), {} rollup(s)",
                    config.tables.len(),
                    config.rollups.len()
                );
            }
        }
        Command::Config(ConfigCommand::Apply { config, json }) => {
            let config = load_config(&cli, from_argv, config.as_deref(), None)?;
            let db = config.database_config()?;
            let report = lakets::config::reconcile::reconcile(&db, &config).await?;
            if *json {
                print_json(&report)?;
            } else {
                for c in &report.created {
                    println!("created: {c}");
                }
                for c in &report.changed {
                    println!("changed: {c}");
                }
                for d in &report.drift {
                    println!("drift (left unchanged): {d}");
                }
                println!("{} item(s) already as configured", report.unchanged);
            }
        }
        Command::Ingest {
            symbols,
            rate,
            burst,
            duration,
            method,
            json,
        } => {
            let db = database_config(&cli, from_argv)?;
            let report = lakets::ingest::run(
                &db,
                lakets::ingest::IngestOptions {
                    profile: lakets::ingest::IngestProfile {
                        symbols: *symbols,
                        rate: *rate,
                        burst: *burst,
                    },
                    duration: duration.map(Interval::as_std),
                    method: *method,
                    progress: !*json,
                },
                shutdown,
            )
            .await?;
            if *json {
                print_json(&report)?;
            } else {
                println!(
                    "wrote {} ticks in {:.1} s ({:.0} rows/s, {:?})",
                    report.rows, report.seconds, report.rows_per_second, report.method
                );
            }
        }
        Command::Bench(BenchCommand::All {
            quick,
            catchup_rows,
            write_seconds,
            freshness_rate,
            memory_rows,
            sustain_seconds,
            output,
            json,
        }) => {
            let mut options = if *quick {
                lakets::bench::SuiteOptions::quick()
            } else {
                lakets::bench::SuiteOptions::full()
            };
            if let Some(rows) = catchup_rows {
                options.catchup.rows = (*rows).max(1000);
            }
            if let Some(seconds) = write_seconds {
                options.write.seconds = seconds.max(0.5);
            }
            if let Some(rate) = freshness_rate {
                options.freshness.rate = (*rate).max(1000);
            }
            if let Some(rows) = memory_rows {
                options.memory_rows = (*rows).max(1000);
            }
            if let Some(seconds) = sustain_seconds {
                options.sustained.seconds = (*seconds).max(3);
            }
            let report = lakets::bench::suite(&options).await?;
            if let Some(path) = output {
                let text = serde_json::to_string_pretty(&report)?;
                std::fs::write(path, text + "\n")
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            if *json {
                print_json(&report)?;
            } else {
                print!("{}", lakets::bench::suite_table(&report));
            }
        }
        Command::Bench(BenchCommand::Soak {
            duration,
            rate,
            symbols,
            sample_every,
            chunk_interval,
            json,
        }) => {
            if duration.is_zero()
                || sample_every.is_zero()
                || chunk_interval.as_std().as_secs() < 60
            {
                bail!(
                    "--duration and --sample-every must be positive and --chunk-interval at least a minute"
                );
            }
            let report = lakets::bench::soak(&lakets::bench::SoakOptions {
                duration: duration.as_std(),
                rate: (*rate).max(1),
                symbols: (*symbols).max(1),
                sample_every: sample_every.as_std(),
                chunk_interval: *chunk_interval,
            })
            .await?;
            if *json {
                print_json(&report)?;
            } else {
                print!("{}", lakets::bench::soak_table(&report));
            }
            if !report.verify_ok {
                std::process::exit(1);
            }
        }
        Command::Bench(BenchCommand::Catchup {
            rows,
            repetitions,
            json,
        }) => {
            let report = lakets::bench::catchup(&lakets::bench::CatchupOptions {
                rows: *rows,
                repetitions: (*repetitions).max(1),
            })
            .await?;
            if *json {
                print_json(&report)?;
            } else {
                print!("{}", lakets::bench::catchup_table(&report));
            }
        }
        Command::Bench(BenchCommand::Rollup {
            hours,
            symbols,
            late_ticks,
            repetitions,
            backlog_rows,
            json,
        }) => {
            let report = lakets::bench::rollup_bench(&lakets::bench::RollupBenchOptions {
                hours: (*hours).max(1),
                symbols: (*symbols).max(1),
                late_ticks: (*late_ticks).max(1),
                repetitions: (*repetitions).max(1),
                backlog_rows: *backlog_rows,
            })
            .await?;
            if *json {
                print_json(&report)?;
            } else {
                print!("{}", lakets::bench::rollup_bench_table(&report));
            }
        }
        Command::Bench(BenchCommand::Ingest {
            batch_rows,
            seconds,
            json,
        }) => {
            let pg = tokio::task::spawn_blocking(|| {
                lakets::embedded::EmbeddedPostgres::start(Default::default())
            })
            .await??;
            let url = pg.create_database("lakets_bench").await?;
            let db = lakets::db::parse_config(&url)?;
            let report =
                lakets::ingest::compare_methods(&db, (*batch_rows).max(1), seconds.max(1.0))
                    .await?;
            if *json {
                print_json(&report)?;
            } else {
                println!(
                    "batches of {} rows: COPY {:.0} rows/s, INSERT ... SELECT unnest {:.0} rows/s; COPY/INSERT {:.2}x",
                    report.batch_rows,
                    report.copy_rows_per_second,
                    report.insert_rows_per_second,
                    report.copy_over_insert
                );
            }
        }
        Command::Bench(BenchCommand::DeleteMemory { rows, json }) => {
            let report = lakets::bench::memory::delete_into_compacted((*rows).max(1000)).await?;
            if *json {
                print_json(&report)?;
            } else {
                print!("{}", lakets::bench::memory::delete_table(&report));
            }
        }
        Command::Bench(BenchCommand::DeleteProbe {
            location,
            rows,
            mode,
        }) => {
            let mode = match mode.as_str() {
                "delete" => lakets::bench::memory::ProbeMode::Delete,
                _ => lakets::bench::memory::ProbeMode::Whole,
            };
            print_json(&lakets::bench::memory::delete_probe(location, *rows, mode).await?)?;
        }
        Command::Bench(BenchCommand::Gate { inserts, json }) => {
            let report = lakets::bench::gate(*inserts).await?;
            if *json {
                print_json(&report)?;
            } else {
                print!("{}", lakets::bench::gate_table(&report));
            }
        }
        Command::Bench(BenchCommand::WritePath {
            writers,
            seconds,
            repetitions,
            latency_rate,
            json,
        }) => {
            let report = lakets::bench::write_path(&lakets::bench::WritePathOptions {
                writers: writers.iter().map(|w| (*w).max(1)).collect(),
                seconds: seconds.max(0.5),
                repetitions: (*repetitions).max(1),
                latency_rate: (*latency_rate).max(1000),
            })
            .await?;
            if *json {
                print_json(&report)?;
            } else {
                print!("{}", lakets::bench::write_path_table(&report));
            }
        }
        Command::Bench(BenchCommand::Freshness {
            rate,
            txn_rows,
            seconds,
            flush_interval,
            json,
        }) => {
            let report = lakets::bench::freshness(&lakets::bench::FreshnessOptions {
                rate: *rate,
                seconds: *seconds,
                flush_interval: flush_interval.as_std(),
                txn_rows: *txn_rows,
            })
            .await?;
            if *json {
                print_json(&report)?;
            } else {
                print!("{}", lakets::bench::freshness_table(&report));
            }
        }
        Command::Resync { force, json } => {
            let report = lakets::resync::resync(&database_config(&cli, from_argv)?, *force).await?;
            if *json {
                print_json(&report)?;
            } else {
                for g in &report.gaps {
                    println!("gap closed: slot {} was {}", g.slot_name, g.reason);
                }
                for slot in &report.slots_created {
                    println!("slot {slot} created: the stream resumes from here");
                }
                for t in &report.tables {
                    println!(
                        "{}: {} hot rows re-copied into Delta (stream from {}), {} dropped \
                         chunk range(s) kept",
                        t.table, t.rows, t.start_lsn, t.kept_ranges
                    );
                }
                for c in &report.caches {
                    println!("{}: Last Value Cache refilled, {} keys", c.table, c.keys);
                }
                for r in &report.rollups {
                    println!("rollup {r}: hot range invalidated, the next refresh recomputes it");
                }
                println!("resync done; start `lakets run` again");
            }
        }
        Command::Verify { table, json } => {
            let client = connect(&cli, from_argv).await?;
            let report = lakets::verify::verify(&client, table).await?;
            if *json {
                print_json(&report)?;
            } else {
                for c in &report.chunks {
                    println!(
                        "{} {}: PostgreSQL {} rows, Delta {} rows",
                        if c.ok { "ok  " } else { "DIFF" },
                        c.chunk,
                        c.postgres_rows,
                        c.delta_rows
                    );
                }
                for r in &report.rollups {
                    println!(
                        "{} rollup {}: {} differing row(s) below watermark {}",
                        if r.ok { "ok  " } else { "DIFF" },
                        r.rollup,
                        r.differing_rows,
                        r.watermark.as_deref().unwrap_or("(none)")
                    );
                }
                if let Some(n) = report.lvc_differences {
                    println!(
                        "{} Last Value Cache: {n} differing row(s)",
                        if n == 0 { "ok  " } else { "DIFF" }
                    );
                }
            }
            if !report.ok {
                bail!(
                    "{} disagrees: {}",
                    report.table,
                    report
                        .differences
                        .iter()
                        .take(5)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join("; ")
                );
            }
            if !*json {
                println!("{}: everything agrees", report.table);
            }
        }
        Command::Policy(cmd) => {
            let client = connect(&cli, from_argv).await?;
            match cmd {
                PolicyCommand::Set {
                    table,
                    tier_after,
                    drop_after,
                } => {
                    let p = lakets::lifecycle::policy::set_policy(
                        &client,
                        table,
                        *tier_after,
                        *drop_after,
                    )
                    .await?;
                    println!("{}", policy_line(&p));
                }
                PolicyCommand::Show { json } => {
                    lakets::catalog::check_installed(&client).await?;
                    let policies = lakets::lifecycle::policy::list_policies(&client).await?;
                    if *json {
                        print_json(&policies)?;
                    } else if policies.is_empty() {
                        println!("no policies");
                    } else {
                        for p in policies {
                            println!("{}", policy_line(&p));
                        }
                    }
                }
            }
        }
        Command::Tier {
            table,
            chunk,
            wait,
            json,
        } => {
            let db = database_config(&cli, from_argv)?;
            let settings = lakets::lifecycle::GateSettings {
                wait: wait.as_std(),
                ..Default::default()
            };
            let report = tokio::select! {
                r = lakets::lifecycle::tier(&db, table.as_deref(), chunk.as_deref(), settings, None) => r?,
                _ = shutdown => bail!("interrupted; the chunk being checked was left unchanged"),
            };
            print_move_report(&report, "tiered", *json)?;
        }
        Command::Retention { table, wait, json } => {
            let db = database_config(&cli, from_argv)?;
            let settings = lakets::lifecycle::GateSettings {
                wait: wait.as_std(),
                ..Default::default()
            };
            let report = tokio::select! {
                r = lakets::lifecycle::retention(&db, table.as_deref(), settings, None) => r?,
                _ = shutdown => bail!("interrupted; the chunk being checked was left unchanged"),
            };
            print_move_report(&report, "dropped", *json)?;
        }
        Command::Lvc(cmd) => {
            let mut client = connect(&cli, from_argv).await?;
            match cmd {
                LvcCommand::Enable {
                    table,
                    key,
                    columns,
                } => {
                    let config = lakets::lvc::enable_lvc(&mut client, table, key, columns).await?;
                    println!(
                        "Last Value Cache of {} enabled in {} (key {}; columns {})",
                        config.table,
                        config.cache_table,
                        config.key_columns.join(", "),
                        config.value_columns.join(", ")
                    );
                }
                LvcCommand::Get { table, key } => {
                    match lakets::lvc::get_lvc(&client, table, key).await? {
                        Some(row) => println!("{row}"),
                        None => bail!("no cached row for key {}", key.join(", ")),
                    }
                }
                LvcCommand::Disable { table } => {
                    lakets::lvc::disable_lvc(&mut client, table).await?;
                    println!("the Last Value Cache of {table} is dropped");
                }
            }
        }
        Command::Rollup(cmd) => {
            let mut client = connect(&cli, from_argv).await?;
            run_rollup(&mut client, cmd).await?;
        }
        Command::Sync(cmd) => {
            tokio::select! {
                result = run_sync(&cli, from_argv, cmd) => result?,
                _ = shutdown => bail!("interrupted; run the same command again to finish"),
            }
        }
        Command::Slot(cmd) => {
            let client = connect(&cli, from_argv).await?;
            match cmd {
                SlotCommand::Show { slot, json } => {
                    let slot = match slot {
                        Some(s) => s.clone(),
                        None => {
                            let db: String = client
                                .query_one("SELECT current_database()::text", &[])
                                .await?
                                .get(0);
                            lakets::wal::slot::default_slot_name(&db)
                        }
                    };
                    let state = lakets::wal::slot::slot_state(&client, &slot)
                        .await?
                        .ok_or_else(|| lakets::Error::NotFound {
                            kind: "replication slot",
                            name: slot.clone(),
                        })?;
                    if *json {
                        print_json(&state)?;
                    } else {
                        println!(
                            "slot {}: {} confirmed_flush_lsn={} restart_lsn={} wal_status={} retained={}",
                            state.slot_name,
                            if state.active { "active" } else { "inactive" },
                            state
                                .confirmed_flush_lsn
                                .map(|l| l.to_string())
                                .unwrap_or_else(|| "-".into()),
                            state
                                .restart_lsn
                                .map(|l| l.to_string())
                                .unwrap_or_else(|| "-".into()),
                            state.wal_status.as_deref().unwrap_or("-"),
                            state
                                .retained_bytes
                                .map(lakets::report::human_bytes)
                                .unwrap_or_else(|| "-".into()),
                        );
                    }
                }
                SlotCommand::Drop {
                    slot,
                    publication,
                    force,
                } => {
                    lakets::catalog::replication::drop_slot(&client, slot, publication, *force)
                        .await?;
                    println!("dropped replication slot {slot}");
                }
            }
        }
        Command::Demo {
            duration,
            data_dir,
            history_hours,
            symbols,
            rate,
        } => {
            let options = lakets::demo::DemoOptions {
                database_url: database_url(&cli, from_argv)?,
                data_dir: data_dir.clone(),
                duration: duration.map(Interval::as_std),
                history_hours: (*history_hours).clamp(0, 24 * 7),
                symbols: (*symbols).clamp(1, 10_000),
                rate: *rate,
            };
            lakets::demo::run(options, shutdown).await?;
        }
    }
    Ok(())
}

/// The config: file (if any) < LAKETS_* environment < --database-url < flags.
fn load_config(
    cli: &Cli,
    from_argv: bool,
    path: Option<&std::path::Path>,
    overrides: Option<&RunOverrides>,
) -> anyhow::Result<lakets::config::Config> {
    let mut config = lakets::config::Config::load(path)?;
    if let Some(url) = database_url(cli, from_argv)? {
        config.database.url = Some(url);
    }
    if let Some(o) = overrides {
        o.apply(&mut config);
    }
    config.validate()?;
    Ok(config)
}

/// Adds the running service's live figures (lag in seconds, received position, last
/// error) when its gRPC endpoint answers within a second.
async fn overlay_live_status(
    config: &lakets::config::Config,
    status: &mut lakets::status::ServiceStatus,
) {
    use lakets::grpc::proto::admin_client::AdminClient;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
    let Ok(listen) = config.grpc.listen.parse::<SocketAddr>() else {
        return; // "off"
    };
    // A wildcard listener is reached on this host's loopback.
    let target = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), listen.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), listen.port())
        }
        _ => listen,
    };
    let tls = config.grpc.tls_cert_file.as_ref();
    // The admin token goes only where nobody on the way can read it: over TLS (checked
    // against the service's own certificate chain), or to a loopback address.
    let send_token = tls.is_some() || target.ip().is_loopback();
    let live = async {
        let mut endpoint = tonic::transport::Endpoint::from_shared(format!(
            "{}://{target}",
            if tls.is_some() { "https" } else { "http" }
        ))
        .ok()?
        .connect_timeout(std::time::Duration::from_secs(1));
        if let Some(chain) = tls {
            lakets::install_crypto_provider();
            let pem = std::fs::read(chain).ok()?;
            let domain = if target.ip().is_loopback() {
                "localhost".to_owned()
            } else {
                target.ip().to_string()
            };
            endpoint = endpoint
                .tls_config(
                    tonic::transport::ClientTlsConfig::new()
                        .ca_certificate(tonic::transport::Certificate::from_pem(pem))
                        .domain_name(domain),
                )
                .ok()?;
        }
        let channel = endpoint.connect().await.ok()?;
        let mut request = tonic::Request::new(lakets::grpc::proto::StatusRequest {});
        if send_token && let Ok(Some(token)) = config.admin_token() {
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().ok()?);
        }
        AdminClient::new(channel)
            .status(request)
            .await
            .ok()
            .map(|r| r.into_inner())
    };
    let Ok(Some(live)) = tokio::time::timeout(std::time::Duration::from_secs(2), live).await else {
        return;
    };
    if live.slot != status.slot {
        return;
    }
    status.lag_seconds = Some(live.lag_seconds);
    status.streaming = Some(live.streaming);
    status.received_lsn = live.received_lsn.parse().ok();
    if !live.last_error.is_empty() {
        status.last_error = Some(live.last_error);
    }
}

fn policy_line(p: &lakets::lifecycle::policy::Policy) -> String {
    let or_dash = |i: Option<Interval>| i.map(|i| i.to_string()).unwrap_or_else(|| "-".into());
    format!(
        "{}: tier after {}, drop after {}{}",
        p.table,
        or_dash(p.tier_after),
        or_dash(p.drop_after),
        if p.synced { " (synced)" } else { "" }
    )
}

fn print_move_report(
    report: &lakets::lifecycle::MoveReport,
    verb: &str,
    json: bool,
) -> anyhow::Result<()> {
    if json {
        return print_json(report);
    }
    for chunk in &report.moved {
        println!("{verb} {chunk}");
    }
    for (chunk, reason) in &report.deferred {
        println!("deferred {chunk}: {reason}");
    }
    if report.moved.is_empty() && report.deferred.is_empty() {
        println!("nothing to do");
    }
    Ok(())
}

async fn run_sync(cli: &Cli, from_argv: bool, cmd: &SyncCommand) -> anyhow::Result<()> {
    match cmd {
        SyncCommand::Enable {
            table,
            to,
            partition_by,
        } => {
            let db = database_config(cli, from_argv)?;
            let partitioning = lakets::delta::schema::Partitioning::parse(partition_by)?;
            let config =
                lakets::sync::enable_sync(&db, table, to, partitioning, |p| match p.estimate {
                    Some(total) if total > 0 => eprintln!(
                        "copied {} of about {} rows ({:.0}%)",
                        p.rows,
                        total,
                        100.0 * p.rows as f64 / total as f64
                    ),
                    _ => eprintln!("copied {} rows", p.rows),
                })
                .await?;
            println!(
                "{} is synced to {} (partitioned by {}; {} rows copied at {}); `lakets run` mirrors every later change",
                config.table,
                lakets::delta::table::display_location(&config.location),
                config.partitioning.as_str(),
                config.rows_copied,
                config
                    .start_lsn
                    .map(|l| l.to_string())
                    .unwrap_or_else(|| "-".into())
            );
        }
        SyncCommand::Show { json } => {
            let client = connect(cli, from_argv).await?;
            lakets::catalog::check_installed(&client).await?;
            let syncs = lakets::sync::list_syncs(&client).await?;
            if *json {
                print_json(&syncs)?;
            } else if syncs.is_empty() {
                println!("no synced tables");
            } else {
                for s in syncs {
                    println!(
                        "{}: {} -> {} (partitioned by {}; snapshot at {}; {} rows copied)",
                        s.table,
                        match s.state {
                            lakets::sync::SyncState::Active => "active",
                            lakets::sync::SyncState::Copying => "copying",
                        },
                        lakets::delta::table::display_location(&s.location),
                        s.partitioning.as_str(),
                        s.start_lsn
                            .map(|l| l.to_string())
                            .unwrap_or_else(|| "-".into()),
                        s.rows_copied
                    );
                }
            }
        }
        SyncCommand::Disable { table } => {
            let mut client = connect(cli, from_argv).await?;
            lakets::catalog::check_installed(&client).await?;
            lakets::sync::disable_sync(&mut client, table).await?;
            println!("{table} is no longer synced; its Delta table is kept");
        }
    }
    Ok(())
}

async fn run_chronotable(
    db: &lakets::db::DbConfig,
    client: &mut tokio_postgres::Client,
    cmd: &ChronotableCommand,
) -> anyhow::Result<()> {
    match cmd {
        ChronotableCommand::Create {
            table,
            time_column,
            chunk_interval,
            premake,
        } => {
            let mut options = CreateOptions::new(time_column.clone());
            options.chunk_interval = *chunk_interval;
            options.premake = *premake;
            let report = chronotable::create_chronotable(client, table, &options).await?;
            println!(
                "{} is now a ChronoTable on {:?}: {} rows copied into {} chunks of {}",
                report.table,
                report.time_column,
                report.rows_copied,
                report.chunks.len(),
                report.chunk_interval
            );
        }
        ChronotableCommand::EnsurePartitions { table, json } => {
            let reports = chronotable::ensure_partitions(client, table.as_deref(), None).await?;
            if *json {
                print_json(&reports)?;
            } else {
                for r in &reports {
                    if r.created.is_empty() {
                        println!("{}: window already provisioned", r.table);
                    } else {
                        println!("{}: created {}", r.table, r.created.join(", "));
                    }
                }
            }
        }
        ChronotableCommand::ShowChunks { table, json, all } => {
            let chunks = chronotable::show_chunks(client, table, *all).await?;
            if *json {
                print_json(&chunks)?;
            } else {
                print!("{}", lakets::report::chunks_table(&chunks));
            }
        }
        ChronotableCommand::SetInterval { table, interval } => {
            chronotable::set_chunk_interval(client, table, *interval).await?;
            println!("chunk interval of {table} set to {interval} for future chunks");
        }
        ChronotableCommand::DropChunks {
            table,
            older_than,
            json,
        } => {
            let report = chronotable::drop_chunks(db, table, *older_than, None).await?;
            if *json {
                print_json(&report)?;
            } else {
                println!(
                    "dropped {} chunks: {}",
                    report.dropped.len(),
                    report.dropped.join(", ")
                );
                for (chunk, why) in &report.deferred {
                    println!("not dropped: {chunk}: {why}");
                }
            }
            if !report.deferred.is_empty() {
                bail!("{} chunks could not be dropped", report.deferred.len());
            }
        }
        ChronotableCommand::Drop { table } => {
            let dropped = chronotable::drop_chronotable(client, table).await?;
            println!("dropped ChronoTable {dropped}");
        }
        ChronotableCommand::ReplicaIdentity {
            table,
            identity,
            json,
        } => {
            use lakets::chronotable::replica_identity::{Identity, set_replica_identity};
            let report = set_replica_identity(client, table, Identity::parse(identity)?).await?;
            if *json {
                print_json(&report)?;
            } else {
                println!(
                    "{} and its chunks have REPLICA IDENTITY {} ({} chunks changed)",
                    report.table,
                    identity.to_uppercase(),
                    report.chunks_changed.len()
                );
            }
        }
    }
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM. The handlers are installed when this is called, not when
/// the future is first polled, so a signal during start-up is not lost (nor fatal).
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}

async fn run_rollup(
    client: &mut tokio_postgres::Client,
    cmd: &RollupCommand,
) -> anyhow::Result<()> {
    use lakets::rollup;
    match cmd {
        RollupCommand::Create {
            name,
            source,
            bucket,
            group_by,
            aggregate,
            refresh_lag,
        } => {
            let r = rollup::create_rollup(
                client,
                &rollup::CreateRollup {
                    name: name.clone(),
                    source: source.clone(),
                    bucket: *bucket,
                    group_by: group_by.clone(),
                    aggregate: aggregate.clone(),
                    refresh_lag: *refresh_lag,
                },
            )
            .await?;
            println!(
                "rollup {} created: table {}, real-time view {}; columns {}",
                r.name,
                r.table,
                r.view,
                r.column_list().join(", ")
            );
        }
        RollupCommand::Show { json } => {
            lakets::catalog::check_installed(&*client).await?;
            let rollups = rollup::list_rollups(&*client).await?;
            if *json {
                print_json(&rollups)?;
            } else if rollups.is_empty() {
                println!("no rollups");
            } else {
                for r in rollups {
                    let source = match &r.source {
                        rollup::Source::Table { table, .. } => table.to_string(),
                        rollup::Source::Rollup { name, .. } => format!("rollup {name}"),
                    };
                    println!(
                        "{} <- {source}: bucket {}, group by [{}], {}; watermark {}, {} pending invalidation(s), refresh_lag {}",
                        r.name,
                        r.bucket(),
                        r.group_by.join(", "),
                        r.aggregate,
                        r.watermark
                            .map(rollup::format_micros)
                            .unwrap_or_else(|| "(none)".into()),
                        r.pending_invalidations,
                        r.refresh_lag
                    );
                }
            }
        }
        RollupCommand::Drop { name } => {
            let r = rollup::drop_rollup(client, name).await?;
            println!(
                "rollup {} dropped (table {} and view {})",
                r.name, r.table, r.view
            );
        }
        RollupCommand::Refresh {
            name,
            cascade,
            force,
            json,
        } => {
            let reports =
                rollup::refresh::refresh(client, name.as_deref(), *cascade, *force).await?;
            if *json {
                print_json(&reports)?;
            } else if reports.is_empty() {
                println!("no rollups");
            } else {
                for r in reports {
                    match &r.skipped {
                        Some(why) => println!("{}: skipped, {why}", r.rollup),
                        None => println!(
                            "{}: watermark {} -> {}, {} invalidation(s) consumed, {} range(s) re-aggregated, {} row(s) written in {:.1} ms",
                            r.rollup,
                            r.watermark_before.as_deref().unwrap_or("(none)"),
                            r.watermark_after.as_deref().unwrap_or("(none)"),
                            r.invalidations_consumed,
                            r.ranges_recomputed,
                            r.rows_written,
                            r.duration_ms
                        ),
                    }
                }
            }
        }
    }
    Ok(())
}
