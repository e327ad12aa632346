//! `lakets tier` and `lakets retention`: chunks moved through the durability gate, one
//! at a time; deferred chunks say why.

use anyhow::bail;
use lakets::interval::Interval;
use lakets::lifecycle::{GateSettings, MoveReport};

use crate::context::{Context, Shutdown};
use crate::output::{Format, Render};

pub async fn tier(
    ctx: &Context,
    table: Option<&str>,
    chunk: Option<&str>,
    wait: Interval,
    format: Format,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let db = ctx.database_config()?;
    let report = tokio::select! {
        r = lakets::lifecycle::tier(&db, table, chunk, settings(wait), None) => r?,
        _ = shutdown => bail!("interrupted; the chunk being checked was left unchanged"),
    };
    format.print(&Moves {
        report,
        verb: "tiered",
    })
}

pub async fn retention(
    ctx: &Context,
    table: Option<&str>,
    wait: Interval,
    format: Format,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let db = ctx.database_config()?;
    let report = tokio::select! {
        r = lakets::lifecycle::retention(&db, table, settings(wait), None) => r?,
        _ = shutdown => bail!("interrupted; the chunk being checked was left unchanged"),
    };
    format.print(&Moves {
        report,
        verb: "dropped",
    })
}

fn settings(wait: Interval) -> GateSettings {
    GateSettings {
        wait: wait.as_std(),
        ..Default::default()
    }
}

/// A move report with the verb its text uses; as JSON, the report itself.
struct Moves {
    report: MoveReport,
    verb: &'static str,
}

impl serde::Serialize for Moves {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.report.serialize(serializer)
    }
}

impl Render for Moves {
    fn text(&self) -> String {
        let (report, verb) = (&self.report, self.verb);
        let mut out = String::new();
        for chunk in &report.moved {
            out += &format!("{verb} {chunk}\n");
        }
        for (chunk, reason) in &report.deferred {
            out += &format!("deferred {chunk}: {reason}\n");
        }
        if report.moved.is_empty() && report.deferred.is_empty() {
            out += "nothing to do\n";
        }
        out
    }
}
