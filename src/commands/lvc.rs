//! `lakets lvc enable|get|disable`: the Last Value Cache of a ChronoTable.

use anyhow::bail;

use crate::args::LvcCommand;
use crate::context::Context;

pub async fn run(ctx: &Context, cmd: &LvcCommand) -> anyhow::Result<()> {
    let mut client = ctx.connect().await?;
    match cmd {
        LvcCommand::Enable {
            table,
            key,
            columns,
        } => {
            let config = lakets::lvc::enable_lvc(&mut client, table, key, columns).await?;
            println!(
                "Last Value Cache of {} enabled in {} (key {}; columns {})",
                config.table,
                config.cache_table,
                config.key_columns.join(", "),
                config.value_columns.join(", ")
            );
        }
        LvcCommand::Get { table, key } => match lakets::lvc::get_lvc(&client, table, key).await? {
            Some(row) => println!("{row}"),
            None => bail!("no cached row for key {}", key.join(", ")),
        },
        LvcCommand::Disable { table } => {
            lakets::lvc::disable_lvc(&mut client, table).await?;
            println!("the Last Value Cache of {table} is dropped");
        }
    }
    Ok(())
}
