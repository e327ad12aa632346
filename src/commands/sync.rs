//! `lakets sync enable|show|disable`: a ChronoTable mirrored into a Delta table.

use lakets::sync::{SyncConfig, SyncState};

use crate::args::SyncCommand;
use crate::context::Context;
use crate::output::{self, Format, Render};

pub async fn run(ctx: &Context, cmd: &SyncCommand) -> anyhow::Result<()> {
    match cmd {
        SyncCommand::Enable {
            table,
            to,
            partition_by,
            source,
            readers,
        } => {
            let db = ctx.database_config()?;
            let partitioning = lakets::delta::schema::Partitioning::parse(partition_by)?;
            let config = lakets::sync::enable_sync_with_readers(
                &db,
                table,
                to,
                partitioning,
                source.as_deref(),
                usize::from(*readers),
                |p| match p.estimate {
                    Some(total) if total > 0 => eprintln!(
                        "copied {} of about {} rows ({:.0}%)",
                        p.rows,
                        total,
                        100.0 * p.rows as f64 / total as f64
                    ),
                    _ => eprintln!("copied {} rows", p.rows),
                },
            )
            .await?;
            println!(
                "{} is synced to {} (partitioned by {}{}; {} rows copied at {}); `lakets run` \
                 mirrors every later change",
                config.table,
                lakets::delta::table::display_location(&config.location),
                config.partitioning.as_str(),
                shared_as(&config),
                config.rows_copied,
                output::or_dash(config.start_lsn)
            );
        }
        SyncCommand::Show { json } => {
            let client = ctx.connect().await?;
            lakets::catalog::check_installed(&client).await?;
            let syncs = lakets::sync::list_syncs(&client).await?;
            Format::json(*json).print(&syncs)?;
        }
        SyncCommand::Disable { table } => {
            let mut client = ctx.connect().await?;
            lakets::catalog::check_installed(&client).await?;
            lakets::sync::disable_sync(&mut client, table).await?;
            println!("{table} is no longer synced; its Delta table is kept");
        }
    }
    Ok(())
}

impl Render for Vec<SyncConfig> {
    fn text(&self) -> String {
        output::lines(self, "no synced tables", |s| {
            format!(
                "{}: {} -> {} (partitioned by {}{}; snapshot at {}; {} rows copied)",
                s.table,
                match s.state {
                    SyncState::Active => "active",
                    SyncState::Copying => "copying",
                },
                lakets::delta::table::display_location(&s.location),
                s.partitioning.as_str(),
                shared_as(s),
                output::or_dash(s.start_lsn),
                s.rows_copied
            )
        })
    }
}

/// ", shared as source NAME" for a table several clusters share.
fn shared_as(s: &SyncConfig) -> String {
    s.source
        .as_ref()
        .map_or(String::new(), |name| format!(", shared as source {name}"))
}
