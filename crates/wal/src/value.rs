//! Typed column values for the types a time-series table uses, decoded from pgoutput's text
//! or binary format.
//!
//! Times are kept as integers (microseconds or days since the Unix epoch) and numerics as
//! their exact decimal text, so nothing is rounded on the way to the cold tier. PostgreSQL's
//! `infinity` is `i64::MAX`/`i32::MAX` (and `-infinity` the minimum), as in its own binary
//! format. Other types are carried as [`Value::Other`] (their text form or raw bytes) and an
//! operator that cannot store them refuses the relation with a clear error.

use chrono::{NaiveDate, NaiveDateTime};

use crate::error::{Error, Result};

use super::pgoutput::PG_EPOCH_OFFSET_MICROS;

/// Days between 1970-01-01 and 2000-01-01.
const PG_EPOCH_OFFSET_DAYS: i32 = 10_957;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ColumnType {
    Bool,
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    Numeric,
    Text,
    Bytea,
    Uuid,
    Timestamptz,
    Timestamp,
    Date,
    Json,
    Jsonb,
    /// Any other type, by OID.
    Other(u32),
}

impl ColumnType {
    pub fn from_oid(oid: u32) -> Self {
        match oid {
            16 => ColumnType::Bool,
            17 => ColumnType::Bytea,
            20 => ColumnType::Int8,
            21 => ColumnType::Int2,
            23 => ColumnType::Int4,
            25 | 1043 | 1042 | 19 => ColumnType::Text,
            114 => ColumnType::Json,
            700 => ColumnType::Float4,
            701 => ColumnType::Float8,
            1082 => ColumnType::Date,
            1114 => ColumnType::Timestamp,
            1184 => ColumnType::Timestamptz,
            1700 => ColumnType::Numeric,
            2950 => ColumnType::Uuid,
            3802 => ColumnType::Jsonb,
            other => ColumnType::Other(other),
        }
    }

    pub fn is_supported(self) -> bool {
        !matches!(self, ColumnType::Other(_))
    }

    pub fn name(self) -> String {
        match self {
            ColumnType::Bool => "boolean".into(),
            ColumnType::Int2 => "smallint".into(),
            ColumnType::Int4 => "integer".into(),
            ColumnType::Int8 => "bigint".into(),
            ColumnType::Float4 => "real".into(),
            ColumnType::Float8 => "double precision".into(),
            ColumnType::Numeric => "numeric".into(),
            ColumnType::Text => "text".into(),
            ColumnType::Bytea => "bytea".into(),
            ColumnType::Uuid => "uuid".into(),
            ColumnType::Timestamptz => "timestamptz".into(),
            ColumnType::Timestamp => "timestamp".into(),
            ColumnType::Date => "date".into(),
            ColumnType::Json => "json".into(),
            ColumnType::Jsonb => "jsonb".into(),
            ColumnType::Other(oid) => format!("type oid {oid}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    /// An unchanged TOASTed column of an update: not NULL, the old value stands.
    UnchangedToast,
    Bool(bool),
    Int2(i16),
    Int4(i32),
    Int8(i64),
    Float4(f32),
    Float8(f64),
    /// Exact decimal text (`-12.3400`, `NaN`, `Infinity`).
    Numeric(String),
    Text(String),
    Bytea(Vec<u8>),
    Uuid([u8; 16]),
    /// Microseconds since the Unix epoch, UTC.
    Timestamptz(i64),
    /// Microseconds since the Unix epoch of the wall-clock time (no zone).
    Timestamp(i64),
    /// Days since the Unix epoch.
    Date(i32),
    Json(String),
    /// A value of an unsupported type: its text form, or its binary send form.
    Other {
        type_oid: u32,
        text: Option<String>,
        binary: Option<Vec<u8>>,
    },
}

impl Value {
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// A time value as microseconds since the Unix epoch (dates at midnight UTC).
    pub fn as_time_micros(&self) -> Option<i64> {
        match self {
            Value::Timestamptz(v) | Value::Timestamp(v) => Some(*v),
            Value::Date(d) => match *d {
                i32::MAX => Some(i64::MAX),
                i32::MIN => Some(i64::MIN),
                d => Some(i64::from(d) * 86_400_000_000),
            },
            _ => None,
        }
    }
}

fn err(ty: ColumnType, what: &str, bytes: &[u8]) -> Error {
    Error::Protocol(format!(
        "cannot decode a {} value from {what} {:?}",
        ty.name(),
        String::from_utf8_lossy(&bytes[..bytes.len().min(64)])
    ))
}

/// Decodes a value sent in text format.
pub fn decode_text(ty: ColumnType, bytes: &[u8]) -> Result<Value> {
    let text = std::str::from_utf8(bytes).map_err(|_| err(ty, "non-UTF-8 text", bytes))?;
    let bad = || err(ty, "text", bytes);
    Ok(match ty {
        ColumnType::Bool => match text {
            "t" => Value::Bool(true),
            "f" => Value::Bool(false),
            _ => return Err(bad()),
        },
        ColumnType::Int2 => Value::Int2(text.parse().map_err(|_| bad())?),
        ColumnType::Int4 => Value::Int4(text.parse().map_err(|_| bad())?),
        ColumnType::Int8 => Value::Int8(text.parse().map_err(|_| bad())?),
        ColumnType::Float4 => Value::Float4(parse_float(text).ok_or_else(bad)? as f32),
        ColumnType::Float8 => Value::Float8(parse_float(text).ok_or_else(bad)?),
        ColumnType::Numeric => Value::Numeric(text.to_owned()),
        ColumnType::Text => Value::Text(text.to_owned()),
        ColumnType::Json | ColumnType::Jsonb => Value::Json(text.to_owned()),
        ColumnType::Bytea => Value::Bytea(parse_bytea(text).ok_or_else(bad)?),
        ColumnType::Uuid => Value::Uuid(parse_uuid(text).ok_or_else(bad)?),
        ColumnType::Timestamptz => Value::Timestamptz(parse_timestamp(text, true).ok_or_else(bad)?),
        ColumnType::Timestamp => Value::Timestamp(parse_timestamp(text, false).ok_or_else(bad)?),
        ColumnType::Date => Value::Date(parse_date(text).ok_or_else(bad)?),
        ColumnType::Other(type_oid) => Value::Other {
            type_oid,
            text: Some(text.to_owned()),
            binary: None,
        },
    })
}

/// Decodes a value sent in binary (send/recv) format.
pub fn decode_binary(ty: ColumnType, bytes: &[u8]) -> Result<Value> {
    let bad = || err(ty, "binary", bytes);
    fn fixed<const N: usize>(b: &[u8]) -> Option<[u8; N]> {
        b.try_into().ok()
    }
    Ok(match ty {
        ColumnType::Bool => Value::Bool(fixed::<1>(bytes).ok_or_else(bad)?[0] != 0),
        ColumnType::Int2 => Value::Int2(i16::from_be_bytes(fixed(bytes).ok_or_else(bad)?)),
        ColumnType::Int4 => Value::Int4(i32::from_be_bytes(fixed(bytes).ok_or_else(bad)?)),
        ColumnType::Int8 => Value::Int8(i64::from_be_bytes(fixed(bytes).ok_or_else(bad)?)),
        ColumnType::Float4 => Value::Float4(f32::from_be_bytes(fixed(bytes).ok_or_else(bad)?)),
        ColumnType::Float8 => Value::Float8(f64::from_be_bytes(fixed(bytes).ok_or_else(bad)?)),
        ColumnType::Numeric => Value::Numeric(numeric_to_string(bytes).ok_or_else(bad)?),
        ColumnType::Text | ColumnType::Json => {
            Value::Text(std::str::from_utf8(bytes).map_err(|_| bad())?.to_owned())
                .into_json_if(ty == ColumnType::Json)
        }
        ColumnType::Jsonb => match bytes.split_first() {
            Some((1, rest)) => {
                Value::Json(std::str::from_utf8(rest).map_err(|_| bad())?.to_owned())
            }
            _ => return Err(bad()),
        },
        ColumnType::Bytea => Value::Bytea(bytes.to_vec()),
        ColumnType::Uuid => Value::Uuid(fixed(bytes).ok_or_else(bad)?),
        ColumnType::Timestamptz | ColumnType::Timestamp => {
            let raw = i64::from_be_bytes(fixed(bytes).ok_or_else(bad)?);
            let micros = match raw {
                i64::MAX | i64::MIN => raw,
                v => v.checked_add(PG_EPOCH_OFFSET_MICROS).ok_or_else(bad)?,
            };
            if ty == ColumnType::Timestamptz {
                Value::Timestamptz(micros)
            } else {
                Value::Timestamp(micros)
            }
        }
        ColumnType::Date => {
            let raw = i32::from_be_bytes(fixed(bytes).ok_or_else(bad)?);
            Value::Date(match raw {
                i32::MAX | i32::MIN => raw,
                v => v.checked_add(PG_EPOCH_OFFSET_DAYS).ok_or_else(bad)?,
            })
        }
        ColumnType::Other(type_oid) => Value::Other {
            type_oid,
            text: None,
            binary: Some(bytes.to_vec()),
        },
    })
}

impl Value {
    /// The value as a key: its input text, the same for every value PostgreSQL holds
    /// equal in a key (`-0` and `0`, `1.50` and `1.5`), so that a key read back from a
    /// table (through [`decode_text`]) and one from the stream meet. Compared this way,
    /// keys are typed values, never text formatted under some session's settings.
    pub fn to_key_text(&self) -> Option<String> {
        match self {
            Value::Float4(v) if *v == 0.0 => Some("0".into()),
            Value::Float8(v) if *v == 0.0 => Some("0".into()),
            Value::Numeric(text) => Some(normalize_numeric(text)),
            other => other.to_sql_text(),
        }
    }

    /// The value as PostgreSQL input text for its type (`None` for NULL and for an
    /// unchanged TOAST marker, which has no value of its own). Round-trips exactly.
    pub fn to_sql_text(&self) -> Option<String> {
        fn time(micros: i64, zone: bool) -> String {
            match micros {
                i64::MAX => "infinity".into(),
                i64::MIN => "-infinity".into(),
                m => match chrono::DateTime::from_timestamp_micros(m) {
                    Some(t) if zone => t.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string(),
                    Some(t) => t.format("%Y-%m-%d %H:%M:%S%.6f").to_string(),
                    None => "infinity".into(),
                },
            }
        }
        fn float(v: f64) -> String {
            if v.is_nan() {
                "NaN".into()
            } else if v.is_infinite() {
                if v > 0.0 {
                    "Infinity".into()
                } else {
                    "-Infinity".into()
                }
            } else {
                v.to_string()
            }
        }
        Some(match self {
            Value::Null | Value::UnchangedToast => return None,
            Value::Bool(b) => if *b { "t" } else { "f" }.into(),
            Value::Int2(v) => v.to_string(),
            Value::Int4(v) => v.to_string(),
            Value::Int8(v) => v.to_string(),
            Value::Float4(v) => float(f64::from(*v)),
            Value::Float8(v) => float(*v),
            Value::Numeric(s) | Value::Text(s) | Value::Json(s) => s.clone(),
            Value::Bytea(b) => {
                let mut s = String::with_capacity(2 + 2 * b.len());
                s.push_str("\\x");
                for byte in b {
                    s.push_str(&format!("{byte:02x}"));
                }
                s
            }
            Value::Uuid(u) => {
                let h: String = u.iter().map(|b| format!("{b:02x}")).collect();
                format!(
                    "{}-{}-{}-{}-{}",
                    &h[0..8],
                    &h[8..12],
                    &h[12..16],
                    &h[16..20],
                    &h[20..]
                )
            }
            Value::Timestamptz(m) => time(*m, true),
            Value::Timestamp(m) => time(*m, false),
            Value::Date(d) => match *d {
                i32::MAX => "infinity".into(),
                i32::MIN => "-infinity".into(),
                d => chrono::NaiveDate::from_ymd_opt(1970, 1, 1)?
                    .checked_add_signed(chrono::TimeDelta::days(i64::from(d)))?
                    .format("%Y-%m-%d")
                    .to_string(),
            },
            Value::Other { text, binary, .. } => match (text, binary) {
                (Some(t), _) => t.clone(),
                _ => return None,
            },
        })
    }

    fn into_json_if(self, json: bool) -> Value {
        match (self, json) {
            (Value::Text(s), true) => Value::Json(s),
            (v, _) => v,
        }
    }
}

fn parse_float(text: &str) -> Option<f64> {
    match text {
        "NaN" => Some(f64::NAN),
        "Infinity" => Some(f64::INFINITY),
        "-Infinity" => Some(f64::NEG_INFINITY),
        _ => text.parse().ok(),
    }
}

fn parse_bytea(text: &str) -> Option<Vec<u8>> {
    if let Some(hex) = text.strip_prefix("\\x") {
        if hex.len() % 2 != 0 {
            return None;
        }
        return (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
            .collect();
    }
    // bytea_output = escape: printable bytes as is, \\ for a backslash, \ooo octal.
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            out.push(b[i]);
            i += 1;
        } else if b.get(i + 1) == Some(&b'\\') {
            out.push(b'\\');
            i += 2;
        } else {
            let oct = std::str::from_utf8(b.get(i + 1..i + 4)?).ok()?;
            out.push(u8::from_str_radix(oct, 8).ok()?);
            i += 4;
        }
    }
    Some(out)
}

fn parse_uuid(text: &str) -> Option<[u8; 16]> {
    let hex: String = text.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// ISO DateStyle output: `2026-03-20 10:00:00.5+01`, `... BC`, `infinity`.
fn parse_timestamp(text: &str, with_zone: bool) -> Option<i64> {
    match text {
        "infinity" => return Some(i64::MAX),
        "-infinity" => return Some(i64::MIN),
        _ => {}
    }
    let (text, bc) = match text.strip_suffix(" BC") {
        Some(t) => (t, true),
        None => (text, false),
    };
    let (local, offset_secs) = if with_zone {
        // The zone starts at the last '+' or '-' after the time of day.
        let split = text.rfind(['+', '-']).filter(|i| *i > 10)?;
        let (local, zone) = text.split_at(split);
        (local, parse_offset(zone)?)
    } else {
        (text, 0)
    };
    // chrono's format-string parser costs more than the rest of a row's decoding: the
    // ISO shape PostgreSQL prints is read by hand, anything else by chrono.
    let mut dt = parse_iso_local(local)
        .or_else(|| NaiveDateTime::parse_from_str(local, "%Y-%m-%d %H:%M:%S%.f").ok())?;
    if bc {
        // Year 1 BC is year 0 in proleptic ISO numbering.
        let year = 1 - chrono::Datelike::year(&dt);
        dt = chrono::Datelike::with_year(&dt, year)?;
    }
    Some(dt.and_utc().timestamp_micros() - offset_secs * 1_000_000)
}

/// `YYYY-MM-DD HH:MM:SS[.f{1,9}]` (a year of four or more digits), or None.
fn parse_iso_local(text: &str) -> Option<NaiveDateTime> {
    fn number(digits: &[u8]) -> Option<u32> {
        if digits.is_empty() || digits.len() > 9 || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(digits.iter().fold(0, |n, d| n * 10 + u32::from(d - b'0')))
    }
    let b = text.as_bytes();
    let dash = b.iter().position(|&c| c == b'-')?;
    if dash < 4 {
        return None;
    }
    let rest = &b[dash..];
    // -MM-DD HH:MM:SS
    if rest.len() < 15 || rest[3] != b'-' || rest[6] != b' ' || rest[9] != b':' || rest[12] != b':'
    {
        return None;
    }
    let year = i32::try_from(number(&b[..dash])?).ok()?;
    let date = chrono::NaiveDate::from_ymd_opt(year, number(&rest[1..3])?, number(&rest[4..6])?)?;
    let (h, m, sec) = (
        number(&rest[7..9])?,
        number(&rest[10..12])?,
        number(&rest[13..15])?,
    );
    let nanos = match &rest[15..] {
        [] => 0,
        [b'.', frac @ ..] => number(frac)? * 10u32.pow(9 - frac.len() as u32),
        _ => return None,
    };
    date.and_hms_nano_opt(h, m, sec, nanos)
}

fn parse_offset(zone: &str) -> Option<i64> {
    let sign = match zone.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let mut parts = zone[1..].split(':');
    let h: i64 = parts.next()?.parse().ok()?;
    let m: i64 = parts.next().map(str::parse).transpose().ok()?.unwrap_or(0);
    let s: i64 = parts.next().map(str::parse).transpose().ok()?.unwrap_or(0);
    Some(sign * (h * 3600 + m * 60 + s))
}

fn parse_date(text: &str) -> Option<i32> {
    match text {
        "infinity" => return Some(i32::MAX),
        "-infinity" => return Some(i32::MIN),
        _ => {}
    }
    let (text, bc) = match text.strip_suffix(" BC") {
        Some(t) => (t, true),
        None => (text, false),
    };
    let mut d = NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()?;
    if bc {
        d = chrono::Datelike::with_year(&d, 1 - chrono::Datelike::year(&d))?;
    }
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1)?;
    i32::try_from((d - epoch).num_days()).ok()
}

/// PostgreSQL's binary numeric: ndigits, weight, sign, dscale, then base-10000 digits.
fn numeric_to_string(b: &[u8]) -> Option<String> {
    let word =
        |i: usize| -> Option<u16> { Some(u16::from_be_bytes(b.get(i..i + 2)?.try_into().ok()?)) };
    let ndigits = usize::from(word(0)?);
    let weight = word(2)? as i16 as i32;
    let sign = word(4)?;
    let dscale = usize::from(word(6)?);
    match sign {
        0xC000 => return Some("NaN".into()),
        0xD000 => return Some("Infinity".into()),
        0xF000 => return Some("-Infinity".into()),
        0x0000 | 0x4000 => {}
        _ => return None,
    }
    if b.len() != 8 + 2 * ndigits {
        return None;
    }
    let digits: Vec<u16> = (0..ndigits)
        .map(|i| word(8 + 2 * i))
        .collect::<Option<_>>()?;
    if digits.iter().any(|d| *d > 9999) {
        return None;
    }
    let mut out = String::new();
    if sign == 0x4000 {
        out.push('-');
    }
    // Integer part: groups 0..=weight.
    if weight < 0 {
        out.push('0');
    } else {
        for i in 0..=weight {
            let d = digits.get(i as usize).copied().unwrap_or(0);
            if i == 0 {
                out.push_str(&d.to_string());
            } else {
                out.push_str(&format!("{d:04}"));
            }
        }
    }
    if dscale > 0 {
        out.push('.');
        let mut frac = String::new();
        let mut i = weight + 1;
        while frac.len() < dscale {
            let d = if i < 0 {
                0
            } else {
                digits.get(i as usize).copied().unwrap_or(0)
            };
            frac.push_str(&format!("{d:04}"));
            i += 1;
        }
        frac.truncate(dscale);
        out.push_str(&frac);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_times_honour_offsets_and_infinity() {
        let utc = parse_timestamp("2026-03-20 10:00:00+00", true).unwrap();
        assert_eq!(utc, 1_774_000_800_000_000);
        assert_eq!(parse_timestamp("2026-03-20 11:00:00+01", true), Some(utc));
        assert_eq!(
            parse_timestamp("2026-03-20 04:30:00-05:30", true),
            Some(utc)
        );
        assert_eq!(
            parse_timestamp("2026-03-20 10:00:00.000001+00", true),
            Some(utc + 1)
        );
        assert_eq!(parse_timestamp("2026-03-20 10:00:00", false), Some(utc));
        assert_eq!(parse_timestamp("infinity", true), Some(i64::MAX));
        assert_eq!(parse_date("1970-01-02"), Some(1));
        assert_eq!(parse_date("-infinity"), Some(i32::MIN));
        assert!(parse_timestamp("2026-03-20", true).is_none());
        // The hand-read ISO shape agrees with chrono's parser, and leaves it what it does
        // not know.
        for text in [
            "2026-03-20 10:00:00",
            "2026-03-20 10:00:00.5",
            "2026-03-20 10:00:00.123456",
            "0001-01-01 00:00:00",
            "2024-02-29 12:00:00",
        ] {
            assert_eq!(
                parse_iso_local(text),
                NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f").ok(),
                "{text}"
            );
        }
        // Years past 9999, which PostgreSQL prints with five digits and chrono's %Y refuses.
        assert_eq!(
            parse_timestamp("12026-12-31 23:59:59.999999+00", true),
            chrono::NaiveDate::from_ymd_opt(12026, 12, 31)
                .and_then(|d| d.and_hms_micro_opt(23, 59, 59, 999_999))
                .map(|t| t.and_utc().timestamp_micros())
        );
        for text in [
            "2023-02-29 12:00:00",
            "2026-13-01 00:00:00",
            "2026-03-20 24:00:00",
            "2026-03-20 10:00:00.",
            "2026-03-20 10:00:00x",
            "2026-03-20T10:00:00",
            "26-03-20 10:00:00",
            "2026-3-20 10:00:00",
        ] {
            assert_eq!(parse_iso_local(text), None, "{text}");
        }
    }

    #[test]
    fn binary_numeric_renders_exact_decimals() {
        fn enc(weight: i16, sign: u16, dscale: u16, digits: &[u16]) -> Vec<u8> {
            let mut b = Vec::new();
            b.extend((digits.len() as u16).to_be_bytes());
            b.extend(weight.to_be_bytes());
            b.extend(sign.to_be_bytes());
            b.extend(dscale.to_be_bytes());
            for d in digits {
                b.extend(d.to_be_bytes());
            }
            b
        }
        assert_eq!(
            numeric_to_string(&enc(0, 0, 2, &[12, 3400])).unwrap(),
            "12.34"
        );
        assert_eq!(
            numeric_to_string(&enc(1, 0x4000, 0, &[1, 0])).unwrap(),
            "-10000"
        );
        assert_eq!(numeric_to_string(&enc(-1, 0, 4, &[5])).unwrap(), "0.0005");
        assert_eq!(
            numeric_to_string(&enc(-2, 0, 6, &[1200])).unwrap(),
            "0.000012"
        );
        assert_eq!(
            numeric_to_string(&enc(-2, 0, 8, &[12])).unwrap(),
            "0.00000012"
        );
        assert_eq!(numeric_to_string(&enc(0, 0, 0, &[])).unwrap(), "0");
        assert_eq!(numeric_to_string(&enc(0, 0xC000, 0, &[])).unwrap(), "NaN");
        assert!(numeric_to_string(&enc(0, 0x1234, 0, &[])).is_none());
    }

    #[test]
    fn bytea_and_uuid_text_forms() {
        assert_eq!(parse_bytea("\\x00ff10").unwrap(), vec![0, 255, 16]);
        assert_eq!(parse_bytea("a\\\\b\\001").unwrap(), b"a\\b\x01".to_vec());
        assert_eq!(
            parse_uuid("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11").unwrap()[0..2],
            [0xa0, 0xee]
        );
    }

    #[test]
    fn sql_text_round_trips_through_the_text_decoder() {
        let values = [
            (ColumnType::Int8, Value::Int8(-42)),
            (ColumnType::Float8, Value::Float8(0.1 + 0.2)),
            (ColumnType::Float8, Value::Float8(f64::NEG_INFINITY)),
            (ColumnType::Numeric, Value::Numeric("-12.3400".into())),
            (ColumnType::Bool, Value::Bool(false)),
            (ColumnType::Bytea, Value::Bytea(vec![0, 1, 254])),
            (ColumnType::Uuid, Value::Uuid([7; 16])),
            (
                ColumnType::Timestamptz,
                Value::Timestamptz(1_774_000_800_123_456),
            ),
            (ColumnType::Timestamp, Value::Timestamp(-1)),
            (ColumnType::Date, Value::Date(20_532)),
            (ColumnType::Date, Value::Date(-1)),
            (ColumnType::Timestamptz, Value::Timestamptz(i64::MAX)),
        ];
        for (ty, v) in values {
            let text = v.to_sql_text().unwrap();
            assert_eq!(decode_text(ty, text.as_bytes()).unwrap(), v, "{text}");
        }
        assert_eq!(Value::Null.to_sql_text(), None);
    }

    #[test]
    fn bad_values_are_errors() {
        assert!(decode_text(ColumnType::Int4, b"12x").is_err());
        assert!(decode_binary(ColumnType::Int8, &[0, 1]).is_err());
        assert!(decode_text(ColumnType::Bool, b"yes").is_err());
        let e = decode_text(ColumnType::Timestamptz, b"soon")
            .unwrap_err()
            .to_string();
        assert!(e.contains("timestamptz"), "{e}");
    }
}

/// `-001.2300` as `-1.23`, `-0.0` as `0`; `NaN` and the infinities as they are.
fn normalize_numeric(text: &str) -> String {
    let (sign, digits) = match text.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", text.strip_prefix('+').unwrap_or(text)),
    };
    if !digits
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_digit() || b == b'.')
    {
        return text.to_owned(); // NaN, Infinity
    }
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let int = int.trim_start_matches('0');
    let frac = frac.trim_end_matches('0');
    let int = if int.is_empty() { "0" } else { int };
    if int == "0" && frac.is_empty() {
        return "0".into();
    }
    if frac.is_empty() {
        format!("{sign}{int}")
    } else {
        format!("{sign}{int}.{frac}")
    }
}

#[cfg(test)]
mod key_text_tests {
    use super::*;

    #[test]
    fn keys_equal_in_postgres_have_one_text() {
        let n = |t: &str| Value::Numeric(t.into()).to_key_text().unwrap();
        assert_eq!(n("1.50"), "1.5");
        assert_eq!(n("-001.2300"), "-1.23");
        assert_eq!(n("0.000"), "0");
        assert_eq!(n("-0"), "0");
        assert_eq!(n("120"), "120");
        assert_eq!(n("NaN"), "NaN");
        assert_eq!(Value::Float8(-0.0).to_key_text().unwrap(), "0");
        assert_eq!(
            Value::Float8(1e20).to_key_text(),
            Value::Float8(1e20).to_sql_text()
        );
        // A timestamp read back from a table under any TimeZone meets the stream's.
        let from_table =
            decode_text(ColumnType::Timestamptz, b"2026-03-01 09:30:00.25+00").unwrap();
        let from_wal = Value::Timestamptz(from_table.as_time_micros().unwrap());
        assert_eq!(from_table.to_key_text(), from_wal.to_key_text());
    }
}
