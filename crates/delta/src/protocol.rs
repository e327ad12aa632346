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

/// The table property that makes writers delete rows with deletion vectors.
pub const DELETION_VECTORS: &str = "delta.enableDeletionVectors";

/// Optional features of a table lakets creates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Features {
    /// Change Data Feed: commits with updates or deletes carry `_change_data/` files with
    /// every change of the commit (protocol writer 4; readers stay at version 1).
    pub change_data_feed: bool,
    /// Deletion vectors: a mirrored delete or update marks the old row deleted in its
    /// file's vector instead of rewriting the file (protocol reader 3 / writer 7, table
    /// feature `deletionVectors`).
    #[serde(default)]
    pub deletion_vectors: bool,
}

impl Features {
    /// The table properties these features set at creation.
    pub fn properties(&self) -> Vec<(&'static str, Option<&'static str>)> {
        let mut properties = Vec::new();
        if self.change_data_feed {
            properties.push((CHANGE_DATA_FEED, Some("true")));
        }
        if self.deletion_vectors {
            properties.push((DELETION_VECTORS, Some("true")));
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
    pub deletion_vectors: bool,
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
        if self.deletion_vectors {
            text.push_str(", deletion vectors on");
        }
        text
    }
}

/// The protocol of the table as loaded.
pub fn summary(state: &DeltaTableState) -> Result<ProtocolSummary> {
    let raw = protocol_json(state.protocol())?;
    Ok(ProtocolSummary {
        min_reader_version: raw["minReaderVersion"].as_i64().unwrap_or(0),
        min_writer_version: raw["minWriterVersion"].as_i64().unwrap_or(0),
        reader_features: listed(&raw, "readerFeatures"),
        writer_features: listed(&raw, "writerFeatures"),
        change_data_feed: change_data_feed(state),
        deletion_vectors: deletion_vectors(state),
    })
}

/// Whether deletes go into deletion vectors: the table has the feature and its property
/// asks for them (`delta.enableDeletionVectors`).
pub fn deletion_vectors(state: &DeltaTableState) -> bool {
    protocol_json(state.protocol()).is_ok_and(|p| {
        listed(&p, "writerFeatures")
            .iter()
            .any(|f| f == "deletionVectors")
    }) && property_on(state, DELETION_VECTORS)
}

/// Whether the table property `key` is `true`.
fn property_on(state: &DeltaTableState, key: &str) -> bool {
    state
        .metadata()
        .configuration()
        .get(key)
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

/// The feature names a protocol lists under `key` (`readerFeatures`, `writerFeatures`).
fn listed(protocol: &Value, key: &str) -> Vec<String> {
    protocol
        .get(key)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|f| f.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether the table asks its writers for change data (`delta.enableChangeDataFeed`).
pub fn change_data_feed(state: &DeltaTableState) -> bool {
    property_on(state, CHANGE_DATA_FEED)
}

/// Writer features lakets honours: it writes change data itself, never removes a file of
/// an append-only table, and the features that only constrain values are refused where a
/// table uses them (lakets would not enforce them).
const WRITER_FEATURES: &[&str] = &[
    "appendOnly",
    "changeDataFeed",
    "deletionVectors",
    "invariants",
    "checkConstraints",
    "generatedColumns",
];

/// Reader features lakets honours: every file it reads goes through the file's deletion
/// vector ([`super::table::open_live`]).
const READER_FEATURES: &[&str] = &["deletionVectors"];

/// Refuses a table lakets cannot commit to faithfully: reader features (column mapping,
/// deletion vectors: lakets reads files whole), writer versions or features it does not
/// implement, and invariants, CHECK constraints or generated columns it would not enforce.
pub fn check_writable(state: &DeltaTableState, location: &str) -> Result<()> {
    let summary = summary(state)?;
    let refuse = |what: String| {
        Err(Error::Unsupported(format!(
            "the Delta table at {location} {what}, which lakets does not write; another \
             writer turned it on (lakets writes change data feed and deletion vectors, and \
             honours append-only). Mirror into a new location, or turn the \
             feature off where the table allows it"
        )))
    };
    match summary.min_reader_version {
        1 => {}
        3 if summary
            .reader_features
            .iter()
            .all(|f| READER_FEATURES.contains(&f.as_str())) => {}
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

/// The actions that turn `features` on in the table: the protocol raised where they need
/// it (Change Data Feed: writer 4, or the feature listed at writer 7; deletion vectors:
/// reader 3 / writer 7 listing the feature, and the features the legacy versions implied),
/// and the table properties. `None`: they are on already.
pub fn enable_features(
    state: &DeltaTableState,
    location: &str,
    features: Features,
) -> Result<Option<Vec<Action>>> {
    check_writable(state, location)?;
    let want_cdf = features.change_data_feed && !change_data_feed(state);
    let want_dv = features.deletion_vectors && !deletion_vectors(state);
    if !want_cdf && !want_dv {
        return Ok(None);
    }
    let mut protocol = protocol_json(state.protocol())?;
    let reader = protocol["minReaderVersion"].as_i64().unwrap_or(1);
    let mut writer = protocol["minWriterVersion"].as_i64().unwrap_or(2);
    let mut reader_features = listed(&protocol, "readerFeatures");
    let mut writer_features = listed(&protocol, "writerFeatures");
    let add = |list: &mut Vec<String>, feature: &str| {
        if !list.iter().any(|f| f == feature) {
            list.push(feature.to_owned());
        }
    };
    if want_dv && writer < 7 {
        // Table features replace the legacy versions: list what they implied.
        for (version, implied) in [
            (2, &["appendOnly", "invariants"][..]),
            (3, &["checkConstraints"][..]),
            (4, &["changeDataFeed", "generatedColumns"][..]),
        ] {
            if writer >= version {
                for f in implied {
                    add(&mut writer_features, f);
                }
            }
        }
        writer = 7;
    }
    if want_dv {
        add(&mut writer_features, "deletionVectors");
        add(&mut reader_features, "deletionVectors");
        protocol["minReaderVersion"] = Value::from(reader.max(3));
        protocol["readerFeatures"] = Value::from(reader_features);
    }
    if want_cdf {
        if writer >= 7 {
            add(&mut writer_features, "changeDataFeed");
        } else {
            writer = writer.max(4);
        }
    }
    protocol["minWriterVersion"] = Value::from(writer);
    if writer >= 7 {
        protocol["writerFeatures"] = Value::from(writer_features);
    }
    let protocol: Protocol = serde_json::from_value(protocol)
        .map_err(|e| Error::Protocol(format!("building a Delta protocol action: {e}")))?;
    let metadata = metadata_with(state, |metadata| {
        for (key, on) in [(CHANGE_DATA_FEED, want_cdf), (DELETION_VECTORS, want_dv)] {
            if on {
                metadata["configuration"][key] = Value::String("true".into());
            }
        }
        Ok(())
    })?;
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
    metadata_with(state, |metadata| {
        metadata["schemaString"] = Value::String(
            serde_json::to_string(&extended)
                .map_err(|e| Error::Protocol(format!("writing the Delta schema: {e}")))?,
        );
        Ok(())
    })
}

/// The table's metadata action with `edit` applied to its JSON form (the kernel's type
/// has no setters).
fn metadata_with(
    state: &DeltaTableState,
    edit: impl FnOnce(&mut Value) -> Result<()>,
) -> Result<Metadata> {
    let mut metadata = serde_json::to_value(state.metadata())
        .map_err(|e| Error::Protocol(format!("reading the Delta table's metadata: {e}")))?;
    edit(&mut metadata)?;
    serde_json::from_value(metadata)
        .map_err(|e| Error::Protocol(format!("building a Delta metadata action: {e}")))
}

fn protocol_json(protocol: &Protocol) -> Result<Value> {
    serde_json::to_value(protocol)
        .map_err(|e| Error::Protocol(format!("reading the Delta table's protocol: {e}")))
}
