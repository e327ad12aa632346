//! `lakets verify`: the Delta table, the rollups and the Last Value Cache against the table;
//! exits non-zero and names the first differences when anything disagrees.

use anyhow::bail;
use lakets::verify::VerifyReport;

use crate::context::Context;
use crate::output::{Format, Render};

pub async fn run(ctx: &Context, table: &str, format: Format) -> anyhow::Result<()> {
    let client = ctx.connect().await?;
    let report = lakets::verify::verify(&client, table).await?;
    format.print(&report)?;
    if !report.ok {
        let first: Vec<_> = report.differences.iter().take(5).cloned().collect();
        bail!("{} disagrees: {}", report.table, first.join("; "));
    }
    if !format.is_json() {
        println!("{}: everything agrees", report.table);
    }
    Ok(())
}

fn mark(ok: bool) -> &'static str {
    if ok { "ok  " } else { "DIFF" }
}

impl Render for VerifyReport {
    fn text(&self) -> String {
        let mut out = String::new();
        for c in &self.chunks {
            out += &format!(
                "{} {}: PostgreSQL {} rows, Delta {} rows\n",
                mark(c.ok),
                c.chunk,
                c.postgres_rows,
                c.delta_rows
            );
        }
        for r in &self.rollups {
            out += &format!(
                "{} rollup {}: {} differing row(s) below watermark {}\n",
                mark(r.ok),
                r.rollup,
                r.differing_rows,
                r.watermark.as_deref().unwrap_or("(none)")
            );
        }
        if let Some(n) = self.lvc_differences {
            out += &format!("{} Last Value Cache: {n} differing row(s)\n", mark(n == 0));
        }
        out
    }
}
