//! One module per command; [`dispatch`] routes the parsed arguments to it. The demo is
//! all in [`lakets::demo`].

#[cfg(feature = "devtools")]
mod bench;
mod chronotable;
mod config;
#[cfg(feature = "devtools")]
mod ingest;
mod init;
mod lifecycle;
mod lvc;
mod policy;
mod resync;
mod rollup;
mod run;
mod slot;
mod status;
mod sync;
mod verify;

use crate::args::Command;
use crate::context::{Context, Shutdown};
use crate::output::Format;

pub async fn dispatch(command: &Command, ctx: &Context, shutdown: Shutdown) -> anyhow::Result<()> {
    match command {
        Command::Init => init::run(ctx).await,
        Command::Chronotable(cmd) => chronotable::run(ctx, cmd, shutdown).await,
        Command::Run { config, overrides } => {
            run::run(ctx, config.as_deref(), overrides, shutdown).await
        }
        Command::Status { config, json } => {
            status::run(ctx, config.as_deref(), Format::json(*json)).await
        }
        Command::Config(cmd) => config::run(ctx, cmd).await,
        #[cfg(feature = "devtools")]
        Command::Ingest {
            symbols,
            rate,
            burst,
            duration,
            method,
            json,
        } => {
            let profile = lakets::ingest::IngestProfile {
                symbols: *symbols,
                rate: *rate,
                burst: *burst,
            };
            ingest::run(
                ctx,
                profile,
                *duration,
                *method,
                Format::json(*json),
                shutdown,
            )
            .await
        }
        Command::Verify { table, json, wait } => {
            verify::run(ctx, table, *wait, Format::json(*json)).await
        }
        Command::Resync { force, json } => resync::run(ctx, *force, Format::json(*json)).await,
        Command::Policy(cmd) => policy::run(ctx, cmd).await,
        Command::Tier {
            table,
            chunk,
            wait,
            json,
        } => {
            let (table, chunk) = (table.as_deref(), chunk.as_deref());
            lifecycle::tier(ctx, table, chunk, *wait, Format::json(*json), shutdown).await
        }
        Command::Retention { table, wait, json } => {
            let table = table.as_deref();
            lifecycle::retention(ctx, table, *wait, Format::json(*json), shutdown).await
        }
        Command::Lvc(cmd) => lvc::run(ctx, cmd).await,
        Command::Rollup(cmd) => rollup::run(ctx, cmd).await,
        Command::Sync(cmd) => {
            tokio::select! {
                result = sync::run(ctx, cmd) => result,
                _ = shutdown => anyhow::bail!("interrupted; run the same command again to finish"),
            }
        }
        Command::Slot(cmd) => slot::run(ctx, cmd).await,
        #[cfg(feature = "devtools")]
        Command::Bench(cmd) => bench::run(cmd).await,
        #[cfg(feature = "devtools")]
        Command::Demo {
            duration,
            data_dir,
            history_hours,
            symbols,
            rate,
        } => {
            let options = lakets::demo::DemoOptions {
                database_url: ctx.database_url()?,
                data_dir: data_dir.clone(),
                duration: duration.map(lakets::interval::Interval::as_std),
                history_hours: (*history_hours).clamp(0, 24 * 7),
                symbols: (*symbols).clamp(1, 10_000),
                rate: *rate,
            };
            lakets::demo::run(options, shutdown).await?;
            Ok(())
        }
    }
}
