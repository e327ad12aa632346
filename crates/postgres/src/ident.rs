//! SQL identifiers: parsing user-supplied names and quoting them for DDL.
//!
//! Names typed by users follow PostgreSQL's rules: an unquoted part has its ASCII letters
//! folded to lower case (others are kept as written, as PostgreSQL does) and may hold
//! only letters, digits, `_` and `$`; a part in double quotes is taken
//! verbatim (`""` is a quote). Anything else is refused here, before it reaches SQL, and
//! every identifier we put into a statement goes through [`quote_ident`].

use std::fmt;

use crate::error::{Error, Result};

/// PostgreSQL truncates identifiers longer than this (NAMEDATALEN - 1) without an error;
/// we refuse them instead, so two long names can never silently become the same object.
pub const MAX_IDENT_BYTES: usize = 63;

/// A possibly schema-qualified name as the user wrote it, already case-folded.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QualifiedName {
    pub schema: Option<String>,
    pub name: String,
}

/// The schema of a name typed without one.
pub const DEFAULT_SCHEMA: &str = "public";

impl QualifiedName {
    /// The schema the name is resolved in: the one it names, else [`DEFAULT_SCHEMA`].
    pub fn schema_or_default(&self) -> &str {
        self.schema.as_deref().unwrap_or(DEFAULT_SCHEMA)
    }

    pub fn parse(input: &str) -> Result<Self> {
        let parts = split_identifier_parts(input)?;
        match parts.as_slice() {
            [name] => Ok(QualifiedName {
                schema: None,
                name: name.clone(),
            }),
            [schema, name] => Ok(QualifiedName {
                schema: Some(schema.clone()),
                name: name.clone(),
            }),
            _ => Err(Error::invalid(format!(
                "invalid name {input:?}: expected [schema.]name"
            ))),
        }
    }
}

impl fmt::Display for QualifiedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.schema {
            Some(schema) => write!(f, "{}.{}", quote_ident(schema), quote_ident(&self.name)),
            None => f.write_str(&quote_ident(&self.name)),
        }
    }
}

/// A table resolved against the catalog: schema and name exactly as stored.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct TableName {
    pub schema: String,
    pub name: String,
}

impl TableName {
    pub fn new(schema: impl Into<String>, name: impl Into<String>) -> Self {
        TableName {
            schema: schema.into(),
            name: name.into(),
        }
    }

    /// `"schema"."name"`, safe to splice into SQL.
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }

    /// Another relation in the same schema.
    pub fn sibling(&self, name: impl Into<String>) -> TableName {
        TableName::new(self.schema.clone(), name)
    }
}

impl fmt::Display for TableName {
    /// The readable form used in messages: `schema.name`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

/// Parses one identifier (no schema), for example a column name.
pub fn parse_identifier(input: &str) -> Result<String> {
    let parts = split_identifier_parts(input)?;
    match parts.as_slice() {
        [one] => Ok(one.clone()),
        _ => Err(Error::invalid(format!(
            "invalid identifier {input:?}: a dot is only allowed inside double quotes"
        ))),
    }
}

fn split_identifier_parts(input: &str) -> Result<Vec<String>> {
    let bad = |why: &str| Error::invalid(format!("invalid name {input:?}: {why}"));
    if input.is_empty() {
        return Err(bad("it is empty"));
    }
    let mut parts = Vec::new();
    let mut chars = input.chars().peekable();
    loop {
        let mut part = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        part.push('"');
                    }
                    Some('"') => break,
                    Some('\0') => return Err(bad("it contains a NUL character")),
                    Some(c) => part.push(c),
                    None => return Err(bad("a double quote is not closed")),
                }
            }
            if part.is_empty() {
                return Err(bad("a quoted name is empty"));
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == '.' {
                    break;
                }
                let ok = if part.is_empty() {
                    c.is_alphabetic() || c == '_'
                } else {
                    c.is_alphanumeric() || c == '_' || c == '$'
                };
                if !ok {
                    return Err(bad(&format!(
                        "unexpected character {c:?}; an unquoted name may hold only letters, \
                         digits, _ and $ (put the name in double quotes to use other characters)"
                    )));
                }
                // PostgreSQL folds ASCII letters only: `Äpfel` stays `Äpfel`.
                part.push(c.to_ascii_lowercase());
                chars.next();
            }
            if part.is_empty() {
                return Err(bad("a name part is empty"));
            }
        }
        if part.len() > MAX_IDENT_BYTES {
            return Err(bad(&format!(
                "{:?} is longer than PostgreSQL's {MAX_IDENT_BYTES}-byte identifier limit",
                part
            )));
        }
        parts.push(part);
        match chars.next() {
            None => return Ok(parts),
            Some('.') => continue,
            Some(c) => {
                return Err(bad(&format!(
                    "unexpected character {c:?} after a quoted name"
                )));
            }
        }
    }
}

/// Quotes an identifier for SQL: always in double quotes, inner quotes doubled.
pub fn quote_ident(ident: &str) -> String {
    let mut out = String::with_capacity(ident.len() + 2);
    out.push('"');
    for c in ident.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Quotes a string literal for DDL, where parameters cannot be bound (COMMENT ON, bounds).
/// A plain literal's backslashes mean what they say only under
/// `standard_conforming_strings = on` (which lakets' sessions set, but a caller's session
/// need not have): text holding a backslash is written as an escape string (`E'...'`),
/// whose meaning does not depend on the setting.
pub fn quote_literal(value: &str) -> String {
    let escape = value.contains('\\');
    let mut out = String::with_capacity(value.len() + 3);
    if escape {
        out.push('E');
    }
    out.push('\'');
    for c in value.chars() {
        if c == '\'' || (escape && c == '\\') {
            out.push(c);
        }
        out.push(c);
    }
    out.push('\'');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_fold_to_lower_case() {
        let q = QualifiedName::parse("Public.Stock_Ticks").unwrap();
        assert_eq!(q.schema.as_deref(), Some("public"));
        assert_eq!(q.name, "stock_ticks");
    }

    #[test]
    fn only_ascii_letters_fold_as_in_postgres() {
        // PostgreSQL: CREATE TABLE Äpfel creates "Äpfel", not "äpfel".
        assert_eq!(parse_identifier("Äpfel").unwrap(), "Äpfel");
        assert_eq!(parse_identifier("ÄPFEL").unwrap(), "Äpfel");
        assert_eq!(parse_identifier("STRASSE_ß").unwrap(), "strasse_ß");
        assert_ne!(
            parse_identifier("Äpfel").unwrap(),
            parse_identifier("äpfel").unwrap()
        );
    }

    #[test]
    fn quoted_names_are_verbatim() {
        let q = QualifiedName::parse(r#""My Schema"."Tick""s""#).unwrap();
        assert_eq!(q.schema.as_deref(), Some("My Schema"));
        assert_eq!(q.name, "Tick\"s");
        assert_eq!(q.to_string(), r#""My Schema"."Tick""s""#);
    }

    #[test]
    fn injection_attempts_are_refused() {
        for bad in [
            r#"a"; drop table x; --"#,
            "x; drop table y",
            "x--",
            "a b",
            "a.b.c",
            "",
            ".x",
            "x.",
            r#""""#,
            "1abc",
            "a/*b",
        ] {
            assert!(
                QualifiedName::parse(bad).is_err(),
                "{bad:?} must be refused"
            );
        }
    }

    #[test]
    fn overlong_names_are_refused() {
        assert!(parse_identifier(&"a".repeat(63)).is_ok());
        let err = parse_identifier(&"a".repeat(64)).unwrap_err().to_string();
        assert!(err.contains("63-byte"), "{err}");
    }

    #[test]
    fn quoting_round_trips_hostile_text() {
        let hostile = r#"a"; drop table x; --"#;
        assert_eq!(quote_ident(hostile), r#""a""; drop table x; --""#);
        let parsed = parse_identifier(&quote_ident(hostile)).unwrap();
        assert_eq!(parsed, hostile);
        assert_eq!(quote_literal("it's"), "'it''s'");
        // Whatever standard_conforming_strings says, a backslash stays a backslash.
        assert_eq!(quote_literal(r"a\' OR 1=1 --"), r"E'a\\'' OR 1=1 --'");
    }
}
