//! `lakets init`: install or upgrade the lakets schema.

use crate::context::Context;

pub async fn run(ctx: &Context) -> anyhow::Result<()> {
    let mut client = ctx.connect().await?;
    let applied = lakets::catalog::migrate(&mut client).await?;
    let version = lakets::catalog::latest_version();
    if applied.is_empty() {
        println!("lakets schema is up to date (version {version})");
    } else {
        println!("lakets schema installed at version {version} (applied {applied:?})");
    }
    Ok(())
}
