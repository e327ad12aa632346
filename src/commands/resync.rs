//! `lakets resync`: close a gap in the WAL stream (run with the service stopped).

use lakets::resync::ResyncReport;

use crate::context::Context;
use crate::output::{Format, Render};

pub async fn run(ctx: &Context, force: bool, format: Format) -> anyhow::Result<()> {
    let report = lakets::resync::resync(&ctx.database_config()?, force).await?;
    format.print(&report)
}

impl Render for ResyncReport {
    fn text(&self) -> String {
        let mut out = String::new();
        for g in &self.gaps {
            out += &format!("gap closed: slot {} was {}\n", g.slot_name, g.reason);
        }
        for slot in &self.slots_created {
            out += &format!("slot {slot} created: the stream resumes from here\n");
        }
        for t in &self.tables {
            out += &format!(
                "{}: {} hot rows re-copied into Delta (stream from {}), {} dropped chunk \
                 range(s) kept\n",
                t.table, t.rows, t.start_lsn, t.kept_ranges
            );
        }
        for c in &self.caches {
            out += &format!("{}: Last Value Cache refilled, {} keys\n", c.table, c.keys);
        }
        for r in &self.rollups {
            out += &format!("rollup {r}: hot range invalidated, the next refresh recomputes it\n");
        }
        out += "resync done; start `lakets run` again\n";
        out
    }
}
