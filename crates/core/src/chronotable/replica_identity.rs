//! The replica identity of a ChronoTable and of every chunk.
//!
//! PostgreSQL logs the old row of an update or delete with the *chunk's* replica identity,
//! and `ALTER TABLE parent REPLICA IDENTITY ...` does not recurse into partitions. A user
//! who sets FULL on the table leaves its chunks at DEFAULT: their old rows carry only the
//! primary key, and whatever reads other columns of them (the rollup invalidations, the
//! Last Value Cache following a key that moved, the mirror matching a row) would guess.
//! So lakets checks every chunk, sets every chunk ([`set_replica_identity`], the command
//! `lakets chronotable replica-identity`), and gives new chunks their table's setting.

use tokio_postgres::{Client, GenericClient};
use tracing::info;

use super::partitions::{apply_replica_identity, ddl_transaction};
use crate::catalog::registry;
use crate::error::{Error, PgResultExt, Result};
use crate::ident::TableName;

/// The identities `lakets chronotable replica-identity` sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Identity {
    /// The primary key.
    Default,
    /// Every column.
    Full,
}

impl Identity {
    pub fn parse(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "default" => Ok(Identity::Default),
            "full" => Ok(Identity::Full),
            other => Err(Error::invalid(format!(
                "unknown replica identity {other:?}: use full or default"
            ))),
        }
    }

    pub fn sql(self) -> &'static str {
        match self {
            Identity::Default => "DEFAULT",
            Identity::Full => "FULL",
        }
    }
}

fn describe(code: &str) -> &'static str {
    match code {
        "d" => "DEFAULT",
        "f" => "FULL",
        "i" => "USING INDEX",
        "n" => "NOTHING",
        _ => "unknown",
    }
}

/// What [`set_replica_identity`] did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct IdentityReport {
    pub table: TableName,
    pub identity: Identity,
    /// Chunks whose identity changed.
    pub chunks_changed: Vec<String>,
}

/// The chunks (attached partitions) of `table` whose replica identity is not the table's,
/// with theirs; and the table's.
async fn differing_chunks(
    client: &impl GenericClient,
    table: &TableName,
) -> Result<(String, Vec<(String, String)>)> {
    let parent: String = client
        .query_one(
            "SELECT relreplident::text FROM pg_class WHERE oid = $1::text::regclass",
            &[&table.quoted()],
        )
        .await
        .pg_context(|| format!("reading the replica identity of {table}"))?
        .get(0);
    let chunks = client
        .query(
            "SELECT c.relname::text, c.relreplident::text
               FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
              WHERE i.inhparent = $1::text::regclass AND c.relreplident::text <> $2
              ORDER BY 1",
            &[&table.quoted(), &parent],
        )
        .await
        .pg_context(|| format!("reading the replica identity of the chunks of {table}"))?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    Ok((parent, chunks))
}

/// Refuses a table whose chunks do not all have its replica identity, naming them and the
/// command that fixes it: what `purpose` reads of old rows would be wrong for theirs.
pub async fn require_chunks_match(
    client: &impl GenericClient,
    table: &TableName,
    purpose: &str,
) -> Result<()> {
    let (parent, differing) = differing_chunks(client, table).await?;
    if differing.is_empty() {
        return Ok(());
    }
    let shown: Vec<String> = differing
        .iter()
        .take(5)
        .map(|(name, id)| format!("{name} ({})", describe(id)))
        .collect();
    Err(Error::invalid(format!(
        "{table} has REPLICA IDENTITY {}, but {} of its chunks do not ({}{}): PostgreSQL logs \
         the old row of an update or delete with each chunk's own setting (ALTER TABLE on the \
         table does not pass it on), so {purpose} would read old rows without the columns it \
         needs. Run `lakets chronotable replica-identity {table} {}` first: it sets the table \
         and every chunk",
        describe(&parent),
        differing.len(),
        shown.join(", "),
        if differing.len() > 5 { ", ..." } else { "" },
        if parent == "f" { "full" } else { "default" }
    )))
}

/// Sets the replica identity of a ChronoTable and of every chunk, in one transaction
/// (chunks created later take the table's, see [`apply_replica_identity`]).
pub async fn set_replica_identity(
    client: &mut Client,
    table: &str,
    identity: Identity,
) -> Result<IdentityReport> {
    crate::catalog::check_installed(&*client).await?;
    let ct = registry::find_chronotable(&*client, table).await?;
    let tx = ddl_transaction(client, &ct.table).await?;
    if identity == Identity::Default {
        let has_key: bool = tx
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_index WHERE indrelid = $1::text::regclass AND indisprimary)",
                &[&ct.table.quoted()],
            )
            .await
            .pg_context(|| format!("looking for the primary key of {}", ct.table))?
            .get(0);
        if !has_key {
            return Err(Error::invalid(format!(
                "{} has no primary key, so REPLICA IDENTITY DEFAULT would log no old row at all \
                 (its updates and deletes could not be streamed); keep FULL",
                ct.table
            )));
        }
    }
    tx.batch_execute(&format!(
        "ALTER TABLE {} REPLICA IDENTITY {}",
        ct.table.quoted(),
        identity.sql()
    ))
    .await
    .pg_context(|| format!("setting the replica identity of {}", ct.table))?;
    let (_, differing) = differing_chunks(&tx, &ct.table).await?;
    let mut changed = Vec::new();
    for (chunk, _) in differing {
        apply_replica_identity(&tx, &ct.table, &ct.table.sibling(chunk.clone())).await?;
        changed.push(chunk);
    }
    tx.commit()
        .await
        .pg_context(|| format!("committing the replica identity of {}", ct.table))?;
    info!(table = %ct.table, identity = identity.sql(), chunks = changed.len(), "replica identity set on the table and its chunks");
    Ok(IdentityReport {
        table: ct.table,
        identity,
        chunks_changed: changed,
    })
}
