//! Reads an existing table's definition from the system catalog, so that the in-place
//! conversion can rebuild it as a partitioned table: columns (types, collations, NOT NULL,
//! defaults, identity, generated), constraints, indexes, replica identity, owner, grants,
//! comments, owned sequences, extended statistics.

use tokio_postgres::GenericClient;

use crate::error::{Error, PgResultExt, Result};
use crate::ident::{QualifiedName, TableName, quote_ident};

#[derive(Debug, Clone)]
pub struct TableDef {
    pub oid: u32,
    pub table: TableName,
    pub relkind: String,
    pub persistence: String,
    pub is_partition: bool,
    pub is_typed: bool,
    pub in_inheritance: bool,
    pub row_security: bool,
    /// `d` default, `f` full, `i` index, `n` nothing.
    pub replica_identity: String,
    /// The index named by REPLICA IDENTITY USING INDEX (constraint-backed or not).
    pub replica_identity_index: Option<String>,
    pub owner: String,
    pub comment: Option<String>,
    pub columns: Vec<ColumnDef>,
    pub constraints: Vec<ConstraintDef>,
    pub indexes: Vec<IndexDef>,
    pub statistics: Vec<String>,
    pub grants: Vec<Grant>,
}

#[derive(Debug, Clone)]
pub struct ColumnDef {
    pub attnum: i16,
    pub name: String,
    pub type_sql: String,
    pub type_oid: u32,
    pub not_null: bool,
    /// `a` always, `d` by default, empty when not an identity column.
    pub identity: String,
    /// `s` for a stored generated column.
    pub generated: String,
    /// The default expression, or the generation expression of a generated column.
    pub default_expr: Option<String>,
    pub collation_sql: Option<String>,
    pub comment: Option<String>,
    /// The sequence behind an identity or serial column.
    pub sequence: Option<SequenceDef>,
}

#[derive(Debug, Clone)]
pub struct SequenceDef {
    pub schema: String,
    pub name: String,
    pub start: i64,
    pub increment: i64,
    pub min: i64,
    pub max: i64,
    pub cache: i64,
    pub cycle: bool,
    pub last_value: i64,
    pub is_called: bool,
}

impl SequenceDef {
    pub fn table_name(&self) -> TableName {
        TableName::new(self.schema.clone(), self.name.clone())
    }

    pub fn identity_options(&self) -> String {
        format!(
            "START WITH {} INCREMENT BY {} MINVALUE {} MAXVALUE {} CACHE {} {}",
            self.start,
            self.increment,
            self.min,
            self.max,
            self.cache,
            if self.cycle { "CYCLE" } else { "NO CYCLE" }
        )
    }
}

#[derive(Debug, Clone)]
pub struct ConstraintDef {
    pub name: String,
    /// `p` primary key, `u` unique, `c` check, `f` foreign key, `x` exclusion, `t` trigger.
    pub kind: String,
    pub definition: String,
    pub columns: Vec<i16>,
}

#[derive(Debug, Clone)]
pub struct IndexDef {
    pub name: String,
    pub definition: String,
    pub unique: bool,
    pub key_columns: Vec<i16>,
    pub replica_identity: bool,
}

#[derive(Debug, Clone)]
pub struct Grant {
    /// A quoted role name, or PUBLIC.
    pub grantee: String,
    pub privilege: String,
    pub grantable: bool,
    /// Set for a column privilege.
    pub column: Option<String>,
}

/// What else refers to the table; the conversion refuses these rather than break them.
#[derive(Debug, Clone, Default)]
pub struct Dependents {
    pub views: Vec<String>,
    pub referencing_foreign_keys: Vec<String>,
    pub triggers: Vec<String>,
    pub policies: Vec<String>,
    pub rules: Vec<String>,
    pub publications: Vec<String>,
}

/// Finds a table by the name a user typed: in the schema it names, `public` when it names
/// none (never along a search_path, which a role or database setting could point
/// anywhere).
pub async fn resolve_table(client: &impl GenericClient, input: &str) -> Result<TableName> {
    let name = QualifiedName::parse(input)?;
    let row = client
        .query_opt(
            "SELECT n.nspname::text, c.relname::text
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relname = $2 AND n.nspname = $1",
            &[&name.schema_or_default(), &name.name],
        )
        .await
        .pg_context(|| format!("looking up table {input}"))?;
    match row {
        Some(row) => Ok(TableName::new(
            row.get::<_, String>(0),
            row.get::<_, String>(1),
        )),
        None => Err(Error::NotFound {
            kind: "table",
            name: match name.schema {
                Some(schema) => format!("{schema}.{}", name.name),
                None => name.name,
            },
        }),
    }
}

pub async fn read_table(client: &impl GenericClient, table: &TableName) -> Result<TableDef> {
    let ctx = || format!("reading the definition of {table}");
    let row = client
        .query_one(
            "SELECT c.oid, c.relkind::text, c.relpersistence::text, c.relispartition,
                    c.reloftype <> 0,
                    EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhrelid = c.oid OR i.inhparent = c.oid),
                    c.relrowsecurity, c.relreplident::text, pg_get_userbyid(c.relowner)::text,
                    obj_description(c.oid, 'pg_class')
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = $1 AND c.relname = $2",
            &[&table.schema, &table.name],
        )
        .await
        .pg_context(ctx)?;
    let oid: u32 = row.get(0);

    let mut columns = Vec::new();
    for r in client
        .query(
            "SELECT a.attnum, a.attname::text, format_type(a.atttypid, a.atttypmod), a.atttypid,
                    a.attnotnull, a.attidentity::text, a.attgenerated::text,
                    pg_get_expr(d.adbin, d.adrelid),
                    CASE WHEN a.attcollation <> 0 AND a.attcollation <> t.typcollation
                         THEN quote_ident(cn.nspname) || '.' || quote_ident(co.collname) END,
                    col_description(a.attrelid, a.attnum),
                    pg_get_serial_sequence(quote_ident($2) || '.' || quote_ident($3), a.attname)
               FROM pg_attribute a
               JOIN pg_type t ON t.oid = a.atttypid
               LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
               LEFT JOIN pg_collation co ON co.oid = a.attcollation
               LEFT JOIN pg_namespace cn ON cn.oid = co.collnamespace
              WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
              ORDER BY a.attnum",
            &[&oid, &table.schema, &table.name],
        )
        .await
        .pg_context(ctx)?
    {
        let sequence_name: Option<String> = r.get(10);
        let sequence = match sequence_name {
            Some(qualified) => Some(read_sequence(client, &qualified).await?),
            None => None,
        };
        columns.push(ColumnDef {
            attnum: r.get(0),
            name: r.get(1),
            type_sql: r.get(2),
            type_oid: r.get(3),
            not_null: r.get(4),
            identity: r.get(5),
            generated: r.get(6),
            default_expr: r.get(7),
            collation_sql: r.get(8),
            comment: r.get(9),
            sequence,
        });
    }

    let constraints = client
        .query(
            "SELECT conname::text, contype::text, pg_get_constraintdef(oid), coalesce(conkey, '{}')::int2[]
               FROM pg_constraint WHERE conrelid = $1 ORDER BY contype, conname",
            &[&oid],
        )
        .await
        .pg_context(ctx)?
        .iter()
        .map(|r| ConstraintDef {
            name: r.get(0),
            kind: r.get(1),
            definition: r.get(2),
            columns: r.get(3),
        })
        .collect();

    let indexes = client
        .query(
            "SELECT ic.relname::text, pg_get_indexdef(i.indexrelid), i.indisunique,
                    (i.indkey::int2[])[0:i.indnkeyatts - 1], i.indisreplident
               FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
              WHERE i.indrelid = $1
                AND NOT EXISTS (SELECT 1 FROM pg_constraint k
                                 WHERE k.conrelid = i.indrelid AND k.conindid = i.indexrelid
                                   AND k.contype IN ('p', 'u', 'x'))
              ORDER BY ic.relname",
            &[&oid],
        )
        .await
        .pg_context(ctx)?
        .iter()
        .map(|r| IndexDef {
            name: r.get(0),
            definition: r.get(1),
            unique: r.get(2),
            key_columns: r.get(3),
            replica_identity: r.get(4),
        })
        .collect();

    let replica_identity_index: Option<String> = client
        .query_opt(
            "SELECT ic.relname::text FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
              WHERE i.indrelid = $1 AND i.indisreplident",
            &[&oid],
        )
        .await
        .pg_context(ctx)?
        .map(|r| r.get(0));

    let statistics = client
        .query(
            "SELECT pg_get_statisticsobjdef(oid) FROM pg_statistic_ext WHERE stxrelid = $1",
            &[&oid],
        )
        .await
        .pg_context(ctx)?
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect();

    // Table and column privileges, except the owner's own (implicit on the new table).
    let grants = client
        .query(
            "SELECT CASE WHEN g.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(g.grantee)) END,
                    g.privilege_type, g.is_grantable, NULL::text
               FROM pg_class c, aclexplode(c.relacl) g
              WHERE c.oid = $1 AND g.grantee <> c.relowner
             UNION ALL
             SELECT CASE WHEN g.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(g.grantee)) END,
                    g.privilege_type, g.is_grantable, a.attname::text
               FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid, aclexplode(a.attacl) g
              WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
                AND g.grantee <> c.relowner",
            &[&oid],
        )
        .await
        .pg_context(ctx)?
        .iter()
        .map(|r| Grant {
            grantee: r.get(0),
            privilege: r.get(1),
            grantable: r.get(2),
            column: r.get(3),
        })
        .collect();

    Ok(TableDef {
        oid,
        table: table.clone(),
        relkind: row.get(1),
        persistence: row.get(2),
        is_partition: row.get(3),
        is_typed: row.get(4),
        in_inheritance: row.get(5),
        row_security: row.get(6),
        replica_identity: row.get(7),
        replica_identity_index,
        owner: row.get(8),
        comment: row.get(9),
        columns,
        constraints,
        indexes,
        statistics,
        grants,
    })
}

async fn read_sequence(client: &impl GenericClient, qualified: &str) -> Result<SequenceDef> {
    let ctx = || format!("reading sequence {qualified}");
    let meta = client
        .query_one(
            "SELECT n.nspname::text, c.relname::text, s.seqstart, s.seqincrement, s.seqmin,
                    s.seqmax, s.seqcache, s.seqcycle
               FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid
               JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE s.seqrelid = $1::text::regclass",
            &[&qualified],
        )
        .await
        .pg_context(ctx)?;
    let schema: String = meta.get(0);
    let name: String = meta.get(1);
    let state = client
        .query_one(
            &format!(
                "SELECT last_value, is_called FROM {}.{}",
                quote_ident(&schema),
                quote_ident(&name)
            ),
            &[],
        )
        .await
        .pg_context(ctx)?;
    Ok(SequenceDef {
        schema,
        name,
        start: meta.get(2),
        increment: meta.get(3),
        min: meta.get(4),
        max: meta.get(5),
        cache: meta.get(6),
        cycle: meta.get(7),
        last_value: state.get(0),
        is_called: state.get(1),
    })
}

pub async fn read_dependents(client: &impl GenericClient, oid: u32) -> Result<Dependents> {
    let ctx = || "reading the objects that depend on the table".to_string();
    let names = |rows: Vec<tokio_postgres::Row>| -> Vec<String> {
        rows.iter().map(|r| r.get::<_, String>(0)).collect()
    };
    Ok(Dependents {
        views: names(
            client
                .query(
                    "SELECT DISTINCT v.oid::regclass::text
                       FROM pg_depend d
                       JOIN pg_rewrite r ON r.oid = d.objid
                       JOIN pg_class v ON v.oid = r.ev_class
                      WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass
                        AND d.refobjid = $1 AND v.oid <> $1",
                    &[&oid],
                )
                .await
                .pg_context(ctx)?,
        ),
        referencing_foreign_keys: names(
            client
                .query(
                    "SELECT conname || ' on ' || conrelid::regclass::text FROM pg_constraint
                      WHERE confrelid = $1 AND contype = 'f' AND conrelid <> $1",
                    &[&oid],
                )
                .await
                .pg_context(ctx)?,
        ),
        triggers: names(
            client
                .query(
                    "SELECT tgname::text FROM pg_trigger WHERE tgrelid = $1 AND NOT tgisinternal",
                    &[&oid],
                )
                .await
                .pg_context(ctx)?,
        ),
        policies: names(
            client
                .query("SELECT polname::text FROM pg_policy WHERE polrelid = $1", &[&oid])
                .await
                .pg_context(ctx)?,
        ),
        rules: names(
            client
                .query(
                    "SELECT rulename::text FROM pg_rewrite WHERE ev_class = $1 AND rulename <> '_RETURN'",
                    &[&oid],
                )
                .await
                .pg_context(ctx)?,
        ),
        publications: names(
            client
                .query(
                    "SELECT p.pubname::text FROM pg_publication_rel pr
                       JOIN pg_publication p ON p.oid = pr.prpubid WHERE pr.prrelid = $1",
                    &[&oid],
                )
                .await
                .pg_context(ctx)?,
        ),
    })
}
