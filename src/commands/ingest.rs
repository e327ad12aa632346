//! `lakets ingest`: synthetic stock ticks into `stock_ticks` (the spec's stream_ticks).

use lakets::ingest::{IngestOptions, IngestProfile, IngestReport, Method};
use lakets::interval::Interval;

use crate::context::{Context, Shutdown};
use crate::output::{Format, Render};

pub async fn run(
    ctx: &Context,
    profile: IngestProfile,
    duration: Option<Interval>,
    method: Method,
    format: Format,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let db = ctx.database_config()?;
    let options = IngestOptions {
        profile,
        duration: duration.map(Interval::as_std),
        method,
        progress: !format.is_json(),
    };
    let report = lakets::ingest::run(&db, options, shutdown).await?;
    format.print(&report)
}

impl Render for IngestReport {
    fn text(&self) -> String {
        format!(
            "wrote {} ticks in {:.1} s ({:.0} rows/s, {:?})\n",
            self.rows, self.seconds, self.rows_per_second, self.method
        )
    }
}
