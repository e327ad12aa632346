//! The `--aggregate` SPEC of a rollup, and the columns it materializes.
//!
//! A SPEC is a comma-separated list of calls: `ohlcv(price, volume)`, `first(c)`,
//! `last(c)`, `min(c)`, `max(c)`, `sum(c)`, `count(c)`, `count(*)`, `avg(c)`. Every
//! function is re-aggregable, so a rollup can read another rollup: each output column
//! records the function and the column of the ChronoTable it aggregates (`base`), and a
//! rollup over a rollup finds, for each function it needs, the column of its source that
//! already holds it. `avg` keeps a hidden sum and count (`_sum_<c>`, `_count_<c>`) so the
//! next level can average correctly.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::ident::parse_identifier;

/// What an output column holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Func {
    /// The value of the earliest row (ties: the smallest value); NULLs ignored.
    First,
    /// The value of the latest row (ties: the greatest value); NULLs ignored.
    Last,
    Min,
    Max,
    Sum,
    Count,
    CountAll,
    /// `sum / count`, from the rollup's own hidden sum and count.
    Avg,
    /// The hidden sum behind an `avg`.
    AvgSum,
    /// The hidden count behind an `avg`.
    AvgCount,
}

impl Func {
    fn name(self) -> &'static str {
        match self {
            Func::First => "first",
            Func::Last => "last",
            Func::Min => "min",
            Func::Max => "max",
            Func::Sum | Func::AvgSum => "sum",
            Func::Count | Func::AvgCount => "count",
            Func::CountAll => "count(*)",
            Func::Avg => "avg",
        }
    }

    /// Whether the function needs a numeric column.
    pub fn numeric(self) -> bool {
        matches!(self, Func::Sum | Func::Avg | Func::AvgSum | Func::AvgCount)
    }
}

/// One materialized column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputColumn {
    pub name: String,
    pub func: Func,
    /// The ChronoTable column aggregated (None for `count(*)`).
    pub base: Option<String>,
    /// The columns of the direct source read: the base column for a ChronoTable source;
    /// for a rollup source, the source's column(s) holding this function (sum then count
    /// for `avg`). Empty for `count(*)` over a ChronoTable.
    pub inputs: Vec<String>,
    /// The base column is a floating-point type (`avg` stays in float8).
    pub float: bool,
}

impl OutputColumn {
    /// Hidden helper columns (`_sum_*`, `_count_*`) are not part of the user's SPEC.
    pub fn hidden(&self) -> bool {
        matches!(self.func, Func::AvgSum | Func::AvgCount)
    }
}

/// A call of the SPEC, before it is resolved against a source.
#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    Ohlcv { price: String, volume: String },
    One { func: Func, column: Option<String> },
}

/// Parses a SPEC such as `ohlcv(price, volume), avg(price)`.
pub fn parse(spec: &str) -> Result<Vec<Call>> {
    let bad = |why: String| Error::invalid(format!("invalid --aggregate {spec:?}: {why}"));
    if spec.trim().is_empty() {
        return Err(bad("it names no aggregate".into()));
    }
    let mut calls = Vec::new();
    for item in split_top_level(spec).map_err(&bad)? {
        let item = item.trim();
        if item.is_empty() {
            return Err(bad("an empty item (two commas in a row?)".into()));
        }
        let open = item
            .find('(')
            .ok_or_else(|| bad(format!("{item:?} is not a call like max(price)")))?;
        if !item.ends_with(')') {
            return Err(bad(format!("{item:?} does not end with ')'")));
        }
        let func = item[..open].trim().to_ascii_lowercase();
        let args: Vec<&str> = item[open + 1..item.len() - 1]
            .split(',')
            .map(str::trim)
            .collect();
        let column = |arg: &str| -> Result<String> {
            parse_identifier(arg).map_err(|e| bad(format!("in {item:?}: {e}")))
        };
        let one = |args: &[&str]| -> Result<String> {
            match args {
                [a] if !a.is_empty() && *a != "*" => column(a),
                _ => Err(bad(format!(
                    "{func}() takes one column, as in {func}(price)"
                ))),
            }
        };
        let call = match func.as_str() {
            "ohlcv" => match args.as_slice() {
                [p, v] if !p.is_empty() && !v.is_empty() => Call::Ohlcv {
                    price: column(p)?,
                    volume: column(v)?,
                },
                _ => {
                    return Err(bad(
                        "ohlcv() takes a price and a volume column, as in ohlcv(price, volume)"
                            .into(),
                    ));
                }
            },
            "count" if args.as_slice() == ["*"] => Call::One {
                func: Func::CountAll,
                column: None,
            },
            "first" | "last" | "min" | "max" | "sum" | "count" | "avg" => Call::One {
                func: match func.as_str() {
                    "first" => Func::First,
                    "last" => Func::Last,
                    "min" => Func::Min,
                    "max" => Func::Max,
                    "sum" => Func::Sum,
                    "count" => Func::Count,
                    _ => Func::Avg,
                },
                column: Some(one(&args)?),
            },
            other => {
                return Err(bad(format!(
                    "unknown function {other:?}; use ohlcv, first, last, min, max, sum, count or avg"
                )));
            }
        };
        calls.push(call);
    }
    Ok(calls)
}

fn split_top_level(spec: &str) -> std::result::Result<Vec<&str>, String> {
    let mut items = Vec::new();
    let (mut depth, mut start, mut quoted) = (0i32, 0usize, false);
    for (i, c) in spec.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted => {
                depth -= 1;
                if depth < 0 {
                    return Err("unbalanced ')'".into());
                }
            }
            ',' if !quoted && depth == 0 => {
                items.push(&spec[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 || quoted {
        return Err("unbalanced parentheses or quotes".into());
    }
    items.push(&spec[start..]);
    Ok(items)
}

/// A column of the direct source, as the planner sees it.
pub trait SourceColumns {
    /// For a ChronoTable: whether the column exists and whether it is a float / numeric.
    fn table_column(&self, name: &str) -> Option<ColumnInfo>;
    /// For a rollup: its column holding `func` of `base` (None for a ChronoTable).
    fn rolled(&self) -> Option<&[OutputColumn]>;
}

#[derive(Debug, Clone, Copy)]
pub struct ColumnInfo {
    pub numeric: bool,
    pub float: bool,
}

/// Resolves the calls against the source into the columns to materialize, in order.
pub fn plan(
    calls: &[Call],
    source: &dyn SourceColumns,
    source_name: &str,
) -> Result<Vec<OutputColumn>> {
    let mut out: Vec<OutputColumn> = Vec::new();
    let mut push = |name: String, func: Func, base: Option<&str>| -> Result<()> {
        let column = resolve(func, base, source, source_name)?;
        out.push(OutputColumn { name, ..column });
        Ok(())
    };
    for call in calls {
        match call {
            Call::Ohlcv { price, volume } => {
                push("open".into(), Func::First, Some(price))?;
                push("high".into(), Func::Max, Some(price))?;
                push("low".into(), Func::Min, Some(price))?;
                push("close".into(), Func::Last, Some(price))?;
                push("volume".into(), Func::Sum, Some(volume))?;
            }
            Call::One {
                func: Func::CountAll,
                ..
            } => push("count_all".into(), Func::CountAll, None)?,
            Call::One {
                func: Func::Avg,
                column: Some(c),
            } => {
                push(format!("avg_{c}"), Func::Avg, Some(c))?;
                push(format!("_sum_{c}"), Func::AvgSum, Some(c))?;
                push(format!("_count_{c}"), Func::AvgCount, Some(c))?;
            }
            Call::One { func, column } => {
                let c = column.as_deref().unwrap_or_default();
                push(format!("{}_{c}", func.name()), *func, Some(c))?;
            }
        }
    }
    Ok(out)
}

fn resolve(
    func: Func,
    base: Option<&str>,
    source: &dyn SourceColumns,
    source_name: &str,
) -> Result<OutputColumn> {
    let described = match base {
        Some(b) => format!("{}({b})", func.name()),
        None => "count(*)".into(),
    };
    let Some(rolled) = source.rolled() else {
        // A ChronoTable: the base column is read directly.
        let (inputs, float) = match base {
            None => (Vec::new(), false),
            Some(b) => {
                let info = source.table_column(b).ok_or_else(|| {
                    Error::invalid(format!("{described}: {source_name} has no column {b:?}"))
                })?;
                if func.numeric() && !info.numeric {
                    return Err(Error::invalid(format!(
                        "{described}: column {b:?} of {source_name} is not numeric"
                    )));
                }
                (vec![b.to_owned()], info.float)
            }
        };
        return Ok(OutputColumn {
            name: String::new(),
            func,
            base: base.map(str::to_owned),
            inputs,
            float,
        });
    };
    // A rollup: find the source columns that already hold what we need.
    let find = |accept: &[Func]| {
        rolled
            .iter()
            .find(|c| accept.contains(&c.func) && c.base.as_deref() == base)
    };
    let needs = |accept: &[Func], what: &str| {
        find(accept).ok_or_else(|| {
            Error::invalid(format!(
                "{described} cannot be re-aggregated from {source_name}: it has no {what}{}; \
                 add it to {source_name}'s --aggregate",
                base.map(|b| format!(" of {b:?}")).unwrap_or_default()
            ))
        })
    };
    let (inputs, float) = match func {
        Func::First | Func::Last | Func::Min | Func::Max => {
            let c = needs(&[func], func.name())?;
            (vec![c.name.clone()], c.float)
        }
        Func::Sum | Func::AvgSum => {
            let c = needs(&[Func::Sum, Func::AvgSum], "sum")?;
            (vec![c.name.clone()], c.float)
        }
        Func::Count | Func::AvgCount => {
            let c = needs(&[Func::Count, Func::AvgCount], "count")?;
            (vec![c.name.clone()], false)
        }
        Func::CountAll => (
            vec![needs(&[Func::CountAll], "count(*)")?.name.clone()],
            false,
        ),
        Func::Avg => {
            let sum = needs(&[Func::Sum, Func::AvgSum], "sum (for the average)")?;
            let count = needs(&[Func::Count, Func::AvgCount], "count (for the average)")?;
            (vec![sum.name.clone(), count.name.clone()], sum.float)
        }
    };
    Ok(OutputColumn {
        name: String::new(),
        func,
        base: base.map(str::to_owned),
        inputs,
        float,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Table;
    impl SourceColumns for Table {
        fn table_column(&self, name: &str) -> Option<ColumnInfo> {
            match name {
                "price" => Some(ColumnInfo {
                    numeric: true,
                    float: true,
                }),
                "volume" => Some(ColumnInfo {
                    numeric: true,
                    float: false,
                }),
                "note" => Some(ColumnInfo {
                    numeric: false,
                    float: false,
                }),
                _ => None,
            }
        }
        fn rolled(&self) -> Option<&[OutputColumn]> {
            None
        }
    }

    struct Rolled(Vec<OutputColumn>);
    impl SourceColumns for Rolled {
        fn table_column(&self, _: &str) -> Option<ColumnInfo> {
            None
        }
        fn rolled(&self) -> Option<&[OutputColumn]> {
            Some(&self.0)
        }
    }

    #[test]
    fn parses_and_plans_ohlcv_and_functions() {
        let calls = parse("ohlcv(price, volume), avg(price), COUNT(*), max(\"price\")").unwrap();
        let cols = plan(&calls, &Table, "t").unwrap();
        let names: Vec<&str> = cols.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "open",
                "high",
                "low",
                "close",
                "volume",
                "avg_price",
                "_sum_price",
                "_count_price",
                "count_all",
                "max_price"
            ]
        );
        assert!(cols[5].float && !cols[4].float);
    }

    #[test]
    fn a_rollup_reads_the_columns_of_its_source() {
        let one_min = plan(
            &parse("ohlcv(price, volume), avg(volume)").unwrap(),
            &Table,
            "t",
        )
        .unwrap();
        let hour = plan(
            &parse("ohlcv(price, volume), sum(volume), count(volume)").unwrap(),
            &Rolled(one_min.clone()),
            "m",
        )
        .unwrap();
        assert_eq!(hour[0].inputs, ["open"]);
        assert_eq!(hour[3].inputs, ["close"]);
        assert_eq!(hour[4].inputs, ["volume"]);
        assert_eq!(hour[6].inputs, ["_count_volume"]);
        let err = plan(&parse("avg(price)").unwrap(), &Rolled(one_min), "m").unwrap_err();
        assert!(
            err.to_string().contains("cannot be re-aggregated from m"),
            "{err}"
        );
    }

    #[test]
    fn refuses_bad_specs() {
        for (spec, why) in [
            ("", "names no aggregate"),
            ("median(price)", "unknown function"),
            ("max(price", "unbalanced"),
            ("max price", "not a call"),
            ("ohlcv(price)", "takes a price and a volume"),
            ("sum(*)", "takes one column"),
            ("max(a, b)", "takes one column"),
            ("max(price),,min(price)", "empty item"),
            ("max(pri;ce)", "invalid"),
        ] {
            let err = parse(spec).unwrap_err().to_string();
            assert!(err.contains(why), "{spec:?}: {err}");
        }
        let err = plan(&parse("max(nope)").unwrap(), &Table, "t").unwrap_err();
        assert!(err.to_string().contains("has no column \"nope\""), "{err}");
        let err = plan(&parse("sum(note)").unwrap(), &Table, "t").unwrap_err();
        assert!(err.to_string().contains("not numeric"), "{err}");
    }
}
