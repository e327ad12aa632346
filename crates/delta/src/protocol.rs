//! The Delta protocol lakets writes: which reader and writer versions and table features a
//! table may carry for lakets to commit to it, the optional features of the tables it
//! creates, and the explicit upgrade that turns Change Data Feed on.
//!
//! lakets checks the protocol itself. deltalake without DataFusion refuses every commit to a
//! table with Change Data Feed (it writes `cdc` files only through its DataFusion
//! operations); lakets writes them in its own commits ([`super::mirror`]), so it shows
//! deltalake's checker the protocol with the features lakets handles taken out
//! ([`checked`]), after refusing everything it does not handle.

use deltalake::kernel::transaction::TableReference;
use deltalake::kernel::{Action, EagerSnapshot, Metadata, Protocol};
use deltalake::table::state::DeltaTableState;
use serde_json::Value;

use crate::error::{Error, Result};

/// The table property that turns Change Data Feed on.
pub const CHANGE_DATA_FEED: &str = "delta.enableChangeDataFeed";

/// Optional features of a table lakets creates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Features {
    /// Change Data Feed: commits with updates or deletes carry `_change_data/` files with
    /// every change of the commit (protocol writer 4; readers stay at version 1).
    pub change_data_feed: bool,
}

impl Features {
    /// The table properties these features set at creation.
    pub fn properties(&self) -> Vec<(&'static str, Option<&'static str>)> {
        let mut properties = Vec::new();
        if self.change_data_feed {
            properties.push((CHANGE_DATA_FEED, Some("true")));
        }
        properties
    }
}

/// A table's protocol and what it turns on, for `lakets sync show`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ProtocolSummary {
    pub min_reader_version: i64,
    pub min_writer_version: i64,
    /// Listed features (protocol reader 3 / writer 7 only).
    pub reader_features: Vec<String>,
    pub writer_features: Vec<String>,
    pub change_data_feed: bool,
}

impl ProtocolSummary {
    /// "reader 1 / writer 4, change data feed".
    pub fn describe(&self) -> String {
        let mut text = format!(
            "reader {} / writer {}",
            self.min_reader_version, self.min_writer_version
        );
        let features: Vec<&str> = self
            .reader_features
            .iter()
            .chain(&self.writer_features)
            .map(String::as_str)
            .collect();
        if !features.is_empty() {
            text.push_str(&format!(" [{}]", features.join(", ")));
        }
        text.push_str(if self.change_data_feed {
            ", change data feed on"
        } else {
            ", change data feed off"
        });
        text
    }
}

/// The protocol of the table as loaded.
pub fn summary(state: &DeltaTableState) -> Result<ProtocolSummary> {
    let raw = protocol_json(state.protocol())?;
    let features = |key: &str| -> Vec<String> {
        raw.get(key)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|f| f.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    Ok(ProtocolSummary {
        min_reader_version: raw["minReaderVersion"].as_i64().unwrap_or(0),
        min_writer_version: raw["minWriterVersion"].as_i64().unwrap_or(0),
        reader_features: features("readerFeatures"),
        writer_features: features("writerFeatures"),
        change_data_feed: change_data_feed(state),
    })
}

/// Whether the table asks its writers for change data (`delta.enableChangeDataFeed`).
pub fn change_data_feed(state: &DeltaTableState) -> bool {
    state
        .metadata()
        .configuration()
        .get(CHANGE_DATA_FEED)
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

/// Writer features lakets honours: it writes change data itself, never removes a file of
/// an append-only table, and the features that only constrain values are refused where a
/// table uses them (lakets would not enforce them).
const WRITER_FEATURES: &[&str] = &[
    "appendOnly",
    "changeDataFeed",
    "invariants",
    "checkConstraints",
    "generatedColumns",
];

/// Refuses a table lakets cannot commit to faithfully: reader features (column mapping,
/// deletion vectors: lakets reads files whole), writer versions or features it does not
/// implement, and invariants, CHECK constraints or generated columns it would not enforce.
pub fn check_writable(state: &DeltaTableState, location: &str) -> Result<()> {
    let summary = summary(state)?;
    let refuse = |what: String| {
        Err(Error::Unsupported(format!(
            "the Delta table at {location} {what}, which lakets does not write; another \
             writer turned it on (lakets creates tables at protocol reader 1 / writer 2, or \
             writer 4 with change data feed). Mirror into a new location, or turn the \
             feature off where the table allows it"
        )))
    };
    match summary.min_reader_version {
        1 => {}
        3 if summary.reader_features.is_empty() => {}
        3 => {
            return refuse(format!(
                "needs the reader features {:?}",
                summary.reader_features
            ));
        }
        v => return refuse(format!("needs reader version {v} (column mapping)")),
    }
    let implied: &[&str] = match summary.min_writer_version {
        1 => &[],
        2 => &["appendOnly", "invariants"],
        3 => &["appendOnly", "invariants", "checkConstraints"],
        4 => &[
            "appendOnly",
            "invariants",
            "checkConstraints",
            "changeDataFeed",
            "generatedColumns",
        ],
        7 => &[],
        v => return refuse(format!("needs writer version {v}")),
    };
    let features = implied
        .iter()
        .map(|f| (*f).to_owned())
        .chain(summary.writer_features.iter().cloned());
    for feature in features {
        if !WRITER_FEATURES.contains(&feature.as_str()) {
            return refuse(format!("has the writer feature {feature:?}"));
        }
    }
    let schema = state.schema();
    for field in schema.fields() {
        for (key, what) in [
            ("delta.invariants", "an invariant"),
            ("delta.generationExpression", "a generation expression"),
        ] {
            if field.metadata().contains_key(key) {
                return refuse(format!("has {what} on column {:?}", field.name()));
            }
        }
    }
    if let Some(key) = state
        .metadata()
        .configuration()
        .keys()
        .find(|k| k.starts_with("delta.constraints."))
    {
        return refuse(format!("has the CHECK constraint {key:?}"));
    }
    Ok(())
}

/// The table for deltalake's commit: `state` itself, but showing deltalake's protocol
/// checker the legacy writer version 2 once [`check_writable`] has accepted the table (the
/// features above writer 2 that lakets accepts are written by lakets itself, or refused
/// where used). The append-only property is still enforced by deltalake's check.
pub fn checked<'a>(state: &'a DeltaTableState, location: &str) -> Result<Checked<'a>> {
    check_writable(state, location)?;
    let presented = serde_json::from_value(serde_json::json!({
        "minReaderVersion": 1,
        "minWriterVersion": 2,
    }))
    .map_err(|e| Error::Protocol(format!("building a Delta protocol action: {e}")))?;
    Ok(Checked { state, presented })
}

/// See [`checked`].
pub struct Checked<'a> {
    state: &'a DeltaTableState,
    presented: Protocol,
}

impl TableReference for Checked<'_> {
    fn config(&self) -> &delta_kernel::table_properties::TableProperties {
        self.state.table_config()
    }

    fn protocol(&self) -> &Protocol {
        &self.presented
    }

    fn metadata(&self) -> &Metadata {
        self.state.metadata()
    }

    fn eager_snapshot(&self) -> &EagerSnapshot {
        self.state.snapshot()
    }
}

/// The actions that turn Change Data Feed on: the protocol raised to writer 4 (or the
/// feature listed at writer 7; readers stay where they are) and the table property.
/// `None`: it is on already.
pub fn enable_change_data_feed(
    state: &DeltaTableState,
    location: &str,
) -> Result<Option<Vec<Action>>> {
    check_writable(state, location)?;
    if change_data_feed(state) {
        return Ok(None);
    }
    let mut protocol = protocol_json(state.protocol())?;
    let writer = protocol["minWriterVersion"].as_i64().unwrap_or(2);
    if writer >= 7 {
        let features = protocol
            .as_object_mut()
            .expect("a protocol is an object")
            .entry("writerFeatures")
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Some(list) = features.as_array_mut()
            && !list.iter().any(|f| f == "changeDataFeed")
        {
            list.push(Value::String("changeDataFeed".into()));
        }
    } else {
        protocol["minWriterVersion"] = Value::from(writer.max(4));
    }
    let protocol: Protocol = serde_json::from_value(protocol)
        .map_err(|e| Error::Protocol(format!("building a Delta protocol action: {e}")))?;
    let mut metadata = serde_json::to_value(state.metadata())
        .map_err(|e| Error::Protocol(format!("reading the Delta table's metadata: {e}")))?;
    metadata["configuration"][CHANGE_DATA_FEED] = Value::String("true".into());
    let metadata: Metadata = serde_json::from_value(metadata)
        .map_err(|e| Error::Protocol(format!("building a Delta metadata action: {e}")))?;
    Ok(Some(vec![
        Action::Protocol(protocol),
        Action::Metadata(metadata),
    ]))
}

/// The table's metadata with `fields` added to its schema (nullable columns).
pub fn with_columns(
    state: &DeltaTableState,
    fields: &[deltalake::kernel::StructField],
) -> Result<Metadata> {
    let schema = state.schema();
    let extended = deltalake::kernel::StructType::try_new(
        schema.fields().cloned().chain(fields.iter().cloned()),
    )
    .map_err(|e| Error::invalid(format!("adding columns to the Delta schema: {e}")))?;
    let mut metadata = serde_json::to_value(state.metadata())
        .map_err(|e| Error::Protocol(format!("reading the Delta table's metadata: {e}")))?;
    metadata["schemaString"] = Value::String(
        serde_json::to_string(&extended)
            .map_err(|e| Error::Protocol(format!("writing the Delta schema: {e}")))?,
    );
    serde_json::from_value(metadata)
        .map_err(|e| Error::Protocol(format!("building a Delta metadata action: {e}")))
}

fn protocol_json(protocol: &Protocol) -> Result<Value> {
    serde_json::to_value(protocol)
        .map_err(|e| Error::Protocol(format!("reading the Delta table's protocol: {e}")))
}
