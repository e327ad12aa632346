//! `lakets policy set|show`: tiered retention policies (add_tiered_retention_policy).

use lakets::lifecycle::policy::Policy;

use crate::args::PolicyCommand;
use crate::context::Context;
use crate::output::{self, Format, Render};

pub async fn run(ctx: &Context, cmd: &PolicyCommand) -> anyhow::Result<()> {
    let client = ctx.connect().await?;
    match cmd {
        PolicyCommand::Set {
            table,
            tier_after,
            drop_after,
        } => {
            let p = lakets::lifecycle::policy::set_policy(&client, table, *tier_after, *drop_after)
                .await?;
            println!("{}", line(&p));
        }
        PolicyCommand::Show { json } => {
            lakets::catalog::check_installed(&client).await?;
            let policies = lakets::lifecycle::policy::list_policies(&client).await?;
            Format::json(*json).print(&policies)?;
        }
    }
    Ok(())
}

fn line(p: &Policy) -> String {
    format!(
        "{}: tier after {}, drop after {}{}",
        p.table,
        output::or_dash(p.tier_after),
        output::or_dash(p.drop_after),
        if p.synced { " (synced)" } else { "" }
    )
}

impl Render for Vec<Policy> {
    fn text(&self) -> String {
        output::lines(self, "no policies", line)
    }
}
