//! The relation cache: what pgoutput told us about each published table, keyed by OID.
//!
//! A Relation message precedes the first change of a table in each session and follows
//! every schema change. When it differs from what we had, operators get a schema-change
//! event before the rows that use the new shape.

use std::collections::HashMap;
use std::sync::Arc;

use super::pgoutput::RelationMessage;
use super::value::ColumnType;
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
