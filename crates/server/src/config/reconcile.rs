//! Makes the database match the config, idempotently: creates what is missing (ChronoTable
//! conversion, Last Value Cache, Delta sync, policy, rollups), applies what is safe to
//! change in place (future chunk interval, policy intervals), and reports the rest as drift
//! without touching it (a different time column, LVC key, sync target or rollup definition
//! needs a deliberate drop and re-create; objects absent from the config are left alone).

use serde::Serialize;
use tokio_postgres::Client;
use tracing::{info, warn};

use super::{Config, RollupSpec, TableSpec};
use crate::error::{Error, Result};
use crate::ident::{TableName, parse_identifier};
use lakets_core::catalog::registry;
use lakets_core::chronotable::{self, CreateOptions};
use lakets_core::rollup;

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ReconcileReport {
    pub created: Vec<String>,
    pub changed: Vec<String>,
    /// Differences left as they are, each saying how to resolve it.
    pub drift: Vec<String>,
    pub unchanged: usize,
}

impl ReconcileReport {
    fn log(&self) {
        for c in &self.created {
            info!(what = %c, "config: created");
        }
        for c in &self.changed {
            info!(what = %c, "config: changed");
        }
        for d in &self.drift {
            warn!(what = %d, "config: drift left unchanged");
        }
    }
}

/// Brings the database in line with `config` (installs the lakets schema first).
pub async fn reconcile(db: &crate::db::DbConfig, config: &Config) -> Result<ReconcileReport> {
    let mut client = crate::db::connect_with(db).await?;
    lakets_core::catalog::migrate(&mut client).await?;
    let mut report = ReconcileReport::default();
    let mut managed = Vec::new();
    for (n, spec) in config.tables.iter().enumerate() {
        let table = chronotable::introspect::resolve_table(&client, &spec.name)
            .await
            .map_err(|e| match e {
                Error::NotFound { .. } => Error::invalid(format!(
                    "config tables[{n}]: table {} does not exist; create it first (lakets \
                     manages existing tables, it does not design them)",
                    spec.name
                )),
                e => e,
            })?;
        reconcile_table(db, &mut client, &table, spec, &mut report).await?;
        managed.push(table);
    }
    for ct in registry::list_chronotables(&client).await? {
        if !managed.contains(&ct.table) && !config.tables.is_empty() {
            report.drift.push(format!(
                "ChronoTable {} is not in the config (left as it is)",
                ct.table
            ));
        }
    }
    reconcile_rollups(&mut client, &config.rollups, &mut report).await?;
    report.log();
    Ok(report)
}

async fn reconcile_table(
    db: &crate::db::DbConfig,
    client: &mut Client,
    table: &TableName,
    spec: &TableSpec,
    report: &mut ReconcileReport,
) -> Result<()> {
    let quoted = table.quoted();
    let time_column = parse_identifier(&spec.time_column)?;
    match registry::get_chronotable(&*client, table).await? {
        None => {
            let mut options = CreateOptions::new(time_column.clone());
            options.chunk_interval = spec.chunk_interval;
            options.premake = spec.premake;
            let r = chronotable::create_chronotable(client, &quoted, &options).await?;
            report.created.push(format!(
                "ChronoTable {table} on {time_column} with {} chunks ({} rows moved into {} chunks)",
                spec.chunk_interval,
                r.rows_copied,
                r.chunks.len()
            ));
        }
        Some(ct) => {
            if ct.time_column != time_column {
                report.drift.push(format!(
                    "{table} is partitioned by {:?}, the config says {:?}; a ChronoTable's \
                     time column cannot change in place",
                    ct.time_column, time_column
                ));
            }
            if ct.chunk_interval != spec.chunk_interval {
                chronotable::set_chunk_interval(client, &quoted, spec.chunk_interval).await?;
                report.changed.push(format!(
                    "chunk interval of {table}: {} -> {} (future chunks)",
                    ct.chunk_interval, spec.chunk_interval
                ));
            } else {
                report.unchanged += 1;
            }
            if ct.premake != spec.premake {
                report.drift.push(format!(
                    "{table} pre-creates {} chunks, the config says {}",
                    ct.premake, spec.premake
                ));
            }
        }
    }

    if let Some(lvc) = &spec.lvc {
        let keys: Vec<String> = lvc
            .key
            .iter()
            .map(|c| parse_identifier(c))
            .collect::<Result<_>>()?;
        let values: Vec<String> = lvc
            .columns
            .iter()
            .map(|c| parse_identifier(c))
            .collect::<Result<_>>()?;
        let existing = lakets_core::lvc::list_lvc(&*client)
            .await?
            .into_iter()
            .find(|c| &c.table == table);
        match existing {
            None => {
                let c = lakets_core::lvc::enable_lvc(client, &quoted, &keys, &values).await?;
                report
                    .created
                    .push(format!("Last Value Cache of {table} in {}", c.cache_table));
            }
            Some(c) if c.key_columns == keys && c.value_columns == values => report.unchanged += 1,
            Some(c) => report.drift.push(format!(
                "the Last Value Cache of {table} has key [{}] and columns [{}], the config \
                 says [{}] and [{}]; drop {} and restart to re-create it",
                c.key_columns.join(", "),
                c.value_columns.join(", "),
                keys.join(", "),
                values.join(", "),
                c.cache_table
            )),
        }
    }

    if let Some(sync) = &spec.sync {
        let location = crate::delta::table::parse_location(&sync.to)?;
        let partitioning = crate::delta::schema::Partitioning::parse(&sync.partition_by)?;
        match lakets_core::coldtier::sync::find_sync(&*client, table).await? {
            Some(s) if s.state == lakets_core::coldtier::sync::SyncState::Active => {
                if s.location != location
                    || s.partitioning != partitioning
                    || s.source != sync.source
                {
                    let source = |n: &Option<String>| {
                        n.as_ref()
                            .map_or(String::new(), |n| format!(", as source {n}"))
                    };
                    report.drift.push(format!(
                        "{table} is synced to {} (by {}{}), the config says {} (by {}{}); \
                         `lakets sync disable` then restart to sync to the new place",
                        crate::delta::table::display_location(&s.location),
                        s.partitioning.as_str(),
                        source(&s.source),
                        crate::delta::table::display_location(&location),
                        partitioning.as_str(),
                        source(&sync.source)
                    ));
                } else if let Some(missing) = missing_features(&s, sync).await? {
                    report.drift.push(format!(
                        "the Delta table of {table} lacks {missing}, which the config asks \
                         for; `lakets sync upgrade {table}` with the feature's flag turns it on"
                    ));
                } else {
                    report.unchanged += 1;
                }
            }
            _ => {
                info!(table = %table, to = %sync.to, "config: copying the table into Delta");
                let s = lakets_core::coldtier::sync::enable_sync_with_readers(
                    db,
                    &quoted,
                    &sync.to,
                    partitioning,
                    sync.source.as_deref(),
                    lakets_core::coldtier::sync::Features {
                        change_data_feed: sync.change_data_feed,
                        deletion_vectors: sync.deletion_vectors,
                    },
                    lakets_core::coldtier::sync::DEFAULT_READERS,
                    |p| info!(table = %table, rows = p.rows, "config: copy progress"),
                )
                .await?;
                report.created.push(format!(
                    "sync of {table} to {} ({} rows copied)",
                    crate::delta::table::display_location(&s.location),
                    s.rows_copied
                ));
            }
        }
    }

    if let Some(policy) = &spec.policy {
        let current = lakets_core::lifecycle::policy::list_policies(&*client)
            .await?
            .into_iter()
            .find(|p| &p.table == table);
        let same = current.as_ref().is_some_and(|p| {
            p.tier_after == policy.tier_after && p.drop_after == policy.drop_after
        });
        if same {
            report.unchanged += 1;
        } else {
            lakets_core::lifecycle::policy::set_policy(
                &*client,
                &quoted,
                policy.tier_after,
                policy.drop_after,
            )
            .await?;
            let line = format!(
                "policy of {table}: tier after {}, drop after {}",
                policy.tier_after.map_or("-".into(), |i| i.to_string()),
                policy.drop_after.map_or("-".into(), |i| i.to_string())
            );
            if current.is_some() {
                report.changed.push(line);
            } else {
                report.created.push(line);
            }
        }
    }
    Ok(())
}

/// Creates the missing rollups, sources first (a rollup may read one listed after it).
async fn reconcile_rollups(
    client: &mut Client,
    specs: &[RollupSpec],
    report: &mut ReconcileReport,
) -> Result<()> {
    let names: Vec<String> = specs
        .iter()
        .map(|r| parse_identifier(&r.name))
        .collect::<Result<_>>()?;
    let mut done = vec![false; specs.len()];
    while done.iter().any(|d| !d) {
        let mut progressed = false;
        for (i, spec) in specs.iter().enumerate() {
            if done[i] {
                continue;
            }
            let source = parse_identifier(&spec.source).ok();
            let waits_for_listed = source.as_ref().is_some_and(|s| {
                names
                    .iter()
                    .enumerate()
                    .any(|(j, n)| n == s && !done[j] && j != i)
            });
            if waits_for_listed {
                continue;
            }
            reconcile_rollup(client, spec, report).await?;
            done[i] = true;
            progressed = true;
        }
        if !progressed {
            return Err(Error::invalid(
                "config: the rollups' sources form a cycle (a rollup reads itself through others)",
            ));
        }
    }
    let existing = rollup::list_rollups(&*client).await?;
    for r in existing {
        if !names.contains(&r.name) && !specs.is_empty() {
            report.drift.push(format!(
                "rollup {} is not in the config (left as it is)",
                r.name
            ));
        }
    }
    Ok(())
}

async fn reconcile_rollup(
    client: &mut Client,
    spec: &RollupSpec,
    report: &mut ReconcileReport,
) -> Result<()> {
    let name = parse_identifier(&spec.name)?;
    let group_by: Vec<String> = spec
        .group_by
        .iter()
        .map(|c| parse_identifier(c))
        .collect::<Result<_>>()?;
    match rollup::find_rollup(&*client, &name).await {
        Ok(existing) => {
            let source_matches = match &existing.source {
                rollup::Source::Rollup { name, .. } => {
                    parse_identifier(&spec.source).is_ok_and(|s| &s == name)
                }
                rollup::Source::Table { table, .. } => {
                    chronotable::introspect::resolve_table(&*client, &spec.source)
                        .await
                        .is_ok_and(|t| &t == table)
                }
            };
            let normalized = |s: &str| {
                s.chars()
                    .filter(|c| !c.is_whitespace())
                    .collect::<String>()
                    .to_ascii_lowercase()
            };
            let same = source_matches
                && existing.bucket() == spec.bucket
                && existing.group_by == group_by
                && normalized(&existing.aggregate) == normalized(&spec.aggregate)
                && existing.refresh_lag == spec.refresh_lag;
            if same {
                report.unchanged += 1;
            } else {
                report.drift.push(format!(
                    "rollup {name} differs from the config (source, bucket {}, group by [{}], \
                     {}, refresh_lag {}); `lakets rollup drop {name}` and restart to re-create it",
                    existing.bucket(),
                    existing.group_by.join(", "),
                    existing.aggregate,
                    existing.refresh_lag
                ));
            }
        }
        Err(Error::NotFound { .. }) => {
            let r = rollup::create_rollup(
                client,
                &rollup::CreateRollup {
                    name: name.clone(),
                    source: spec.source.clone(),
                    bucket: spec.bucket,
                    group_by,
                    aggregate: spec.aggregate.clone(),
                    refresh_lag: spec.refresh_lag,
                },
            )
            .await?;
            report.created.push(format!(
                "rollup {} <- {} ({} buckets)",
                r.name,
                spec.source,
                r.bucket()
            ));
        }
        Err(e) => return Err(e),
    }
    Ok(())
}

/// The features `spec` asks for that the sync's Delta table lacks ("Change Data Feed and
/// deletion vectors"), or `None`.
async fn missing_features(
    sync: &lakets_core::coldtier::sync::SyncConfig,
    spec: &super::SyncSpec,
) -> crate::error::Result<Option<String>> {
    if !spec.change_data_feed && !spec.deletion_vectors {
        return Ok(None);
    }
    let Some(protocol) = lakets_core::coldtier::sync::delta_protocol(sync).await? else {
        return Ok(None);
    };
    let missing: Vec<&str> = [
        (
            spec.change_data_feed && !protocol.change_data_feed,
            "Change Data Feed",
        ),
        (
            spec.deletion_vectors && !protocol.deletion_vectors,
            "deletion vectors",
        ),
    ]
    .into_iter()
    .filter_map(|(m, name)| m.then_some(name))
    .collect();
    Ok((!missing.is_empty()).then(|| missing.join(" and ")))
}
