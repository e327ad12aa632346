//! The relation cache: what pgoutput told us about each published table, keyed by OID.
//!
//! A Relation message precedes the first change of a table in each session and follows
//! every schema change. When it differs from what we had, operators get a schema-change
//! event before the rows that use the new shape.

use hashbrown::HashMap;
use std::sync::Arc;

use super::pgoutput::RelationMessage;
use super::value::ColumnType;
use crate::error::{Error, Result};
use crate::ident::TableName;

#[derive(Debug, Clone, PartialEq)]
pub struct Relation {
    pub id: u32,
    pub table: TableName,
    /// `d` default (primary key), `n` nothing, `f` full, `i` index.
    pub replica_identity: u8,
    pub columns: Vec<RelationColumn>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RelationColumn {
    pub name: String,
    pub type_oid: u32,
    pub type_modifier: i32,
    pub column_type: ColumnType,
    /// Part of the replica identity (the key sent with updates and deletes).
    pub is_key: bool,
}

impl RelationColumn {
    /// A column of `type_oid` with no type modifier.
    pub fn new(name: impl Into<String>, type_oid: u32, is_key: bool) -> Self {
        RelationColumn {
            name: name.into(),
            type_oid,
            type_modifier: -1,
            column_type: ColumnType::from_oid(type_oid),
            is_key,
        }
    }
}

impl Relation {
    pub fn from_message(m: &RelationMessage<'_>) -> Self {
        Relation {
            id: m.relation_id,
            table: TableName::new(m.namespace, m.name),
            replica_identity: m.replica_identity,
            columns: m
                .columns
                .iter()
                .map(|c| RelationColumn {
                    name: c.name.to_owned(),
                    type_oid: c.type_oid,
                    type_modifier: c.type_modifier,
                    column_type: ColumnType::from_oid(c.type_oid),
                    is_key: c.is_key,
                })
                .collect(),
        }
    }

    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    /// Refuses a table with a column whose type the cold tier cannot carry, naming it.
    pub fn check_supported_types(&self) -> Result<()> {
        let bad: Vec<String> = self
            .columns
            .iter()
            .filter(|c| !c.column_type.is_supported())
            .map(|c| format!("{:?} ({})", c.name, c.column_type.name()))
            .collect();
        if bad.is_empty() {
            return Ok(());
        }
        Err(Error::Unsupported(format!(
            "{} has columns of types the cold tier cannot carry: {}; supported are timestamptz, \
             timestamp, date, text/varchar, smallint/integer/bigint, real/double precision, \
             numeric, boolean, bytea, uuid and json/jsonb (cast the column, or leave the table \
             out of sync)",
            self.table,
            bad.join(", ")
        )))
    }
}

/// What a Relation message meant for the cache.
#[derive(Debug, Clone)]
pub enum RelationUpdate {
    /// First sight of the relation (in this process).
    New(Arc<Relation>),
    /// The shape changed: columns added, dropped, renamed, retyped, or the identity.
    Changed {
        previous: Arc<Relation>,
        current: Arc<Relation>,
    },
    /// Sent again (new session) with the same shape.
    Unchanged(Arc<Relation>),
}

#[derive(Debug, Default)]
pub struct RelationCache {
    relations: HashMap<u32, Arc<Relation>>,
}

impl RelationCache {
    pub fn update(&mut self, message: &RelationMessage<'_>) -> RelationUpdate {
        let fresh = Relation::from_message(message);
        match self.relations.get(&fresh.id) {
            Some(existing) if **existing == fresh => RelationUpdate::Unchanged(existing.clone()),
            Some(existing) => {
                let previous = existing.clone();
                let current = Arc::new(fresh);
                self.relations.insert(current.id, current.clone());
                RelationUpdate::Changed { previous, current }
            }
            None => {
                let current = Arc::new(fresh);
                self.relations.insert(current.id, current.clone());
                RelationUpdate::New(current)
            }
        }
    }

    pub fn get(&self, id: u32) -> Option<&Arc<Relation>> {
        self.relations.get(&id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pgoutput::RelationColumn as WireColumn;

    fn message(columns: &[(&'static str, u32)]) -> RelationMessage<'static> {
        RelationMessage {
            xid: None,
            relation_id: 7,
            namespace: "public",
            name: "t",
            replica_identity: b'd',
            columns: columns
                .iter()
                .map(|(name, type_oid)| WireColumn {
                    is_key: false,
                    name,
                    type_oid: *type_oid,
                    type_modifier: -1,
                })
                .collect(),
        }
    }

    #[test]
    fn cache_reports_new_changed_and_unchanged_shapes() {
        let mut cache = RelationCache::default();
        let v1 = message(&[("time", 1184), ("v", 701)]);
        assert!(matches!(cache.update(&v1), RelationUpdate::New(_)));
        assert!(matches!(cache.update(&v1), RelationUpdate::Unchanged(_)));
        let v2 = message(&[("time", 1184), ("v", 701), ("extra", 23)]);
        match cache.update(&v2) {
            RelationUpdate::Changed { previous, current } => {
                assert_eq!(previous.columns.len(), 2);
                assert_eq!(current.columns.len(), 3);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(cache.get(7).unwrap().columns.len(), 3);
    }

    #[test]
    fn unsupported_types_are_named() {
        let ok = Relation::from_message(&message(&[("time", 1184), ("n", 1700), ("j", 3802)]));
        assert!(ok.check_supported_types().is_ok());
        let bad = Relation::from_message(&message(&[("time", 1184), ("addr", 869), ("pt", 600)]));
        let err = bad.check_supported_types().unwrap_err().to_string();
        assert!(
            err.contains("\"addr\" (type oid 869)") && err.contains("\"pt\""),
            "{err}"
        );
    }
}
