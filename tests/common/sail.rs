//! Sail (pysail's Spark Connect server) reading a Delta table through the PySpark API: an
//! engine of the Spark family, independent of lakets and of delta-rs' Python package.

use std::collections::BTreeMap;
use std::process::Command;

/// What Sail reads of one source of a shared table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceTotals {
    pub rows: i64,
    pub volume: i64,
    pub keys: i64,
}

/// The interop venv's Python with pysail and the Spark Connect client, or `None` (the
/// caller skips, unless `LAKETS_REQUIRE_INTEROP` is set).
pub fn sail_python() -> Option<String> {
    super::interop_python(
        "pysail.spark, pyspark.sql",
        "pysail==0.7.2 and pyspark-client==4.2.0",
    )
}

/// Per `lakets_source` of the Delta table at `location` (a local directory): rows, sum of
/// `volume`, distinct `(symbol, time)` keys, as Sail reads them. `None`: no Sail here.
pub fn read_union(location: &str) -> Option<BTreeMap<String, SourceTotals>> {
    let python = sail_python()?;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/sail_union.py");
    let out = Command::new(python)
        .arg(script)
        .arg(location)
        .env("PYTHONWARNINGS", "ignore")
        .output()
        .expect("running the Sail reader");
    assert!(
        out.status.success(),
        "Sail's reading failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON from the Sail reader: {stdout}"));
    let parsed: BTreeMap<String, serde_json::Value> = serde_json::from_str(line).unwrap();
    Some(
        parsed
            .into_iter()
            .map(|(source, v)| {
                let n = |k: &str| v[k].as_i64().unwrap_or_else(|| panic!("{k} in {v}"));
                (
                    source,
                    SourceTotals {
                        rows: n("rows"),
                        volume: n("volume"),
                        keys: n("keys"),
                    },
                )
            })
            .collect(),
    )
}
