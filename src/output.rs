//! What a command prints: one value, as pretty JSON for scripts (`--json`) or as text for
//! people. Each report type says once how it reads as text ([`Render`]); commands never
//! branch on the format themselves.

use serde::Serialize;

/// A command's result as people read it. The JSON form is the value's `Serialize`.
pub trait Render: Serialize {
    /// The text form, lines ending in a newline.
    fn text(&self) -> String;
}

/// The format the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

impl Format {
    pub fn json(json: bool) -> Self {
        if json { Format::Json } else { Format::Text }
    }

    pub fn is_json(self) -> bool {
        self == Format::Json
    }

    /// Prints `value` on stdout in this format.
    pub fn print(self, value: &impl Render) -> anyhow::Result<()> {
        match self {
            Format::Json => println!("{}", serde_json::to_string_pretty(value)?),
            Format::Text => print!("{}", value.text()),
        }
        Ok(())
    }
}

/// A list printed one rendered line per item, or `empty` when there is none.
pub fn lines<T>(items: &[T], empty: &str, line: impl Fn(&T) -> String) -> String {
    if items.is_empty() {
        return format!("{empty}\n");
    }
    items.iter().map(|i| line(i) + "\n").collect()
}

/// `-` for a missing value, the value's text otherwise.
pub fn or_dash(value: Option<impl ToString>) -> String {
    value.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}
