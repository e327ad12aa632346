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
            // Rendered first: a config that cannot be written out fails the check.
            let toml = toml::to_string(&config)?;
            format.print(&Effective {
                config: &config,
                toml,
            })?;
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

/// The effective config (file, environment and flags merged): as JSON the config itself,
/// as text its TOML.
struct Effective<'a> {
    config: &'a Config,
    toml: String,
}

impl serde::Serialize for Effective<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.config.serialize(serializer)
    }
}

impl Render for Effective<'_> {
    fn text(&self) -> String {
        self.toml.clone()
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
