//! `lakets bench all`: every end-to-end figure of the design in one run (each phase on an
//! embedded PostgreSQL of its own), checked against the targets of DESIGN.md, printed as a
//! table and as one JSON report.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::catchup::{CatchupOptions, CatchupReport};
use super::freshness::{FreshnessOptions, FreshnessReport};
use super::memory::MemoryReport;
use super::snapshot::{SnapshotOptions, SnapshotReport};
use super::sustained::{SustainedOptions, SustainedReport};
use super::write_path::{WritePathOptions, WritePathReport};
use crate::error::Result;

#[derive(Debug, Clone)]
pub struct SuiteOptions {
    pub write: WritePathOptions,
    pub catchup: CatchupOptions,
    pub freshness: FreshnessOptions,
    /// The freshness phase runs once per transaction size (the first is the headline).
    pub freshness_txn_rows: Vec<u64>,
    /// N of the memory phase (it also drains 10N).
    pub memory_rows: u64,
    /// Rows of the compacted file the memory phase deletes one row of.
    pub delete_file_rows: u64,
    pub sustained: SustainedOptions,
    pub snapshot: SnapshotOptions,
}

impl SuiteOptions {
    /// The figures of the README: about 15 minutes on 2 cores.
    pub fn full() -> Self {
        SuiteOptions {
            write: WritePathOptions {
                writers: vec![2, 4],
                seconds: 8.0,
                repetitions: 2,
                latency_rate: 10_000,
            },
            catchup: CatchupOptions {
                rows: 1_000_000,
                repetitions: 2,
            },
            freshness: FreshnessOptions {
                rate: 50_000,
                seconds: 30,
                flush_interval: Duration::from_secs(1),
                txn_rows: 1000,
            },
            freshness_txn_rows: vec![1000, 100],
            memory_rows: 200_000,
            delete_file_rows: 4_000_000,
            sustained: SustainedOptions {
                start_rate: 25_000,
                seconds: 60,
                max_steps: 5,
                writers: 4,
            },
            snapshot: SnapshotOptions::default(),
        }
    }

    /// Every phase at a tiny size: checks that the command works, not how fast.
    pub fn quick() -> Self {
        SuiteOptions {
            write: WritePathOptions {
                writers: vec![2, 4],
                seconds: 1.0,
                repetitions: 1,
                latency_rate: 4_000,
            },
            catchup: CatchupOptions {
                rows: 20_000,
                repetitions: 1,
            },
            freshness: FreshnessOptions {
                rate: 5_000,
                seconds: 3,
                flush_interval: Duration::from_millis(500),
                txn_rows: 1000,
            },
            freshness_txn_rows: vec![1000, 100],
            memory_rows: 5_000,
            delete_file_rows: 200_000,
            sustained: SustainedOptions {
                start_rate: 2_000,
                seconds: 4,
                max_steps: 2,
                writers: 2,
            },
            snapshot: SnapshotOptions {
                rows: vec![20_000],
                readers: vec![1, 2],
            },
        }
    }
}

/// A design target and what this run measured.
#[derive(Debug, Clone, Serialize)]
pub struct TargetCheck {
    pub figure: String,
    pub target: String,
    pub measured: String,
    pub met: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct SuiteReport {
    pub machine: String,
    pub postgres: String,
    pub seconds: f64,
    pub write_path: WritePathReport,
    pub catchup: CatchupReport,
    /// One per transaction size.
    pub freshness: Vec<FreshnessReport>,
    pub memory: MemoryReport,
    pub sustained: SustainedReport,
    /// The initial copy against COPY TO STDOUT.
    pub snapshot: SnapshotReport,
    pub targets: Vec<TargetCheck>,
}

pub async fn suite(options: &SuiteOptions) -> Result<SuiteReport> {
    let started = Instant::now();
    let phase = |name: &str| eprintln!("== {name} ({:.0} s)", started.elapsed().as_secs_f64());
    phase("write path: bare, with the service, with the spec's triggers");
    let write_path = super::write_path::write_path(&options.write).await?;
    phase("catch-up: lakets vs pg_recvlogical, text and binary, one slot vs two");
    let catchup = super::catchup(&options.catchup).await?;
    let mut freshness = Vec::new();
    for &txn_rows in &options.freshness_txn_rows {
        phase(&format!(
            "freshness: commit -> LVC visible, -> Delta ({txn_rows}-row transactions)"
        ));
        freshness.push(
            super::freshness(&FreshnessOptions {
                txn_rows,
                ..options.freshness.clone()
            })
            .await?,
        );
    }
    phase("memory: peak RSS over N and 10N rows");
    let memory = super::memory::memory(options.memory_rows, options.delete_file_rows).await?;
    phase("sustained rate");
    let sustained = super::sustained::sustained(&options.sustained).await?;
    phase("initial copy: lakets sync enable vs COPY TO STDOUT");
    let snapshot = super::snapshot::snapshot(&options.snapshot).await?;
    let mut targets = targets(
        &write_path,
        &catchup,
        &freshness,
        &memory,
        &sustained,
        options.freshness.rate,
    );
    for size in &snapshot.sizes {
        let best = size.runs.iter().map(|r| r.ratio).fold(0.0, f64::max);
        targets.push(TargetCheck {
            figure: format!("initial copy of {} rows / COPY TO STDOUT", size.rows),
            target: ">= 0.80x".into(),
            measured: format!("{best:.2}x"),
            met: best >= 0.8,
        });
    }
    Ok(SuiteReport {
        machine: super::catchup::machine_description(),
        postgres: write_path.postgres.clone(),
        seconds: started.elapsed().as_secs_f64(),
        write_path,
        catchup,
        freshness,
        memory,
        sustained,
        snapshot,
        targets,
    })
}

fn targets(
    write: &WritePathReport,
    catchup: &CatchupReport,
    freshness: &[FreshnessReport],
    memory: &MemoryReport,
    sustained: &SustainedReport,
    rate: u64,
) -> Vec<TargetCheck> {
    let mut out = Vec::new();
    if let Some(split) = &write.split {
        out.push(TargetCheck {
            figure: "write path, 2 writers, cores split (decoding on its own core)".into(),
            target: ">= 0.95x".into(),
            measured: format!("{:.2}x", split.lakets_ratio),
            met: split.lakets_ratio >= 0.95,
        });
    }
    for r in &write.ratios {
        out.push(TargetCheck {
            figure: format!(
                "write path, {} writers, service streaming / bare",
                r.writers
            ),
            target: ">= 0.95x".into(),
            measured: format!(
                "{:.2}x (spec triggers: {:.2}x)",
                r.lakets_ratio, r.triggers_ratio
            ),
            met: r.lakets_ratio >= 0.95,
        });
        out.push(TargetCheck {
            figure: format!(
                "write path, {} writers, service streaming / pg_recvlogical draining the same slot",
                r.writers
            ),
            target: ">= 0.95x".into(),
            measured: format!(
                "{:.2}x (pg_recvlogical / bare: {:.2}x)",
                r.lakets_over_recvlogical, r.recvlogical_ratio
            ),
            met: r.lakets_over_recvlogical >= 0.95,
        });
    }
    for (protocol, best, unix) in [
        ("text", catchup.ratio_best_text, catchup.ratio_unix_text),
        (
            "binary",
            catchup.ratio_best_binary,
            catchup.ratio_unix_binary,
        ),
    ] {
        out.push(TargetCheck {
            figure: format!(
                "catch-up, all operators / pg_recvlogical, each on its fastest transport, {protocol}"
            ),
            target: ">= 0.90x".into(),
            measured: format!("{best:.2}x (both over the Unix socket: {unix:.2}x)"),
            met: best >= 0.9,
        });
    }
    out.push(TargetCheck {
        figure: "catch-up CPU per row, lakets / its walsender (binary, Unix socket)".into(),
        target: "<= 0.50x".into(),
        measured: format!("{:.2}x", catchup.lakets_cpu_over_walsender),
        met: catchup.lakets_cpu_over_walsender > 0.0 && catchup.lakets_cpu_over_walsender <= 0.5,
    });
    for fresh in freshness {
        let size = fresh.rows_per_transaction;
        out.push(TargetCheck {
            figure: format!("commit -> LVC visible p99 at {rate} rows/s, {size}-row txns"),
            target: "< 10 ms".into(),
            measured: format!("{:.1} ms", fresh.lvc_visible.p99_ms),
            met: fresh.lvc_visible.samples > 0 && fresh.lvc_visible.p99_ms < 10.0,
        });
        let delta_limit = fresh.flush_interval_ms as f64 + 1000.0;
        out.push(TargetCheck {
            figure: format!("commit -> Delta p99 at {rate} rows/s, {size}-row txns"),
            target: format!("< {delta_limit:.0} ms (flush interval + 1 s)"),
            measured: format!("{:.0} ms", fresh.delta_durable.p99_ms),
            met: fresh.delta_durable.samples > 0 && fresh.delta_durable.p99_ms < delta_limit,
        });
    }
    out.push(TargetCheck {
        figure: "peak RSS, 10N / N backlog".into(),
        target: "flat (<= 1.25x)".into(),
        measured: format!(
            "{:.2}x ({:.0} / {:.0} MiB)",
            memory.peak_ratio,
            memory.runs.last().map_or(0.0, |r| r.peak_rss_mib),
            memory.runs.first().map_or(0.0, |r| r.peak_rss_mib)
        ),
        met: memory.peak_ratio <= 1.25,
    });
    // The rewrite holds a batch and the writer's row group, not the file: its peak must
    // not grow with the file (issue 17's "a compacted 128 MB file costs hundreds of MB").
    let d = &memory.delete;
    out.push(TargetCheck {
        figure: "peak RSS, 1-row delete in a compacted file".into(),
        target: "< 1/4 of decoding it whole".into(),
        measured: format!(
            "+{:.0} MiB vs +{:.0} MiB ({:.0} MiB file)",
            d.streamed.peak_growth_mib, d.whole_file.peak_growth_mib, d.file_mib
        ),
        met: d.streamed.peak_growth_mib * 4.0 < d.whole_file.peak_growth_mib,
    });
    out.push(TargetCheck {
        figure: format!(
            "sustained rate (lag bounded for {} s)",
            sustained.seconds_per_step
        ),
        target: format!(">= {rate} rows/s"),
        measured: format!("{} rows/s", sustained.sustained_rows_per_second),
        met: sustained.sustained_rows_per_second >= rate,
    });
    out
}

/// The human-readable report.
pub fn suite_table(report: &SuiteReport) -> String {
    let mut out = format!(
        "lakets bench all: {}, {}, {:.0} s\n",
        report.machine, report.postgres, report.seconds
    );

    out.push_str("\n-- ");
    out.push_str(&super::write_path_table(&report.write_path));
    out.push_str("\n-- ");
    out.push_str(&super::catchup_table(&report.catchup));
    for fresh in &report.freshness {
        out.push_str("\n-- ");
        out.push_str(&super::freshness_table(fresh));
    }

    out.push_str("\n-- memory: the service's pipeline draining a backlog (all operators)\n");
    out.push_str(&format!(
        "{:>10} {:>10} {:>12} {:>14} {:>10}\n",
        "rows", "seconds", "rows/s", "baseline MiB", "peak MiB"
    ));
    for r in &report.memory.runs {
        out.push_str(&format!(
            "{:>10} {:>10.1} {:>12.0} {:>14.0} {:>10.0}\n",
            r.rows, r.seconds, r.rows_per_second, r.baseline_rss_mib, r.peak_rss_mib
        ));
    }

    out.push('\n');
    out.push_str(&super::memory::delete_table(&report.memory.delete));

    out.push_str(&format!(
        "\n-- sustained rate: {} paced writers, {} s per step, all operators\n",
        report.sustained.writers, report.sustained.seconds_per_step
    ));
    out.push_str(&format!(
        "{:>10} {:>10} {:>12} {:>14} {:>14} {:>8}\n",
        "target", "achieved", "WAL MB/s", "max lag s", "lag growth s", "bounded"
    ));
    for s in &report.sustained.steps {
        out.push_str(&format!(
            "{:>10} {:>10.0} {:>12.1} {:>14.2} {:>14.2} {:>8}\n",
            s.target_rows_per_second,
            s.achieved_rows_per_second,
            s.wal_bytes_per_second / 1e6,
            s.max_lag_seconds,
            s.lag_growth_seconds,
            if s.bounded { "yes" } else { "no" }
        ));
    }

    out.push_str("\n-- ");
    out.push_str(&super::snapshot_table(&report.snapshot));

    out.push_str("\n-- targets (DESIGN.md)\n");
    for t in &report.targets {
        out.push_str(&format!(
            "{:<4} {:<58} {:<26} {}\n",
            if t.met { "met" } else { "MISS" },
            t.figure,
            t.target,
            t.measured
        ));
    }
    out
}
