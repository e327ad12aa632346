//! `lakets rollup create|show|drop|refresh`: incrementally refreshed aggregates forming a DAG.

use lakets::rollup::{self, Rollup, refresh::RefreshReport};

use crate::args::RollupCommand;
use crate::context::Context;
use crate::output::{self, Format, Render};

pub async fn run(ctx: &Context, cmd: &RollupCommand) -> anyhow::Result<()> {
    let mut client = ctx.connect().await?;
    let client = &mut client;
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
            Format::json(*json).print(&rollups)?;
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
            Format::json(*json).print(&reports)?;
        }
    }
    Ok(())
}

impl Render for Vec<Rollup> {
    fn text(&self) -> String {
        output::lines(self, "no rollups", |r| {
            let source = match &r.source {
                rollup::Source::Table { table, .. } => table.to_string(),
                rollup::Source::Rollup { name, .. } => format!("rollup {name}"),
            };
            format!(
                "{} <- {source}: bucket {}, group by [{}], {}; watermark {}, {} pending \
                 invalidation(s), refresh_lag {}",
                r.name,
                r.bucket(),
                r.group_by.join(", "),
                r.aggregate,
                r.watermark
                    .map(rollup::format_micros)
                    .unwrap_or_else(|| "(none)".into()),
                r.pending_invalidations,
                r.refresh_lag
            )
        })
    }
}

impl Render for Vec<RefreshReport> {
    fn text(&self) -> String {
        output::lines(self, "no rollups", |r| match &r.skipped {
            Some(why) => format!("{}: skipped, {why}", r.rollup),
            None => format!(
                "{}: watermark {} -> {}, {} invalidation(s) consumed, {} range(s) \
                 re-aggregated, {} row(s) written in {:.1} ms",
                r.rollup,
                r.watermark_before.as_deref().unwrap_or("(none)"),
                r.watermark_after.as_deref().unwrap_or("(none)"),
                r.invalidations_consumed,
                r.ranges_recomputed,
                r.rows_written,
                r.duration_ms
            ),
        })
    }
}
