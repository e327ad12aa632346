//! `lakets demo`: the stock-tick demo ([`lakets::demo`]).

use crate::context::Shutdown;

pub async fn run(options: lakets::demo::DemoOptions, shutdown: Shutdown) -> anyhow::Result<()> {
    lakets::demo::run(options, shutdown).await?;
    Ok(())
}
