//! `lakets bench ...`: end-to-end benchmarks on an embedded PostgreSQL, each figure a ratio
//! measured in one run ([`lakets::bench`]).

use anyhow::{Context as _, bail};
use lakets::bench::memory::DeleteMemory;
use lakets::bench::{
    CatchupReport, FaninReport, FreshnessReport, GateReport, MutationsReport, RollupBenchReport,
    SnapshotReport, SoakReport, SuiteReport, WritePathReport,
};
use lakets::ingest::MethodComparison;

use crate::args::BenchCommand;
use crate::output::{Format, Render};

pub async fn run(cmd: &BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::All {
            quick,
            catchup_rows,
            write_seconds,
            freshness_rate,
            memory_rows,
            sustain_seconds,
            output,
            json,
        } => {
            let mut options = if *quick {
                lakets::bench::SuiteOptions::quick()
            } else {
                lakets::bench::SuiteOptions::full()
            };
            if let Some(rows) = catchup_rows {
                options.catchup.rows = (*rows).max(1000);
            }
            if let Some(seconds) = write_seconds {
                options.write.seconds = seconds.max(0.5);
            }
            if let Some(rate) = freshness_rate {
                options.freshness.rate = (*rate).max(1000);
            }
            if let Some(rows) = memory_rows {
                options.memory_rows = (*rows).max(1000);
            }
            if let Some(seconds) = sustain_seconds {
                options.sustained.seconds = (*seconds).max(3);
            }
            let report = lakets::bench::suite(&options).await?;
            if let Some(path) = output {
                let text = serde_json::to_string_pretty(&report)?;
                std::fs::write(path, text + "\n")
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            Format::json(*json).print(&report)?;
        }
        BenchCommand::Soak {
            duration,
            rate,
            symbols,
            sample_every,
            chunk_interval,
            json,
        } => {
            if duration.is_zero()
                || sample_every.is_zero()
                || chunk_interval.as_std().as_secs() < 60
            {
                bail!(
                    "--duration and --sample-every must be positive and --chunk-interval at least a minute"
                );
            }
            let report = lakets::bench::soak(&lakets::bench::SoakOptions {
                duration: duration.as_std(),
                rate: (*rate).max(1),
                symbols: (*symbols).max(1),
                sample_every: sample_every.as_std(),
                chunk_interval: *chunk_interval,
            })
            .await?;
            Format::json(*json).print(&report)?;
            if !report.verify_ok {
                std::process::exit(1);
            }
        }
        BenchCommand::Catchup {
            rows,
            repetitions,
            json,
        } => {
            let report = lakets::bench::catchup(&lakets::bench::CatchupOptions {
                rows: *rows,
                repetitions: (*repetitions).max(1),
            })
            .await?;
            Format::json(*json).print(&report)?;
        }
        BenchCommand::Fanin {
            rows,
            repetitions,
            json,
        } => {
            let report = lakets::bench::fanin(&lakets::bench::FaninOptions {
                rows: (*rows).max(1000),
                repetitions: (*repetitions).max(1),
            })
            .await?;
            Format::json(*json).print(&report)?;
        }
        BenchCommand::Rollup {
            hours,
            symbols,
            late_ticks,
            repetitions,
            backlog_rows,
            json,
        } => {
            let report = lakets::bench::rollup_bench(&lakets::bench::RollupBenchOptions {
                hours: (*hours).max(1),
                symbols: (*symbols).max(1),
                late_ticks: (*late_ticks).max(1),
                repetitions: (*repetitions).max(1),
                backlog_rows: *backlog_rows,
            })
            .await?;
            Format::json(*json).print(&report)?;
        }
        BenchCommand::Ingest {
            batch_rows,
            seconds,
            json,
        } => {
            let pg = tokio::task::spawn_blocking(|| {
                lakets::embedded::EmbeddedPostgres::start(Default::default())
            })
            .await??;
            let url = pg.create_database("lakets_bench").await?;
            let db = lakets::db::parse_config(&url)?;
            let report =
                lakets::ingest::compare_methods(&db, (*batch_rows).max(1), seconds.max(1.0))
                    .await?;
            Format::json(*json).print(&report)?;
        }
        BenchCommand::DeleteMemory { rows, json } => {
            let report = lakets::bench::memory::delete_into_compacted((*rows).max(1000)).await?;
            Format::json(*json).print(&report)?;
        }
        BenchCommand::DeleteProbe {
            location,
            rows,
            mode,
        } => {
            let mode = match mode.as_str() {
                "delete" => lakets::bench::memory::ProbeMode::Delete,
                _ => lakets::bench::memory::ProbeMode::Whole,
            };
            println!(
                "{}",
                serde_json::to_string_pretty(
                    &lakets::bench::memory::delete_probe(location, *rows, mode).await?
                )?
            );
        }
        BenchCommand::Snapshot {
            rows,
            readers,
            json,
        } => {
            let report = lakets::bench::snapshot(&lakets::bench::SnapshotOptions {
                rows: rows.iter().map(|r| (*r).max(1000)).collect(),
                readers: readers.iter().map(|r| (*r).max(1)).collect(),
            })
            .await?;
            Format::json(*json).print(&report)?;
        }
        BenchCommand::Mutations {
            rows,
            changes,
            json,
        } => {
            let report = lakets::bench::mutations(&lakets::bench::MutationsOptions {
                rows: rows.iter().map(|r| (*r).max(1000)).collect(),
                changes: (*changes).max(1000),
            })
            .await?;
            Format::json(*json).print(&report)?;
        }
        BenchCommand::Gate { inserts, json } => {
            let report = lakets::bench::gate(*inserts).await?;
            Format::json(*json).print(&report)?;
        }
        BenchCommand::WritePath {
            writers,
            seconds,
            repetitions,
            latency_rate,
            json,
        } => {
            let report = lakets::bench::write_path(&lakets::bench::WritePathOptions {
                writers: writers.iter().map(|w| (*w).max(1)).collect(),
                seconds: seconds.max(0.5),
                repetitions: (*repetitions).max(1),
                latency_rate: (*latency_rate).max(1000),
            })
            .await?;
            Format::json(*json).print(&report)?;
        }
        BenchCommand::Freshness {
            rate,
            txn_rows,
            seconds,
            flush_interval,
            json,
        } => {
            let report = lakets::bench::freshness(&lakets::bench::FreshnessOptions {
                rate: *rate,
                seconds: *seconds,
                flush_interval: flush_interval.as_std(),
                txn_rows: *txn_rows,
            })
            .await?;
            Format::json(*json).print(&report)?;
        }
    }
    Ok(())
}

/// Each report reads as the table its benchmark prints.
macro_rules! rendered_by {
    ($($report:ty => $table:path),* $(,)?) => {
        $(impl Render for $report {
            fn text(&self) -> String {
                $table(self)
            }
        })*
    };
}

rendered_by! {
    SuiteReport => lakets::bench::suite_table,
    SoakReport => lakets::bench::soak_table,
    CatchupReport => lakets::bench::catchup_table,
    FaninReport => lakets::bench::fanin_table,
    RollupBenchReport => lakets::bench::rollup_bench_table,
    DeleteMemory => lakets::bench::memory::delete_table,
    GateReport => lakets::bench::gate_table,
    MutationsReport => lakets::bench::mutations_table,
    SnapshotReport => lakets::bench::snapshot_table,
    WritePathReport => lakets::bench::write_path_table,
    FreshnessReport => lakets::bench::freshness_table,
}

impl Render for MethodComparison {
    fn text(&self) -> String {
        format!(
            "batches of {} rows: COPY {:.0} rows/s, INSERT ... SELECT unnest {:.0} rows/s; \
             COPY/INSERT {:.2}x\n",
            self.batch_rows,
            self.copy_rows_per_second,
            self.insert_rows_per_second,
            self.copy_over_insert
        )
    }
}
