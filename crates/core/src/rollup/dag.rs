//! The rollup DAG: refresh order (a rollup after the rollup it reads) and cycle detection.

use std::collections::{BTreeMap, BTreeSet};

use super::Rollup;
use crate::error::{Error, Result};

/// Names in topological order: every rollup after its source; ties by name, so the order
/// is stable. A cycle (possible only through hand edits of the registry) is an error.
pub fn topological(rollups: &[Rollup]) -> Result<Vec<String>> {
    order(
        rollups
            .iter()
            .map(|r| (r.name.as_str(), r.source_rollup()))
            .collect(),
    )
}

/// The same over (name, source) pairs.
pub fn order(edges: Vec<(&str, Option<&str>)>) -> Result<Vec<String>> {
    let names: BTreeSet<&str> = edges.iter().map(|e| e.0).collect();
    let mut waiting_on: BTreeMap<&str, usize> = BTreeMap::new();
    let mut readers: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (name, source) in &edges {
        let pending = source.filter(|s| names.contains(s));
        waiting_on.insert(name, usize::from(pending.is_some()));
        if let Some(s) = pending {
            readers.entry(s).or_default().push(name);
        }
    }
    let mut ready: BTreeSet<&str> = waiting_on
        .iter()
        .filter(|(_, n)| **n == 0)
        .map(|(name, _)| *name)
        .collect();
    let mut out = Vec::with_capacity(edges.len());
    while let Some(next) = ready.pop_first() {
        out.push(next.to_owned());
        for reader in readers.get(next).into_iter().flatten() {
            let n = waiting_on.get_mut(reader).expect("known");
            *n -= 1;
            if *n == 0 {
                ready.insert(reader);
            }
        }
    }
    if out.len() < names.len() {
        let stuck: Vec<&str> = waiting_on
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(name, _)| *name)
            .collect();
        return Err(Error::Conflict(format!(
            "the rollups {} read each other in a cycle; drop one of them",
            stuck.join(", ")
        )));
    }
    Ok(out)
}

/// `name` and every rollup that reads it, directly or not, in refresh order.
pub fn with_readers(rollups: &[Rollup], name: &str) -> Result<Vec<String>> {
    let all = topological(rollups)?;
    let mut included: BTreeSet<String> = BTreeSet::from([name.to_owned()]);
    let mut out = Vec::new();
    for n in all {
        let rollup = rollups.iter().find(|r| r.name == n).expect("listed");
        if n == name || rollup.source_rollup().is_some_and(|s| included.contains(s)) {
            included.insert(n.clone());
            out.push(n);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_come_first_not_alphabetical_order() {
        let order = order(vec![
            ("ohlcv_1day", Some("ohlcv_1hour")),
            ("ohlcv_1hour", Some("ohlcv_1min")),
            ("ohlcv_1min", None),
            ("a_other", None),
        ])
        .unwrap();
        assert_eq!(
            order,
            ["a_other", "ohlcv_1min", "ohlcv_1hour", "ohlcv_1day"]
        );
    }

    #[test]
    fn a_cycle_is_an_error_naming_its_members() {
        let err = order(vec![("a", Some("b")), ("b", Some("a")), ("c", None)]).unwrap_err();
        assert!(
            err.to_string().contains("a, b read each other in a cycle"),
            "{err}"
        );
        let err = order(vec![("self", Some("self"))]).unwrap_err();
        assert!(err.to_string().contains("self"), "{err}");
    }
}
