//! `lakets verify`: the Delta table, the rollups and the Last Value Cache against the table;
//! exits non-zero and names the first differences when anything disagrees.

use anyhow::bail;
use lakets::verify::VerifyReport;

use crate::context::Context;
use crate::output::{Format, Render};

pub async fn run(ctx: &Context, table: &str, wait: u64, format: Format) -> anyhow::Result<()> {
    let client = ctx.connect().await?;
    let streams = if wait > 0 {
        lakets::verify::wait_for_streams(&client, std::time::Duration::from_secs(wait)).await?
    } else {
        Vec::new()
    };
    let mut report = lakets::verify::verify(&client, table).await?;
    report.streams = streams;
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
        for s in &self.streams {
            let confirmed = s.confirmed_lsn.as_deref().unwrap_or("(none)");
            out += &match (s.active, s.reached) {
                (_, true) => format!(
                    "ok   stream {}: stored through {confirmed} (verify began at {})\n",
                    s.slot, s.target_lsn
                ),
                (true, false) => format!(
                    "wait stream {}: stored through {confirmed} only, verify began at {}: \
                     differences may be rows not stored yet\n",
                    s.slot, s.target_lsn
                ),
                (false, false) => format!(
                    "note stream {}: no service streams from it; compared as stored \
                     (through {confirmed})\n",
                    s.slot
                ),
            };
        }
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
