//! Fixed-length time intervals (`'7 days'`, `'1 hour 30 minutes'`, `'90s'`, `'01:00:00'`).
//!
//! Chunk bounds are aligned to multiples of the interval from the Unix epoch in UTC, which
//! only makes sense for a fixed length. So a day is exactly 86,400 seconds here (as it is in
//! UTC), and months and years, whose length varies, are refused with a hint.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

pub const MICROS_PER_SECOND: i64 = 1_000_000;
pub const MICROS_PER_MINUTE: i64 = 60 * MICROS_PER_SECOND;
pub const MICROS_PER_HOUR: i64 = 60 * MICROS_PER_MINUTE;
pub const MICROS_PER_DAY: i64 = 24 * MICROS_PER_HOUR;
pub const MICROS_PER_WEEK: i64 = 7 * MICROS_PER_DAY;

/// A non-negative duration with microsecond resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Interval {
    micros: i64,
}

impl Interval {
    pub const ZERO: Interval = Interval { micros: 0 };

    pub const fn from_micros(micros: i64) -> Self {
        Interval { micros }
    }

    pub const fn from_secs(secs: i64) -> Self {
        Interval {
            micros: secs * MICROS_PER_SECOND,
        }
    }

    pub const fn hours(h: i64) -> Self {
        Interval {
            micros: h * MICROS_PER_HOUR,
        }
    }

    pub const fn days(d: i64) -> Self {
        Interval {
            micros: d * MICROS_PER_DAY,
        }
    }

    pub const fn as_micros(self) -> i64 {
        self.micros
    }

    pub fn as_std(self) -> std::time::Duration {
        std::time::Duration::from_micros(self.micros as u64)
    }

    pub fn is_zero(self) -> bool {
        self.micros == 0
    }

    /// Parses the forms accepted on command lines and in config files.
    pub fn parse(input: &str) -> Result<Self> {
        let text = input.trim();
        let bad = |why: String| Error::invalid(format!("invalid interval {input:?}: {why}"));
        if text.is_empty() {
            return Err(bad("it is empty".into()));
        }
        if text.contains(':') {
            return parse_clock(text).map_err(bad);
        }
        let tokens = tokenize(text);
        if tokens.is_empty() {
            return Err(bad("expected a number and a unit, such as '7 days'".into()));
        }
        let mut total: i64 = 0;
        let mut i = 0;
        while i < tokens.len() {
            let number: i64 = tokens[i].parse().map_err(|_| {
                bad(format!(
                    "expected a whole number, found {:?} (write for example '7 days' or '90 minutes')",
                    tokens[i]
                ))
            })?;
            if number < 0 {
                return Err(bad("intervals cannot be negative".into()));
            }
            let unit = tokens
                .get(i + 1)
                .ok_or_else(|| bad(format!("the number {number} has no unit")))?;
            let per_unit = unit_micros(unit).map_err(bad)?;
            total = number
                .checked_mul(per_unit)
                .and_then(|v| total.checked_add(v))
                .ok_or_else(|| bad("it is too large".into()))?;
            i += 2;
        }
        Ok(Interval { micros: total })
    }

    /// A form PostgreSQL's `interval` input accepts, such as `7 days` or `1 hour 30 minutes`.
    /// It reads back (via `extract(epoch ...)`) as the same number of microseconds.
    pub fn to_postgres(self) -> String {
        self.to_string()
    }
}

/// Splits "7days 2h" into ["7", "days", "2", "h"]: numbers and words, whitespace ignored.
fn tokenize(text: &str) -> Vec<String> {
    let mut tokens: Vec<String> = Vec::new();
    let mut current = String::new();
    let mut current_is_digit = false;
    for c in text.chars() {
        if c.is_whitespace() || c == ',' {
            if !current.is_empty() {
                tokens.push(std::mem::take(&mut current));
            }
            continue;
        }
        let is_digit = c.is_ascii_digit() || c == '.' || (c == '-' && current.is_empty());
        if !current.is_empty() && is_digit != current_is_digit {
            tokens.push(std::mem::take(&mut current));
        }
        current_is_digit = is_digit;
        current.push(c);
    }
    if !current.is_empty() {
        tokens.push(current);
    }
    tokens
}

fn unit_micros(unit: &str) -> std::result::Result<i64, String> {
    Ok(match unit.to_ascii_lowercase().as_str() {
        "us" | "usec" | "usecs" | "microsecond" | "microseconds" => 1,
        "ms" | "msec" | "msecs" | "millisecond" | "milliseconds" => 1_000,
        "s" | "sec" | "secs" | "second" | "seconds" => MICROS_PER_SECOND,
        "m" | "min" | "mins" | "minute" | "minutes" => MICROS_PER_MINUTE,
        "h" | "hr" | "hrs" | "hour" | "hours" => MICROS_PER_HOUR,
        "d" | "day" | "days" => MICROS_PER_DAY,
        "w" | "week" | "weeks" => MICROS_PER_WEEK,
        "mon" | "mons" | "month" | "months" | "y" | "year" | "years" => {
            return Err(format!(
                "{unit:?} has no fixed length; chunk bounds are aligned in UTC, so use days \
                 (for example '30 days' or '365 days')"
            ));
        }
        other => {
            return Err(format!(
                "unknown unit {other:?}; use microseconds, milliseconds, seconds, minutes, \
                 hours, days or weeks"
            ));
        }
    })
}

fn parse_clock(text: &str) -> std::result::Result<Interval, String> {
    let fields: Vec<&str> = text.split(':').collect();
    if fields.len() != 3 {
        return Err("expected HH:MM:SS".into());
    }
    let num = |s: &str| -> std::result::Result<i64, String> {
        s.parse::<i64>()
            .ok()
            .filter(|v| *v >= 0)
            .ok_or_else(|| format!("{s:?} is not a non-negative whole number"))
    };
    let (h, m, s) = (num(fields[0])?, num(fields[1])?, num(fields[2])?);
    if m >= 60 || s >= 60 {
        return Err("minutes and seconds must be below 60".into());
    }
    h.checked_mul(MICROS_PER_HOUR)
        .map(|v| Interval::from_micros(v + m * MICROS_PER_MINUTE + s * MICROS_PER_SECOND))
        .ok_or_else(|| "it is too large".into())
}

impl FromStr for Interval {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Interval::parse(s)
    }
}

impl fmt::Display for Interval {
    /// Largest units first: `7 days`, `1 hour 30 minutes`, `0 seconds`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.micros == 0 {
            return f.write_str("0 seconds");
        }
        let units: [(i64, &str); 6] = [
            (MICROS_PER_DAY, "day"),
            (MICROS_PER_HOUR, "hour"),
            (MICROS_PER_MINUTE, "minute"),
            (MICROS_PER_SECOND, "second"),
            (1_000, "millisecond"),
            (1, "microsecond"),
        ];
        let mut rest = self.micros;
        let mut first = true;
        for (size, name) in units {
            let n = rest / size;
            if n == 0 {
                continue;
            }
            rest -= n * size;
            if !first {
                f.write_str(" ")?;
            }
            first = false;
            write!(f, "{n} {name}{}", if n == 1 { "" } else { "s" })?;
        }
        Ok(())
    }
}

impl serde::Serialize for Interval {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> serde::Deserialize<'de> for Interval {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Interval::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_forms() {
        let cases = [
            ("7 days", Interval::days(7)),
            ("1 day", Interval::days(1)),
            ("1 hour", Interval::hours(1)),
            ("1h", Interval::hours(1)),
            ("90s", Interval::from_secs(90)),
            ("1 hour 30 minutes", Interval::from_secs(5400)),
            ("2 weeks", Interval::days(14)),
            ("01:00:00", Interval::hours(1)),
            ("36:00:00", Interval::hours(36)),
            ("  15 MINUTES ", Interval::from_secs(900)),
            ("0 seconds", Interval::ZERO),
            ("500 ms", Interval::from_micros(500_000)),
        ];
        for (text, expected) in cases {
            assert_eq!(Interval::parse(text).unwrap(), expected, "{text}");
        }
    }

    #[test]
    fn refuses_bad_input_with_reasons() {
        let cases = [
            ("", "empty"),
            ("abc", "whole number"),
            ("7", "no unit"),
            ("7 fortnights", "unknown unit"),
            ("1 month", "no fixed length"),
            ("1 year", "no fixed length"),
            ("-1 day", "negative"),
            ("1.5 hours", "whole number"),
            ("99999999999999999 days", "too large"),
            ("1:2", "HH:MM:SS"),
            ("01:61:00", "below 60"),
            ("1 day; drop table x", "unknown unit"),
        ];
        for (text, why) in cases {
            let err = Interval::parse(text).unwrap_err().to_string();
            assert!(err.contains(why), "{text:?}: {err}");
        }
    }

    #[test]
    fn display_round_trips() {
        for micros in [
            1,
            1_000,
            MICROS_PER_SECOND,
            MICROS_PER_HOUR + 30 * MICROS_PER_MINUTE,
            7 * MICROS_PER_DAY,
            MICROS_PER_DAY + 1,
        ] {
            let iv = Interval::from_micros(micros);
            assert_eq!(Interval::parse(&iv.to_string()).unwrap(), iv, "{iv}");
        }
        assert_eq!(Interval::days(7).to_string(), "7 days");
        assert_eq!(Interval::from_secs(5400).to_string(), "1 hour 30 minutes");
    }
}
