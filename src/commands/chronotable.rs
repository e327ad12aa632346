//! `lakets chronotable ...`: time-partitioned tables and their chunks.

use anyhow::bail;
use lakets::catalog::registry::Chunk;
use lakets::chronotable::replica_identity::{Identity, IdentityReport};
use lakets::chronotable::{self, CreateOptions, DropReport, EnsureReport};

use crate::args::ChronotableCommand;
use crate::context::{Context, Shutdown};
use crate::output::{Format, Render};

pub async fn run(
    ctx: &Context,
    cmd: &ChronotableCommand,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    // On Ctrl-C the command is dropped mid-flight: the connection closes and PostgreSQL
    // rolls back whatever transaction was open.
    tokio::select! {
        result = async {
            let db = ctx.database_config()?;
            let mut client = lakets::db::connect_with(&db).await?;
            execute(&db, &mut client, cmd).await
        } => result,
        _ = shutdown => bail!("interrupted; the open transaction was rolled back"),
    }
}

async fn execute(
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
            Format::json(*json).print(&reports)?;
        }
        ChronotableCommand::ShowChunks { table, json, all } => {
            let chunks = chronotable::show_chunks(client, table, *all).await?;
            Format::json(*json).print(&chunks)?;
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
            Format::json(*json).print(&report)?;
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
            let report = chronotable::replica_identity::set_replica_identity(
                client,
                table,
                Identity::parse(identity)?,
            )
            .await?;
            Format::json(*json).print(&report)?;
        }
    }
    Ok(())
}

impl Render for Vec<EnsureReport> {
    fn text(&self) -> String {
        self.iter()
            .map(|r| {
                if r.created.is_empty() {
                    format!("{}: window already provisioned\n", r.table)
                } else {
                    format!("{}: created {}\n", r.table, r.created.join(", "))
                }
            })
            .collect()
    }
}

impl Render for Vec<Chunk> {
    fn text(&self) -> String {
        lakets::report::chunks_table(self)
    }
}

impl Render for DropReport {
    fn text(&self) -> String {
        let mut out = format!(
            "dropped {} chunks: {}\n",
            self.dropped.len(),
            self.dropped.join(", ")
        );
        for (chunk, why) in &self.deferred {
            out += &format!("not dropped: {chunk}: {why}\n");
        }
        out
    }
}

impl Render for IdentityReport {
    fn text(&self) -> String {
        format!(
            "{} and its chunks have REPLICA IDENTITY {} ({} chunks changed)\n",
            self.table,
            self.identity.sql(),
            self.chunks_changed.len()
        )
    }
}
