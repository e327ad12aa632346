//! `lakets config check|apply`: validate the config, or reconcile the database with it
//! without starting the service.

use lakets::config::Config;
use lakets::config::reconcile::ReconcileReport;

use crate::args::ConfigCommand;
use crate::context::Context;
use crate::output::{Format, Render};

pub async fn run(ctx: &Context, cmd: &ConfigCommand) -> anyhow::Result<()> {
    match cmd {
        ConfigCommand::Check { config, json } => {
            let config = ctx.load_config(config.as_deref(), None)?;
            let format = Format::json(*json);
            format.print(&config)?;
            if !format.is_json() {
                eprintln!(
                    "config OK: {} table(s), {} rollup(s)",
                    config.tables.len(),
                    config.rollups.len()
                );
            }
        }
        ConfigCommand::Apply { config, json } => {
            let config = ctx.load_config(config.as_deref(), None)?;
            let db = config.database_config()?;
            let report = lakets::config::reconcile::reconcile(&db, &config).await?;
            Format::json(*json).print(&report)?;
        }
    }
    Ok(())
}

impl Render for Config {
    /// The effective config as TOML (file, environment and flags merged).
    fn text(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot render the config: {e}\n"))
    }
}

impl Render for ReconcileReport {
    fn text(&self) -> String {
        let mut out = String::new();
        for c in &self.created {
            out += &format!("created: {c}\n");
        }
        for c in &self.changed {
            out += &format!("changed: {c}\n");
        }
        for d in &self.drift {
            out += &format!("drift (left unchanged): {d}\n");
        }
        out += &format!("{} item(s) already as configured\n", self.unchanged);
        out
    }
}
