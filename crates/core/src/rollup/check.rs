//! Checking a rollup against the same aggregation recomputed from scratch from its
//! ChronoTable, over the materialized range (buckets below the watermark). Used by
//! `lakets verify` and by the tests.
//!
//! Floating-point sums and averages are compared with a relative tolerance of 1e-9: their
//! rounding depends on the order rows are added in, which differs between levels.

use tokio_postgres::GenericClient;

use super::{Rollup, format_micros};
use crate::error::{PgResultExt, Result};
use crate::ident::quote_ident;

#[derive(Debug, Clone, serde::Serialize)]
pub struct RollupCheck {
    pub rollup: String,
    pub watermark: Option<String>,
    /// Invalidations not yet consumed: the buckets they name may be stale until the next
    /// refresh.
    pub pending_invalidations: i64,
    /// (bucket, group) rows missing, unexpected or different.
    pub differing_rows: i64,
    /// The first few of them.
    pub examples: Vec<String>,
    pub ok: bool,
}

pub async fn check_rollup(client: &impl GenericClient, rollup: &Rollup) -> Result<RollupCheck> {
    let watermark = rollup
        .watermark
        .map(format_micros)
        .unwrap_or_else(|| "-infinity".into());
    let bound = rollup.bucket_type.from_timestamptz("$1::text::timestamptz");
    // Rows of dropped chunks are gone from the source but stay aggregated in the rollup (it
    // outlives the raw data): compare only buckets wholly after the last dropped chunk.
    let dropped_until = crate::catalog::registry::dropped_ranges(client, &rollup.root)
        .await?
        .into_iter()
        .map(|(_, end)| end)
        .max();
    let retained_from = dropped_until
        .map(|t| format_micros(super::ceil(t, rollup.width_micros)))
        .unwrap_or_else(|| "-infinity".into());
    let lower = rollup.bucket_type.from_timestamptz("$2::text::timestamptz");
    let types = client
        .query(
            "SELECT a.attname::text, a.atttypid IN (700, 701)
               FROM pg_attribute a
              WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped",
            &[&rollup.table.quoted()],
        )
        .await
        .pg_context(|| format!("reading the columns of {}", rollup.table))?;
    let is_float = |c: &str| {
        types
            .iter()
            .any(|r| r.get::<_, String>(0) == c && r.get::<_, bool>(1))
    };
    let join: Vec<String> = std::iter::once("m.bucket = r.bucket".to_owned())
        .chain(rollup.group_by.iter().map(|g| {
            let g = quote_ident(g);
            format!("m.{g} IS NOT DISTINCT FROM r.{g}")
        }))
        .collect();
    let differs: Vec<String> = rollup
        .columns
        .iter()
        .map(|c| {
            let q = quote_ident(&c.name);
            if is_float(&c.name) {
                format!(
                    "NOT (m.{q} IS NOT DISTINCT FROM r.{q}
                          OR abs(m.{q} - r.{q}) <= 1e-9 * greatest(abs(m.{q}), abs(r.{q}), 1))"
                )
            } else {
                format!("m.{q} IS DISTINCT FROM r.{q}")
            }
        })
        .collect();
    let label: Vec<String> = std::iter::once("coalesce(m.bucket, r.bucket)::text".to_owned())
        .chain(rollup.group_by.iter().map(|g| {
            let g = quote_ident(g);
            format!("coalesce(m.{g}, r.{g})::text")
        }))
        .collect();
    let time = format!("s.{}", quote_ident(&rollup.root_time_column));
    let sql = format!(
        "WITH m AS (SELECT * FROM {table} WHERE bucket < {bound} AND bucket >= {lower}),
              r AS ({scratch})
         SELECT concat_ws(' ', {label}),
                CASE WHEN m.bucket IS NULL THEN 'missing'
                     WHEN r.bucket IS NULL THEN 'unexpected' ELSE 'different' END
           FROM m FULL JOIN r ON {join}
          WHERE m.bucket IS NULL OR r.bucket IS NULL OR {differs}
          ORDER BY 1",
        table = rollup.table.quoted(),
        scratch = rollup.select_from_root(&format!("WHERE {time} < {bound} AND {time} >= {lower}")),
        label = label.join(", "),
        join = join.join(" AND "),
        differs = if differs.is_empty() {
            "false".to_owned()
        } else {
            differs.join(" OR ")
        },
    );
    let rows = client
        .query(&sql, &[&watermark, &retained_from])
        .await
        .pg_context(|| format!("recomputing rollup {} from scratch", rollup.name))?;
    let pending =
        crate::catalog::rollup_registry::count_invalidations(client, &rollup.name).await?;
    Ok(RollupCheck {
        rollup: rollup.name.clone(),
        watermark: rollup.watermark.map(format_micros),
        pending_invalidations: pending,
        differing_rows: rows.len() as i64,
        examples: rows
            .iter()
            .take(5)
            .map(|r| format!("{} {}", r.get::<_, String>(1), r.get::<_, String>(0)))
            .collect(),
        ok: rows.is_empty(),
    })
}
