//! `lakets bench all --quick` from the binary: every phase runs on its own embedded
//! PostgreSQL and the JSON report holds every figure the README quotes, each consistent
//! with the work done. Sizes are tiny; this checks the command, not the speed.

use std::process::Command;

use serde_json::Value;

#[test]
fn bench_all_reports_every_figure_in_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let report_path = dir.path().join("report.json");
    let out = Command::new(env!("CARGO_BIN_EXE_lakets"))
        .args(["bench", "all", "--quick", "--output"])
        .arg(&report_path)
        .env("LAKETS_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench all failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    for section in [
        "-- write path",
        "-- catch-up",
        "-- freshness",
        "-- memory",
        "-- sustained rate",
        "-- targets",
    ] {
        assert!(stdout.contains(section), "no {section:?} in:\n{stdout}");
    }
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&report_path).unwrap())
        .expect("the --output file is JSON");
    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);

    // Write path: 2 and 4 writers, four scenarios each (pg_recvlogical draining the slot
    // the fourth), every rate measured.
    let ratios = report["write_path"]["ratios"].as_array().unwrap();
    assert_eq!(
        ratios
            .iter()
            .map(|r| r["writers"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![2, 4]
    );
    for r in ratios {
        for key in [
            "bare_rows_per_second",
            "lakets_rows_per_second",
            "triggers_rows_per_second",
            "recvlogical_rows_per_second",
            "lakets_ratio",
            "triggers_ratio",
            "recvlogical_ratio",
        ] {
            assert!(f(&r[key]) > 0.0, "{key} in {r}");
        }
        let over = f(&r["lakets_rows_per_second"]) / f(&r["recvlogical_rows_per_second"]);
        assert!(
            (f(&r["lakets_over_recvlogical"]) - over).abs() < 1e-9,
            "the ratio is of the two rates: {r}"
        );
    }
    // Commit latency at a fixed rate, per scenario.
    let latencies = report["write_path"]["latencies"].as_array().unwrap();
    assert_eq!(latencies.len(), 4);
    for l in latencies {
        assert!(l["latency"]["samples"].as_u64().unwrap() > 0, "{l}");
        assert!(f(&l["latency"]["p99_ms"]) >= f(&l["latency"]["p50_ms"]));
    }
    // The spec's CDF-mirror trigger copied exactly the rows of the trigger runs.
    let trigger_rows: u64 = report["write_path"]["runs"]
        .as_array()
        .unwrap()
        .iter()
        .chain(latencies)
        .filter(|r| r["scenario"] == "triggers")
        .map(|r| r["rows"].as_u64().unwrap())
        .sum();
    assert!(trigger_rows > 0);
    assert_eq!(
        report["write_path"]["spec_shadow_rows"].as_u64(),
        Some(trigger_rows)
    );

    // Cores split (CI has 2 CPUs): both runs measured, the pinning worked.
    let split = &report["write_path"]["split"];
    assert!(
        split.is_object(),
        "split-core runs skipped: {}",
        report["write_path"]["split_skipped"]
    );
    assert_ne!(split["writer_cpu"], split["decoder_cpu"]);
    for key in [
        "bare_rows_per_second",
        "lakets_rows_per_second",
        "lakets_ratio",
    ] {
        assert!(f(&split[key]) > 0.0, "{key} in {split}");
    }

    // Catch-up: pg_recvlogical and lakets (text, binary) over TCP and over the Unix socket,
    // and the split pair; each with its own CPU per row and (but the pair) its walsender's.
    let rows = report["catchup"]["rows"].as_u64().unwrap();
    let measurements = report["catchup"]["measurements"].as_array().unwrap();
    assert_eq!(measurements.len(), 9, "{measurements:?}");
    for m in measurements {
        assert!(f(&m["rows_per_second"]) > 0.0);
        assert!(f(&m["consumer_cpu_us_per_row"]) > 0.0, "{m}");
        let consumer = m["consumer"].as_str().unwrap();
        if consumer.starts_with("lakets") {
            assert!(m["changes_seen"].as_u64().unwrap() >= rows, "{m}");
        }
        if consumer.contains("split") {
            assert!(m["walsender_cpu_us_per_row"].is_null(), "{m}");
        } else {
            // In clock ticks (10 ms): the quick run's tiny backlog may round to none.
            assert!(f(&m["walsender_cpu_us_per_row"]) >= 0.0, "{m}");
        }
    }
    for transport in ["tcp", "unix"] {
        for consumer in ["pg_recvlogical", "lakets (all operators)"] {
            assert_eq!(
                measurements
                    .iter()
                    .filter(|m| m["transport"] == transport && m["consumer"] == consumer)
                    .count(),
                2,
                "{consumer} over {transport}: {measurements:?}"
            );
        }
    }
    for key in [
        "ratio_unix_text",
        "ratio_unix_binary",
        "ratio_text",
        "ratio_binary",
        "ratio_best_text",
        "ratio_best_binary",
        "split_over_single",
        "recv_unix_over_tcp",
    ] {
        assert!(f(&report["catchup"][key]) > 0.0, "{key}");
    }
    assert!(f(&report["catchup"]["lakets_cpu_over_walsender"]) >= 0.0);
    // Each on its fastest transport: at least as good as either same-transport ratio.
    for protocol in ["text", "binary"] {
        let best = f(&report["catchup"][format!("ratio_best_{protocol}").as_str()]);
        let rate = |consumer: &str, transport: &str| {
            measurements
                .iter()
                .filter(|m| {
                    m["consumer"] == consumer
                        && m["transport"] == transport
                        && m["protocol"] == protocol
                })
                .map(|m| f(&m["rows_per_second"]))
                .fold(0.0, f64::max)
        };
        let lakets = "lakets (all operators)";
        let expected = rate(lakets, "unix").max(rate(lakets, "tcp"))
            / rate("pg_recvlogical", "unix").max(rate("pg_recvlogical", "tcp"));
        assert!(
            (best - expected).abs() < 1e-9,
            "{protocol}: {best} vs {expected}"
        );
    }

    // Freshness, per transaction size: every measure resolved every transaction, in a
    // plausible order, and the smaller transactions were as many times more.
    let fresh = report["freshness"].as_array().unwrap();
    assert_eq!(
        fresh
            .iter()
            .map(|r| r["rows_per_transaction"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![1000, 100]
    );
    for r in fresh {
        let samples = r["lvc_visible"]["samples"].as_u64().unwrap();
        assert!(samples >= 5, "{r}");
        for key in ["received", "lvc_durable", "delta_durable"] {
            assert_eq!(r[key]["samples"].as_u64(), Some(samples), "{key}");
        }
        assert!(f(&r["lvc_visible"]["p50_ms"]) <= f(&r["delta_durable"]["p50_ms"]));
    }
    assert!(
        fresh[1]["lvc_visible"]["samples"].as_u64() > fresh[0]["lvc_visible"]["samples"].as_u64()
    );

    // Memory: N and 10N, each peak at least its baseline.
    let runs = report["memory"]["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(
        runs[1]["rows"].as_u64().unwrap(),
        10 * runs[0]["rows"].as_u64().unwrap()
    );
    for r in runs {
        assert!(
            f(&r["peak_rss_mib"]) >= f(&r["baseline_rss_mib"]) && f(&r["baseline_rss_mib"]) > 1.0
        );
    }

    // The delete into a compacted file: both probes ran in their own process and grew.
    let delete = &report["memory"]["delete"];
    assert!(delete["file_rows"].as_u64().unwrap() >= 100_000, "{delete}");
    for probe in ["streamed", "whole_file"] {
        let p = &delete[probe];
        assert!(
            f(&p["peak_growth_mib"]) > 0.0 && f(&p["baseline_rss_mib"]) > 1.0,
            "{probe}: {p}"
        );
    }

    // Sustained: at least one step, each with a lag sample per second.
    let steps = report["sustained"]["steps"].as_array().unwrap();
    assert!(!steps.is_empty());
    for s in steps {
        assert!(s["lag_bytes"].as_array().unwrap().len() >= 2, "{s}");
    }

    // The initial copy: one size, a run per reader count, each of every row.
    let sizes = report["snapshot"]["sizes"].as_array().unwrap();
    assert_eq!(sizes.len(), 1, "{sizes:?}");
    assert!(f(&sizes[0]["copy_rows_per_second"]) > 0.0, "{sizes:?}");
    let copies = sizes[0]["runs"].as_array().unwrap();
    assert_eq!(copies.len(), 2, "{copies:?}");
    for (run, readers) in copies.iter().zip([1, 2]) {
        assert_eq!(run["readers"].as_u64(), Some(readers), "{run}");
        assert!(
            f(&run["rows_per_second"]) > 0.0 && f(&run["ratio"]) > 0.0,
            "{run}"
        );
    }

    // Sixteen targets (the split write path, two write-path ratios to bare and two to
    // pg_recvlogical draining the same slot, catch-up against pg_recvlogical per protocol
    // and its CPU ratio, two per freshness size, two of memory, sustained ingest, one per
    // copy size), each with a verdict.
    let targets = report["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 16, "{targets:?}");
    assert!(targets.iter().all(|t| t["met"].is_boolean()));
    assert!(
        report["postgres"]
            .as_str()
            .unwrap()
            .starts_with("PostgreSQL")
    );
}
