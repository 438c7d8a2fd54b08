//! Output helpers of the on-call commands: aligned tables, colour (only on
//! a terminal, never with `--no-color` or `NO_COLOR`), output formats.

use std::io::{IsTerminal as _, Write as _};

use clap::ValueEnum;

/// `-o` of commands that print a report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns for people.
    #[default]
    Table,
    /// One JSON document.
    Json,
}

/// `-o` of `flows`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum FlowsOutput {
    /// Aligned columns for people.
    #[default]
    Table,
    /// One JSON document: {"events": [...], ...}.
    Json,
    /// One event record per line, as the agent prints them.
    Jsonl,
}

/// `-o` of commands that print one record per packet or event.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum PacketsOutput {
    /// Aligned lines for people, then a summary.
    #[default]
    Table,
    /// One JSON document: the records and the summary.
    Json,
    /// One JSON record per line (no summary).
    Jsonl,
}

/// ANSI styles, or nothing.
#[derive(Clone, Copy, Debug)]
pub struct Style {
    color: bool,
}

impl Style {
    /// Colour when stdout is a terminal, `NO_COLOR` is unset and
    /// `--no-color` was not given.
    pub fn for_stdout(no_color: bool) -> Self {
        let env_off = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Self {
            color: !no_color && !env_off && std::io::stdout().is_terminal(),
        }
    }

    /// Never colour.
    #[cfg(test)]
    pub fn plain() -> Self {
        Self { color: false }
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.color && !text.is_empty() {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }

    pub fn bold(&self, t: &str) -> String {
        self.paint("1", t)
    }
    pub fn dim(&self, t: &str) -> String {
        self.paint("2", t)
    }
    pub fn red(&self, t: &str) -> String {
        self.paint("1;31", t)
    }
    pub fn green(&self, t: &str) -> String {
        self.paint("32", t)
    }
    pub fn yellow(&self, t: &str) -> String {
        self.paint("33", t)
    }
    pub fn cyan(&self, t: &str) -> String {
        self.paint("36", t)
    }

    /// A verdict in its colour: drop red, audit yellow, log cyan, allow
    /// green.
    pub fn verdict(&self, v: &str) -> String {
        match v {
            "drop" => self.red(v),
            "audit" => self.yellow(v),
            "log" => self.cyan(v),
            "allow" => self.green(v),
            _ => v.to_owned(),
        }
    }

    /// The colour a column cell gets.
    fn cell(&self, c: &Cell) -> String {
        match c.color {
            Color::None => c.text.clone(),
            Color::Verdict => self.verdict(&c.text),
            Color::Bold => self.bold(&c.text),
            Color::Dim => self.dim(&c.text),
            Color::Red => self.red(&c.text),
            Color::Yellow => self.yellow(&c.text),
            Color::Green => self.green(&c.text),
        }
    }
}

/// How a cell is coloured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Color {
    None,
    Verdict,
    Bold,
    Dim,
    Red,
    Yellow,
    Green,
}

/// One table cell.
#[derive(Clone, Debug)]
pub struct Cell {
    pub text: String,
    pub color: Color,
}

impl Cell {
    pub fn new(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            color: Color::None,
        }
    }
    pub fn colored(text: impl Into<String>, color: Color) -> Self {
        Self {
            text: text.into(),
            color,
        }
    }
}

impl From<String> for Cell {
    fn from(s: String) -> Self {
        Cell::new(s)
    }
}

impl From<&str> for Cell {
    fn from(s: &str) -> Self {
        Cell::new(s)
    }
}

/// Alignment of a column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// A table: a header and rows, columns separated by two spaces, the last
/// column not padded.
#[derive(Clone, Debug)]
pub struct Table {
    headers: Vec<(String, Align)>,
    rows: Vec<Vec<Cell>>,
}

impl Table {
    pub fn new(headers: &[(&str, Align)]) -> Self {
        Self {
            headers: headers.iter().map(|(h, a)| ((*h).to_owned(), *a)).collect(),
            rows: Vec::new(),
        }
    }

    pub fn push(&mut self, row: Vec<Cell>) {
        self.rows.push(row);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Column widths, in characters.
    fn widths(&self) -> Vec<usize> {
        let mut w: Vec<usize> = self
            .headers
            .iter()
            .map(|(h, _)| h.chars().count())
            .collect();
        for row in &self.rows {
            for (i, c) in row.iter().enumerate() {
                if let Some(x) = w.get_mut(i) {
                    *x = (*x).max(c.text.chars().count());
                }
            }
        }
        w
    }

    /// The table as text (one line per row, each ending in a newline).
    pub fn render(&self, style: &Style) -> String {
        let widths = self.widths();
        let mut out = String::new();
        let header: Vec<Cell> = self
            .headers
            .iter()
            .map(|(h, _)| Cell::colored(h.clone(), Color::Bold))
            .collect();
        for row in std::iter::once(&header).chain(&self.rows) {
            let last = row.len().min(widths.len()).saturating_sub(1);
            let mut line = String::new();
            for (i, c) in row.iter().enumerate().take(widths.len()) {
                let pad = widths[i].saturating_sub(c.text.chars().count());
                let align = self.headers.get(i).map_or(Align::Left, |(_, a)| *a);
                let painted = style.cell(c);
                if i > 0 {
                    line.push_str("  ");
                }
                match align {
                    Align::Right => {
                        line.push_str(&" ".repeat(pad));
                        line.push_str(&painted);
                    }
                    Align::Left => {
                        line.push_str(&painted);
                        if i < last {
                            line.push_str(&" ".repeat(pad));
                        }
                    }
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Prints `text` to stdout; a closed pipe (`| head`) ends the command
/// quietly.
pub fn print(text: &str) {
    let mut out = std::io::stdout().lock();
    if out
        .write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .is_err()
    {
        std::process::exit(0);
    }
}

/// Prints a value as pretty JSON, with a newline.
pub fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    print(&text);
    Ok(())
}

/// Flushes stdout and exits with `code` (for the documented exit codes
/// other than 0 and 1).
pub fn exit(code: i32) -> ! {
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    std::process::exit(code)
}

/// Serializes a value as its text (`serialize_with`).
pub fn ser_display<T: std::fmt::Display, S: serde::Serializer>(
    v: &T,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// Serializes an optional value as its text, or null.
pub fn ser_display_opt<T: std::fmt::Display, S: serde::Serializer>(
    v: &Option<T>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.collect_str(v),
        None => s.serialize_none(),
    }
}

/// A byte count for people: 1234 -> 1.2K.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["K", "M", "G", "T", "P"];
    if n < 1024 {
        return n.to_string();
    }
    let mut v = n as f64;
    let mut unit = "";
    for u in UNITS {
        v /= 1024.0;
        unit = u;
        if v < 1024.0 {
            break;
        }
    }
    format!("{v:.1}{unit}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned() {
        let mut t = Table::new(&[
            ("A", Align::Left),
            ("NUM", Align::Right),
            ("C", Align::Left),
        ]);
        t.push(vec!["xx".into(), "1".into(), "last".into()]);
        t.push(vec!["y".into(), "1234".into(), "z".into()]);
        assert_eq!(
            t.render(&Style::plain()),
            "A    NUM  C\nxx     1  last\ny   1234  z\n"
        );
        assert_eq!(human_bytes(999), "999");
        assert_eq!(human_bytes(1536), "1.5K");
    }
}
