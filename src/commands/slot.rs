//! `lakets slot show|drop`: the replication slot.

use lakets::wal::slot::SlotState;

use crate::args::SlotCommand;
use crate::context::Context;
use crate::output::{self, Format, Render};

pub async fn run(ctx: &Context, cmd: &SlotCommand) -> anyhow::Result<()> {
    let client = ctx.connect().await?;
    match cmd {
        SlotCommand::Show { slot, json } => {
            let slot = match slot {
                Some(s) => s.clone(),
                None => {
                    let db: String = client
                        .query_one("SELECT current_database()::text", &[])
                        .await?
                        .get(0);
                    lakets::wal::slot::default_slot_name(&db)
                }
            };
            let state = lakets::wal::slot::slot_state(&client, &slot)
                .await?
                .ok_or_else(|| lakets::Error::NotFound {
                    kind: "replication slot",
                    name: slot.clone(),
                })?;
            Format::json(*json).print(&state)?;
        }
        SlotCommand::Drop {
            slot,
            publication,
            force,
        } => {
            lakets::catalog::replication::drop_slot(&client, slot, publication, *force).await?;
            println!("dropped replication slot {slot}");
        }
    }
    Ok(())
}

impl Render for SlotState {
    fn text(&self) -> String {
        format!(
            "slot {}: {} confirmed_flush_lsn={} restart_lsn={} wal_status={} retained={}\n",
            self.slot_name,
            if self.active { "active" } else { "inactive" },
            output::or_dash(self.confirmed_flush_lsn),
            output::or_dash(self.restart_lsn),
            self.wal_status.as_deref().unwrap_or("-"),
            output::or_dash(self.retained_bytes.map(lakets::report::human_bytes)),
        )
    }
}
