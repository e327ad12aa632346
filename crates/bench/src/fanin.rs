//! `lakets bench fanin`: two PostgreSQL clusters mirror into one Delta table (fan-in,
//! `sync enable --source`), against one of them alone, in one run. Each cluster holds a
//! backlog of N stock ticks (1,000-row transactions) in a slot of its own; the service's
//! pipeline (every operator, Delta stored) drains one cluster's alone, then both at once,
//! each into its own source of the shared table. Repeated with the order swapped.
//!
//! On one host the two clusters, their walsenders and both pipelines share its cores, so
//! this measures what the shared table costs (the commits of two writers meeting, each
//! moved past the other's), not what more hosts would add.

use std::time::Instant;

use serde::Serialize;

use crate::error::{Error, PgResultExt, Result};

#[derive(Debug, Clone)]
pub struct FaninOptions {
    /// Backlog rows per cluster.
    pub rows: u64,
    pub repetitions: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct FaninMeasurement {
    /// Clusters mirroring at once.
    pub sources: usize,
    pub repetition: usize,
    /// Rows drained in all (every source's backlog).
    pub rows: u64,
    pub seconds: f64,
    pub rows_per_second: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct FaninReport {
    pub rows_per_source: u64,
    pub repetitions: usize,
    pub measurements: Vec<FaninMeasurement>,
    /// Best aggregate rate of two sources into the one table over the best rate of one
    /// source alone.
    pub two_over_one: f64,
    /// Files in the shared table afterwards, per source (each source's own partition).
    pub files_per_source: Vec<(String, u64)>,
    pub machine: String,
}

const SOURCES: [&str; 2] = ["a", "b"];

pub async fn fanin(options: &FaninOptions) -> Result<FaninReport> {
    let lake = tempfile::tempdir().map_err(|e| Error::io("creating a temporary directory", e))?;
    let location = lake.path().join("stock_ticks").display().to_string();
    let mut clusters = Vec::new();
    for source in SOURCES {
        let (pg, url, client) = super::stock_ticks_database(super::History::None).await?;
        let db = crate::db::parse_config(&url)?;
        lakets_core::coldtier::sync::enable_sync_with_readers(
            &db,
            "stock_ticks",
            &location,
            crate::delta::schema::Partitioning::Day,
            Some(source),
            Default::default(),
            lakets_core::coldtier::sync::DEFAULT_READERS,
            |_| {},
        )
        .await?;
        lakets_core::catalog::replication::ensure_publication(&client, "lakets").await?;
        // The benchmark streams from slots of its own.
        super::drop_slot(
            &client,
            &crate::wal::slot::default_slot_name("lakets_bench"),
        )
        .await?;
        clusters.push((pg, db, client));
    }

    let mut measurements = Vec::new();
    for rep in 0..options.repetitions {
        let mut rounds = [1usize, 2];
        if rep % 2 == 1 {
            rounds.reverse();
        }
        for sources in rounds {
            let taking_part = &clusters[..sources];
            let slot = format!("bench_fanin_{sources}_{rep}");
            let mut ends = Vec::new();
            for (_, _, client) in taking_part {
                super::create_slot(client, &slot).await?;
                ends.push(super::catchup::write_backlog(client, options.rows).await?);
            }
            for (_, _, client) in taking_part {
                super::settle_backlog(client).await?;
            }
            let started = Instant::now();
            let drains = taking_part
                .iter()
                .zip(&ends)
                .map(|((_, db, _), end)| super::catchup::run_lakets(db, &slot, true, *end, None));
            let seen = futures_util::future::try_join_all(drains).await?;
            let seconds = started.elapsed().as_secs_f64();
            if let Some(short) = seen.iter().find(|&&n| n < options.rows) {
                return Err(Error::Operator(format!(
                    "a source saw {short} changes of a {}-row backlog",
                    options.rows
                )));
            }
            let rows = options.rows * sources as u64;
            measurements.push(FaninMeasurement {
                sources,
                repetition: rep,
                rows,
                seconds,
                rows_per_second: rows as f64 / seconds,
            });
            for (_, _, client) in taking_part {
                super::drop_slot(client, &slot).await?;
                // No slot streams now: the TRUNCATE reaches no mirror.
                client
                    .batch_execute("TRUNCATE stock_ticks")
                    .await
                    .pg_context(|| "truncating the backlog".into())?;
            }
        }
    }
    let best = |sources: usize| {
        measurements
            .iter()
            .filter(|m| m.sources == sources)
            .map(|m| m.rows_per_second)
            .fold(0.0, f64::max)
    };
    let two_over_one = best(2) / best(1);

    let table = crate::delta::table::open(&crate::delta::table::parse_location(&location)?)
        .await?
        .ok_or_else(|| Error::Operator("the shared Delta table is gone".into()))?;
    let mut files_per_source = Vec::new();
    for source in SOURCES {
        let files = crate::delta::read::source_files(&table, Some(source)).await?;
        files_per_source.push((source.to_string(), files.len() as u64));
    }
    for (pg, _, client) in clusters {
        drop(client);
        tokio::task::spawn_blocking(move || drop(pg))
            .await
            .map_err(|e| Error::Embedded(e.to_string()))?;
    }
    Ok(FaninReport {
        rows_per_source: options.rows,
        repetitions: options.repetitions,
        measurements,
        two_over_one,
        files_per_source,
        machine: super::catchup::machine_description(),
    })
}

/// A human-readable table of a fan-in report.
pub fn fanin_table(report: &FaninReport) -> String {
    let mut out = format!(
        "fan-in: backlogs of {} rows per cluster (1,000-row transactions) into one shared \
         Delta table, every operator on, binary protocol; {} repetition(s), {}\n\n",
        report.rows_per_source, report.repetitions, report.machine
    );
    out.push_str(&format!(
        "{:<10} {:>4} {:>10} {:>10} {:>12}\n",
        "sources", "rep", "rows", "seconds", "rows/s"
    ));
    for m in &report.measurements {
        out.push_str(&format!(
            "{:<10} {:>4} {:>10} {:>10.2} {:>12.0}\n",
            m.sources, m.repetition, m.rows, m.seconds, m.rows_per_second
        ));
    }
    out.push_str(&format!(
        "\ntwo sources into one table / one source alone (aggregate rows/s, best of each): \
         {:.2}x\nfiles per source afterwards: {}\n",
        report.two_over_one,
        report
            .files_per_source
            .iter()
            .map(|(s, n)| format!("{s} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    out
}
