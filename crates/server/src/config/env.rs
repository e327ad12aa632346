//! `LAKETS_*` environment overrides: every key of the config file has one, named by its
//! path in upper case joined with `_`, with array entries by index:
//! `jobs.tiering_every` is `LAKETS_JOBS_TIERING_EVERY`, `tables[0].policy.drop_after` is
//! `LAKETS_TABLES_0_POLICY_DROP_AFTER`. Lists are comma-separated.
//!
//! Overrides are applied to the parsed document before it is typed, so a bad value gets the
//! same message as in the file. Other `LAKETS_*` variables (`LAKETS_LOG`, the database
//! password file, ...) are not config keys and are left alone.

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Integer,
    Bool,
    List,
}

/// Every overridable key; `*` is an array index.
const KEYS: &[(&str, Kind)] = &[
    ("database.url", Kind::Text),
    ("database.password_file", Kind::Text),
    ("service.slot", Kind::Text),
    ("service.publication", Kind::Text),
    ("service.protocol", Kind::Text),
    ("service.flush_interval", Kind::Text),
    ("service.max_message_bytes", Kind::Text),
    ("service.leader_lease", Kind::Text),
    ("log.format", Kind::Text),
    ("http.listen", Kind::Text),
    ("http.retained_wal_warning", Kind::Text),
    ("http.ready_max_lag", Kind::Text),
    ("grpc.listen", Kind::Text),
    ("grpc.admin_token_file", Kind::Text),
    ("grpc.read_token_file", Kind::Text),
    ("grpc.tls_cert_file", Kind::Text),
    ("grpc.tls_key_file", Kind::Text),
    ("grpc.allow_plaintext", Kind::Bool),
    ("grpc.max_subscribers", Kind::Integer),
    ("grpc.admin_sessions", Kind::Integer),
    ("jobs.enabled", Kind::Bool),
    ("jobs.partitions_every", Kind::Text),
    ("jobs.rollups_every", Kind::Text),
    ("jobs.tiering_every", Kind::Text),
    ("jobs.retention_every", Kind::Text),
    ("jobs.maintenance_every", Kind::Text),
    ("jobs.gate_wait", Kind::Text),
    ("jobs.vacuum_retention", Kind::Text),
    ("tables.*.name", Kind::Text),
    ("tables.*.time_column", Kind::Text),
    ("tables.*.chunk_interval", Kind::Text),
    ("tables.*.premake", Kind::Integer),
    ("tables.*.lvc.key", Kind::List),
    ("tables.*.lvc.columns", Kind::List),
    ("tables.*.sync.to", Kind::Text),
    ("tables.*.sync.partition_by", Kind::Text),
    ("tables.*.sync.source", Kind::Text),
    ("tables.*.sync.change_data_feed", Kind::Bool),
    ("tables.*.sync.deletion_vectors", Kind::Bool),
    ("tables.*.policy.tier_after", Kind::Text),
    ("tables.*.policy.drop_after", Kind::Text),
    ("rollups.*.name", Kind::Text),
    ("rollups.*.source", Kind::Text),
    ("rollups.*.bucket", Kind::Text),
    ("rollups.*.group_by", Kind::List),
    ("rollups.*.aggregate", Kind::Text),
    ("rollups.*.refresh_lag", Kind::Text),
];

/// The config's sections: a variable under one of them must name a key.
const SECTIONS: &[&str] = &[
    "DATABASE", "SERVICE", "LOG", "HTTP", "GRPC", "JOBS", "TABLES", "ROLLUPS",
];

/// Variables under a section's prefix that are not config keys.
const NOT_KEYS: &[&str] = &["LAKETS_GRPC_ADMIN_TOKEN", "LAKETS_GRPC_READ_TOKEN"];

/// The environment variable of a key path such as `jobs.tiering_every` (`*` stays `*`).
pub fn variable_name(path: &str) -> String {
    format!("LAKETS_{}", path.replace('.', "_").to_ascii_uppercase())
}

/// Every documented variable, for the README and `lakets config keys`.
pub fn variables() -> Vec<String> {
    KEYS.iter()
        .map(|(path, _)| variable_name(&path.replace('*', "<N>")))
        .collect()
}

/// Applies the matching variables of `vars` to `doc`; returns the names applied.
pub fn apply(doc: &mut toml_edit::DocumentMut, vars: &[(String, String)]) -> Result<Vec<String>> {
    let mut applied = Vec::new();
    let mut sorted: Vec<&(String, String)> = vars.iter().collect();
    sorted.sort(); // deterministic order, whatever the environment's
    for (name, value) in sorted {
        let Some((path, kind)) = match_key(name) else {
            // A misspelt override would otherwise be ignored without a word.
            if SECTIONS
                .iter()
                .any(|section| name.starts_with(&format!("LAKETS_{section}_")))
                && !NOT_KEYS.contains(&name.as_str())
            {
                let hint = if name == "LAKETS_DATABASE_PASSWORD" {
                    "a password is read from PGPASSWORD or from the file named by \
                     LAKETS_DATABASE_PASSWORD_FILE"
                } else {
                    "the variables are listed in the README's config reference; unset it or \
                     correct its name"
                };
                return Err(Error::invalid(format!(
                    "{name} is not a config key ({hint})"
                )));
            }
            continue;
        };
        set(doc, &path, kind, value, name)?;
        applied.push(name.clone());
    }
    Ok(applied)
}

/// One segment of a matched path.
#[derive(Debug, PartialEq)]
enum Segment {
    Key(String),
    Index(usize),
}

fn match_key(var: &str) -> Option<(Vec<Segment>, Kind)> {
    for (path, kind) in KEYS {
        let pattern = variable_name(path);
        let matched = match pattern.split_once('*') {
            None => (var == pattern).then_some(None),
            Some((prefix, suffix)) => var
                .strip_prefix(prefix)
                .and_then(|rest| rest.strip_suffix(suffix))
                .filter(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|digits| digits.parse::<usize>().ok())
                .map(Some),
        };
        if let Some(index) = matched {
            let segments = path
                .split('.')
                .map(|s| match s {
                    "*" => Segment::Index(index.expect("a * pattern matched with an index")),
                    key => Segment::Key(key.to_string()),
                })
                .collect();
            return Some((segments, *kind));
        }
    }
    None
}

fn set(
    doc: &mut toml_edit::DocumentMut,
    path: &[Segment],
    kind: Kind,
    raw: &str,
    var: &str,
) -> Result<()> {
    let value = match kind {
        Kind::Text => toml_edit::Value::from(raw),
        Kind::Integer => toml_edit::Value::from(
            raw.trim()
                .parse::<i64>()
                .map_err(|_| Error::invalid(format!("{var}={raw:?}: expected an integer")))?,
        ),
        Kind::Bool => toml_edit::Value::from(match raw.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => true,
            "false" | "0" | "no" | "off" => false,
            _ => {
                return Err(Error::invalid(format!(
                    "{var}={raw:?}: expected true or false"
                )));
            }
        }),
        Kind::List => {
            let mut array = toml_edit::Array::new();
            for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                array.push(part);
            }
            toml_edit::Value::Array(array)
        }
    };
    let (Segment::Key(last), parents) = path.split_last().expect("key paths are not empty") else {
        unreachable!("key paths end with a key")
    };
    let mut table: &mut dyn toml_edit::TableLike = doc.as_table_mut();
    let mut segments = parents.iter().peekable();
    while let Some(segment) = segments.next() {
        let Segment::Key(key) = segment else {
            unreachable!("an index always follows a key")
        };
        if let Some(Segment::Index(i)) = segments.peek() {
            segments.next();
            let entries = table
                .get_mut(key)
                .and_then(toml_edit::Item::as_array_of_tables_mut);
            let len = entries.as_ref().map_or(0, |a| a.len());
            table = entries.and_then(|a| a.get_mut(*i)).ok_or_else(|| {
                Error::invalid(format!(
                    "{var} addresses [[{key}]] entry {i}, but the config file has {len} \
                     (numbered from 0)"
                ))
            })?;
        } else {
            // A missing table is added inline, so it stays inside its array entry.
            if table.get(key).is_none() {
                table.insert(
                    key,
                    toml_edit::Item::Value(toml_edit::Value::InlineTable(
                        toml_edit::InlineTable::new(),
                    )),
                );
            }
            table = table
                .get_mut(key)
                .and_then(toml_edit::Item::as_table_like_mut)
                .ok_or_else(|| {
                    Error::invalid(format!("{var}: {key:?} in the config file is not a table"))
                })?;
        }
    }
    table.insert(last, toml_edit::Item::Value(value));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::interval::Interval;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const FILE: &str = "[jobs]\ntiering_every = \"1 minute\"\n\n[[tables]]\nname = \"t\"\ntime_column = \"time\"\n[tables.sync]\nto = \"/tmp/d\"\n";

    #[test]
    fn a_misspelt_variable_under_a_section_is_refused_by_name() {
        for (var, hint) in [
            ("LAKETS_SERVICE_SLOTT", "not a config key"),
            ("LAKETS_TABLES_0_NAMES", "not a config key"),
            ("LAKETS_DATABASE_PASSWORD", "PGPASSWORD"),
        ] {
            let err = Config::parse_with_env(FILE, "f", &env(&[(var, "x")]))
                .unwrap_err()
                .to_string();
            assert!(err.contains(var) && err.contains(hint), "{var}: {err}");
            assert!(!err.contains("\"x\""), "the value is not echoed: {err}");
        }
    }

    #[test]
    fn overrides_scalars_nested_and_indexed_keys() {
        let c = Config::parse_with_env(
            FILE,
            "f",
            &env(&[
                ("LAKETS_JOBS_TIERING_EVERY", "5 seconds"),
                ("LAKETS_JOBS_ENABLED", "false"),
                ("LAKETS_SERVICE_SLOT", "my_slot"),
                ("LAKETS_TABLES_0_CHUNK_INTERVAL", "2 hours"),
                ("LAKETS_TABLES_0_PREMAKE", "7"),
                ("LAKETS_TABLES_0_POLICY_TIER_AFTER", "1 day"),
                ("LAKETS_TABLES_0_LVC_KEY", "symbol, venue"),
                ("LAKETS_TABLES_0_LVC_COLUMNS", "price"),
                ("LAKETS_LOG", "debug"), // not under a section: ignored
                ("LAKETS_GRPC_ADMIN_TOKEN", "x"), // a secret, not a key: ignored
            ]),
        )
        .unwrap();
        assert_eq!(c.jobs.tiering_every, Interval::from_secs(5));
        assert!(!c.jobs.enabled);
        assert_eq!(c.service.slot.as_deref(), Some("my_slot"));
        let t = &c.tables[0];
        assert_eq!(t.chunk_interval, Interval::hours(2));
        assert_eq!(t.premake, 7);
        assert_eq!(
            t.policy.as_ref().unwrap().tier_after,
            Some(Interval::days(1))
        );
        assert_eq!(t.lvc.as_ref().unwrap().key, vec!["symbol", "venue"]);
    }

    #[test]
    fn bad_overrides_name_the_variable() {
        let e = Config::parse_with_env(FILE, "f", &env(&[("LAKETS_TABLES_3_PREMAKE", "1")]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("LAKETS_TABLES_3_PREMAKE") && e.contains("has 1"),
            "{e}"
        );
        let e = Config::parse_with_env(FILE, "f", &env(&[("LAKETS_TABLES_0_PREMAKE", "many")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("expected an integer"), "{e}");
        let e = Config::parse_with_env(FILE, "f", &env(&[("LAKETS_JOBS_TIERING_EVERY", "often")]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("LAKETS_JOBS_TIERING_EVERY") && e.contains("often"),
            "{e}"
        );
    }

    #[test]
    fn every_key_has_a_variable() {
        assert!(variables().contains(&"LAKETS_TABLES_<N>_POLICY_DROP_AFTER".to_string()));
        assert_eq!(variables().len(), KEYS.len());
    }
}
