//! Policy errors: each names its place in the file, the field, the offending
//! value and what is wrong; a policy is refused with all of them at once.
#![warn(missing_docs)]

use std::fmt;

/// One problem found in a policy file.
///
/// Displayed as `{origin}:{line}:{column}: {field}: {message} (got {value:?})`.
/// Parts that an error does not have are left out: the line and column when
/// `line` is 0 (an I/O error, which has no place), the field when it is empty
/// (a problem of the whole file), and the value when it is empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    /// Where the policy came from: a path, or a name such as
    /// [`super::EXAMPLE_ORIGIN`].
    pub origin: String,
    /// 1-based line; 0 when the error has no place in the file.
    pub line: usize,
    /// 1-based column (in characters); 0 when the error has no place.
    pub column: usize,
    /// Path of the offending field, such as `rules[2].to[0]` or
    /// `environments.test[1]`; empty for a problem of the whole file.
    pub field: String,
    /// The offending value as written (a scalar's text, or a description
    /// such as `a list`); empty when there is none.
    pub value: String,
    /// What is wrong, and how to fix it where that is known.
    pub message: String,
}

impl PolicyError {
    /// An error with no place in the file (the file could not be read).
    pub fn without_place(origin: impl Into<String>, message: impl Into<String>) -> Self {
        PolicyError {
            origin: origin.into(),
            line: 0,
            column: 0,
            field: String::new(),
            value: String::new(),
            message: message.into(),
        }
    }
}

impl PolicyError {
    /// The value as errors show it: whole up to [`QUOTED_CHARS`]
    /// characters, else its first ones, `…` and its size in bytes.
    pub fn quoted_value(&self) -> String {
        match cut(&self.value) {
            None => self.value.clone(),
            Some(prefix) => format!("{prefix}… ({} bytes)", self.value.len()),
        }
    }
}

/// How many characters of an offending value an error quotes.
pub const QUOTED_CHARS: usize = 60;

/// `value` in quotes as errors and messages show it: `"10.1.0.0/33"`, or
/// for a long one its first [`QUOTED_CHARS`] characters, `"…"… (N bytes)`.
pub(crate) fn quoted(value: &str) -> String {
    match cut(value) {
        None => format!("{value:?}"),
        Some(prefix) => format!("{prefix:?}… ({} bytes)", value.len()),
    }
}

/// The first [`QUOTED_CHARS`] characters of `value` when it is longer: a
/// 200 KB line is named, not echoed.
fn cut(value: &str) -> Option<&str> {
    value
        .char_indices()
        .nth(QUOTED_CHARS)
        .map(|(end, _)| &value[..end])
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.origin)?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        f.write_str(": ")?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)?;
        if !self.value.is_empty() {
            write!(f, " (got {})", quoted(&self.value))?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyError {}

/// Every problem found in a policy file, in file order (by line, then
/// column). Never empty when returned by [`super::parse`] or [`super::load`].
///
/// Displayed as one error per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", Lines(.0))]
pub struct PolicyErrors(pub Vec<PolicyError>);

/// Displays errors one per line.
struct Lines<'a>(&'a [PolicyError]);

impl fmt::Display for Lines<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl PolicyErrors {
    /// Number of errors.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no errors.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The errors, in file order.
    pub fn iter(&self) -> std::slice::Iter<'_, PolicyError> {
        self.0.iter()
    }
}

impl From<PolicyError> for PolicyErrors {
    fn from(error: PolicyError) -> Self {
        PolicyErrors(vec![error])
    }
}

impl IntoIterator for PolicyErrors {
    type Item = PolicyError;
    type IntoIter = std::vec::IntoIter<PolicyError>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a PolicyErrors {
    type Item = &'a PolicyError;
    type IntoIter = std::slice::Iter<'a, PolicyError>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// A 1-based line and column in the policy source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Place {
    pub line: usize,
    pub column: usize,
}

/// Collects the errors of one policy source.
#[derive(Debug)]
pub(crate) struct Errors {
    origin: String,
    errors: Vec<PolicyError>,
}

impl Errors {
    pub fn new(origin: &str) -> Self {
        Errors {
            origin: origin.to_owned(),
            errors: Vec::new(),
        }
    }

    /// Records an error at `place`.
    pub fn push(
        &mut self,
        place: Place,
        field: impl Into<String>,
        value: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.errors.push(PolicyError {
            origin: self.origin.clone(),
            line: place.line,
            column: place.column,
            field: field.into(),
            value: value.into(),
            message: message.into(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// Number of errors recorded so far.
    pub fn count(&self) -> usize {
        self.errors.len()
    }

    /// The errors in file order (a stable sort: errors at one place keep the
    /// order they were found in).
    pub fn into_sorted(mut self) -> Vec<PolicyError> {
        self.errors.sort_by_key(|e| (e.line, e.column));
        self.errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(line: usize, field: &str, value: &str) -> PolicyError {
        PolicyError {
            origin: "p.yaml".into(),
            line,
            column: 7,
            field: field.into(),
            value: value.into(),
            message: "bad".into(),
        }
    }

    #[test]
    fn display() {
        assert_eq!(
            error(3, "rules[2].to[0]", "prod").to_string(),
            r#"p.yaml:3:7: rules[2].to[0]: bad (got "prod")"#
        );
        assert_eq!(error(3, "", "").to_string(), "p.yaml:3:7: bad");
        assert_eq!(
            PolicyError::without_place("/etc/p.yaml", "cannot read").to_string(),
            "/etc/p.yaml: cannot read"
        );
        let all = PolicyErrors(vec![error(1, "a", "x"), error(2, "b", "y")]);
        assert_eq!(
            all.to_string(),
            "p.yaml:1:7: a: bad (got \"x\")\np.yaml:2:7: b: bad (got \"y\")"
        );
    }
}

#[cfg(test)]
mod quote_tests {
    use super::*;

    #[test]
    fn a_long_value_is_quoted_by_its_prefix_and_size() {
        let mut e = PolicyError {
            origin: "p.yaml".into(),
            line: 3,
            column: 5,
            field: "environments.test[0]".into(),
            value: "10.1.0.0/33".into(),
            message: "not a CIDR".into(),
        };
        assert!(e.to_string().ends_with("(got \"10.1.0.0/33\")"));
        assert_eq!(e.quoted_value(), "10.1.0.0/33");
        e.value = "é".repeat(100_000);
        assert_eq!(
            e.quoted_value(),
            format!("{}… (200000 bytes)", "é".repeat(QUOTED_CHARS))
        );
        e.value = "x".repeat(200_000);
        let shown = e.to_string();
        assert!(shown.len() < 200, "{shown}");
        assert!(shown.ends_with("… (200000 bytes))"), "{shown}");
    }
}
