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
            change_data_feed,
            deletion_vectors,
        } => {
            let db = ctx.database_config()?;
            let partitioning = lakets::delta::schema::Partitioning::parse(partition_by)?;
            let config = lakets::sync::enable_sync_with_readers(
                &db,
                table,
                to,
                partitioning,
                source.as_deref(),
                lakets::sync::Features {
                    change_data_feed: *change_data_feed,
                    deletion_vectors: *deletion_vectors,
                },
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
            let mut syncs = Vec::new();
            for config in lakets::sync::list_syncs(&client).await? {
                // A table that cannot be read now (its store down) is still listed.
                let (delta, delta_error) = match lakets::sync::delta_protocol(&config).await {
                    Ok(p) => (p, None),
                    Err(e) => (None, Some(e.to_string())),
                };
                syncs.push(SyncView {
                    config,
                    delta,
                    delta_error,
                });
            }
            Format::json(*json).print(&syncs)?;
        }
        SyncCommand::Upgrade {
            table,
            change_data_feed,
            deletion_vectors,
        } => {
            let client = ctx.connect().await?;
            lakets::catalog::check_installed(&client).await?;
            let outcome = lakets::sync::upgrade_sync(
                &client,
                table,
                lakets::sync::Features {
                    change_data_feed: *change_data_feed,
                    deletion_vectors: *deletion_vectors,
                },
            )
            .await?;
            match outcome.version {
                Some(v) => println!(
                    "{table}: upgraded at Delta version {v} (protocol {})",
                    outcome.protocol.describe()
                ),
                None => println!(
                    "{table}: nothing to do, the features were on already (protocol {})",
                    outcome.protocol.describe()
                ),
            }
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

/// A synced table with its Delta table's protocol, for `sync show`.
#[derive(serde::Serialize)]
struct SyncView {
    #[serde(flatten)]
    config: SyncConfig,
    /// `null`: no Delta table there yet, or it could not be read (`delta_error`).
    delta: Option<lakets::delta::protocol::ProtocolSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    delta_error: Option<String>,
}

impl Render for Vec<SyncView> {
    fn text(&self) -> String {
        output::lines(self, "no synced tables", |v| {
            let s = &v.config;
            let protocol = match (&v.delta, &v.delta_error) {
                (Some(p), _) => format!("protocol {}", p.describe()),
                (None, Some(e)) => format!("protocol unreadable: {e}"),
                (None, None) => "no Delta table yet".to_owned(),
            };
            format!(
                "{}: {} -> {} (partitioned by {}{}; snapshot at {}; {} rows copied; {})",
                s.table,
                match s.state {
                    SyncState::Active => "active",
                    SyncState::Copying => "copying",
                },
                lakets::delta::table::display_location(&s.location),
                s.partitioning.as_str(),
                shared_as(s),
                output::or_dash(s.start_lsn),
                s.rows_copied,
                protocol
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
