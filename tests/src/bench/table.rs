//! Tables of figures, printed to the terminal and written as Markdown.

/// One table: a title, column headers, rows of cells, and notes under it.
#[derive(Clone, Debug, Default)]
pub struct Table {
    pub title: String,
    pub headers: Vec<String>,
    pub rows: Vec<Vec<String>>,
    pub notes: Vec<String>,
}

impl Table {
    /// A table of `headers` (`"a | b | c"`, as a Markdown header row).
    pub fn new(title: impl Into<String>, headers: &str) -> Table {
        Table {
            title: title.into(),
            headers: headers.split(" | ").map(str::to_owned).collect(),
            rows: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    /// Whether a column holds figures (right-aligned): every non-empty cell
    /// starts with a digit, a sign or a dash placeholder.
    fn numeric(&self, col: usize) -> bool {
        self.rows.iter().all(|r| {
            r.get(col).is_none_or(|c| {
                c.is_empty()
                    || c.starts_with(|ch: char| ch.is_ascii_digit() || ch == '-' || ch == '+')
                    || c == "—"
            })
        })
    }

    /// Plain text with aligned columns.
    pub fn to_text(&self) -> String {
        let cols = self.headers.len();
        let mut width: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate().take(cols) {
                width[i] = width[i].max(c.chars().count());
            }
        }
        let numeric: Vec<bool> = (0..cols).map(|i| self.numeric(i)).collect();
        let line = |cells: &[String]| {
            let mut s = String::from(" ");
            for i in 0..cols {
                let c = cells.get(i).map(String::as_str).unwrap_or("");
                let pad = width[i].saturating_sub(c.chars().count());
                s.push(' ');
                if numeric[i] {
                    s.push_str(&" ".repeat(pad));
                    s.push_str(c);
                } else {
                    s.push_str(c);
                    s.push_str(&" ".repeat(pad));
                }
                s.push_str("  ");
            }
            s.trim_end().to_string()
        };
        let mut out = format!("{}\n", self.title);
        out.push_str(&line(&self.headers));
        out.push('\n');
        let rule: usize = width.iter().map(|w| w + 3).sum();
        out.push_str(&format!("  {}\n", "-".repeat(rule.saturating_sub(2))));
        for r in &self.rows {
            out.push_str(&line(r));
            out.push('\n');
        }
        for n in &self.notes {
            out.push_str(&format!("  * {n}\n"));
        }
        out
    }

    /// A Markdown section body: the title in bold, the table, the notes.
    pub fn to_markdown(&self) -> String {
        let esc = |s: &str| s.replace('|', "\\|");
        let mut out = format!("**{}**\n\n", self.title);
        out.push_str(&format!(
            "| {} |\n",
            self.headers
                .iter()
                .map(|h| esc(h))
                .collect::<Vec<_>>()
                .join(" | ")
        ));
        let aligns: Vec<&str> = (0..self.headers.len())
            .map(|i| if self.numeric(i) { "---:" } else { "---" })
            .collect();
        out.push_str(&format!("|{}|\n", aligns.join("|")));
        for r in &self.rows {
            out.push_str(&format!(
                "| {} |\n",
                r.iter().map(|c| esc(c)).collect::<Vec<_>>().join(" | ")
            ));
        }
        if !self.notes.is_empty() {
            out.push('\n');
            for n in &self.notes {
                out.push_str(&format!("- {n}\n"));
            }
        }
        out
    }
}

/// `f(v)`, or a dash when `v` is not a number.
fn or_dash(v: f64, f: impl Fn(f64) -> String) -> String {
    if v.is_finite() {
        f(v)
    } else {
        "—".to_string()
    }
}

/// A figure with `digits` decimals.
pub fn fmt(v: f64, digits: usize) -> String {
    or_dash(v, |v| format!("{v:.digits$}"))
}

/// An integer-ish figure with thousands separators (`12,345`).
pub fn thousands(v: f64) -> String {
    or_dash(v, |v| {
        let digits = (v.abs().round() as u128).to_string();
        let mut out = String::from(if v < 0.0 { "-" } else { "" });
        for (i, ch) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(ch);
        }
        out
    })
}

/// A signed difference in ns: `+12.3`.
pub fn delta(v: f64) -> String {
    or_dash(v, |v| format!("{v:+.1}"))
}

/// A ratio: `1.03×`.
pub fn ratio(v: f64) -> String {
    or_dash(v, |v| format!("{v:.2}×"))
}

/// The median of `v` (NaN when empty).
pub fn median(v: &[f64]) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return f64::NAN;
    }
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// PASS or MISS.
pub fn pass(ok: bool) -> String {
    if ok { "PASS" } else { "MISS" }.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(thousands(1234567.0), "1,234,567");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(-1000.0), "-1,000");
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
        assert_eq!(ratio(1.234), "1.23×");
        assert_eq!(delta(3.0), "+3.0");
    }

    #[test]
    fn renders() {
        let mut t = Table::new("T", "name | ns");
        assert_eq!(t.headers, ["name", "ns"]);
        t.row(vec!["a|b".into(), "12.5".into()]);
        t.note("n");
        let md = t.to_markdown();
        assert!(md.contains("| a\\|b | 12.5 |"));
        assert!(md.contains("|---|---:|"));
        let text = t.to_text();
        assert!(text.contains("a|b"));
        assert!(text.contains("* n"));
    }
}
