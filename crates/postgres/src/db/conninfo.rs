//! The TLS options of a connection string, taken out before tokio-postgres parses the rest.
//!
//! tokio-postgres knows `sslmode` only up to `require` and has no `sslrootcert`, so a
//! libpq string such as `...?sslmode=verify-full&sslrootcert=/etc/ca.pem` would be refused
//! (or, worse, silently downgraded by a hand-rolled workaround). We take those keys out of
//! both forms libpq accepts (URI and key=value), check them, and hand back the remainder.

use std::path::PathBuf;

use crate::error::{Error, Result};

/// libpq's `sslmode`, all six values (`allow` is taken as `prefer`: both fall back to a
/// plaintext session, and trying TLS first is the safer order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    Disable,
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<Self> {
        Ok(match value {
            "disable" => SslMode::Disable,
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(Error::invalid(format!(
                    "invalid sslmode {other:?} in the database URL (expected disable, allow, \
                     prefer, require, verify-ca or verify-full)"
                )));
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Whether the server's certificate chain is checked against trusted roots.
    pub fn verifies(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }
}

/// How the connection is secured: the mode and, for the verifying modes, the roots.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsOptions {
    pub mode: SslMode,
    /// `sslrootcert`: a PEM file of trusted CAs, or `system` for the bundled web roots.
    pub root_cert: Option<PathBuf>,
}

/// Keys libpq accepts that we cannot honour: refused by name rather than ignored.
const UNSUPPORTED: &[(&str, &str)] = &[
    (
        "sslcert",
        "client certificates are not supported (the replication transport cannot present \
         one); authenticate with a password (SCRAM) over sslmode=verify-full",
    ),
    ("sslkey", "client certificates are not supported"),
    ("sslpassword", "client certificates are not supported"),
    (
        "sslcrl",
        "certificate revocation lists are not supported; rotate the server certificate or the CA instead",
    ),
    (
        "sslcrldir",
        "certificate revocation lists are not supported",
    ),
];

/// Splits `url` into the part tokio-postgres parses and the TLS options.
pub fn split_tls_options(url: &str) -> Result<(String, TlsOptions)> {
    let trimmed = url.trim_start();
    if trimmed.starts_with("postgres://") || trimmed.starts_with("postgresql://") {
        split_uri(trimmed)
    } else {
        split_key_values(url)
    }
}

fn take(tls: &mut TlsOptions, key: &str, value: &str) -> Result<bool> {
    match key {
        "sslmode" => tls.mode = SslMode::parse(value)?,
        "sslrootcert" => {
            if value.is_empty() {
                return Err(Error::invalid("sslrootcert in the database URL is empty"));
            }
            tls.root_cert = Some(PathBuf::from(value));
        }
        _ => {
            if let Some((_, why)) = UNSUPPORTED.iter().find(|(k, _)| *k == key) {
                return Err(Error::invalid(format!("{key} in the database URL: {why}")));
            }
            return Ok(false);
        }
    }
    Ok(true)
}

fn split_uri(url: &str) -> Result<(String, TlsOptions)> {
    let mut tls = TlsOptions::default();
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), tls));
    };
    let mut kept = Vec::new();
    for param in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = param.split_once('=').unwrap_or((param, ""));
        if !take(&mut tls, key, &percent_decode(value)?)? {
            kept.push(param);
        }
    }
    let rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((rest, tls))
}

fn split_key_values(text: &str) -> Result<(String, TlsOptions)> {
    let mut tls = TlsOptions::default();
    let mut kept = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(Error::invalid(format!(
                "invalid database connection string: {key:?} has no value (expected key=value \
                 pairs or a postgres:// URL)"
            )));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\'') => break,
                    Some('\\') => value.extend(chars.next()),
                    Some(c) => value.push(c),
                    None => {
                        return Err(Error::invalid(format!(
                            "invalid database connection string: the quoted value of {key} \
                             is not closed"
                        )));
                    }
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        if !take(&mut tls, &key, &value)? {
            kept.push(format!(
                "{key}='{}'",
                value.replace('\\', "\\\\").replace('\'', "\\'")
            ));
        }
    }
    Ok((kept.join(" "), tls))
}

fn percent_decode(value: &str) -> Result<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = value
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| {
                    Error::invalid(format!(
                        "invalid percent-encoding in the database URL near {:?}",
                        &value[i..]
                    ))
                })?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map_err(|_| Error::invalid("a database URL parameter is not UTF-8 once decoded"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_options_are_taken_out_and_the_rest_kept() {
        let (rest, tls) = split_tls_options(
            "postgres://u@db.example:5433/ticks?application_name=x&sslmode=verify-full&sslrootcert=%2Fetc%2Fca%20dir%2Froot.pem&connect_timeout=5",
        )
        .unwrap();
        assert_eq!(
            rest,
            "postgres://u@db.example:5433/ticks?application_name=x&connect_timeout=5"
        );
        assert_eq!(tls.mode, SslMode::VerifyFull);
        assert_eq!(tls.root_cert, Some(PathBuf::from("/etc/ca dir/root.pem")));

        let (rest, tls) = split_tls_options("postgresql://h/db?sslmode=require").unwrap();
        assert_eq!(
            (rest.as_str(), tls.mode),
            ("postgresql://h/db", SslMode::Require)
        );
        let (rest, tls) = split_tls_options("postgres://h/db").unwrap();
        assert_eq!(
            (rest.as_str(), tls),
            ("postgres://h/db", TlsOptions::default())
        );
    }

    #[test]
    fn key_value_options_are_taken_out_with_quoting_kept() {
        let (rest, tls) = split_tls_options(
            r"host=db.example user='o\'neil' sslmode = verify-ca sslrootcert='/tmp/my ca.pem' dbname=x",
        )
        .unwrap();
        assert_eq!(rest, r"host='db.example' user='o\'neil' dbname='x'");
        assert_eq!(tls.mode, SslMode::VerifyCa);
        assert_eq!(tls.root_cert, Some(PathBuf::from("/tmp/my ca.pem")));
        // What remains is still a connection string tokio-postgres reads the same way.
        let config: tokio_postgres::Config = rest.parse().unwrap();
        assert_eq!(config.get_user(), Some("o'neil"));
    }

    #[test]
    fn bad_and_unsupported_options_are_refused_by_name() {
        for (url, expect) in [
            (
                "postgres://h/db?sslmode=verify",
                "invalid sslmode \"verify\"",
            ),
            ("host=h sslmode=sometimes", "invalid sslmode"),
            (
                "postgres://h/db?sslcert=/c.pem",
                "sslcert in the database URL",
            ),
            ("host=h sslkey=/k.pem", "sslkey"),
            (
                "postgres://h/db?sslrootcert=",
                "sslrootcert in the database URL is empty",
            ),
            ("postgres://h/db?sslrootcert=%zz", "percent-encoding"),
            ("host=h user='open", "not closed"),
            ("host", "has no value"),
        ] {
            let err = split_tls_options(url).unwrap_err().to_string();
            assert!(err.contains(expect), "{url}: {err}");
        }
    }
}
