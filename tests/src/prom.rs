//! A tiny reader of the Prometheus text exposition format, enough to assert
//! on the agent's `/metrics`.

/// One sample line: `name{labels} value`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    /// The value of label `key`, if present.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses every sample line of `text` (comments and malformed lines are
/// skipped).
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_line).collect()
}

/// The value of metric `name` whose labels include all of `labels`. When
/// several series match (a partial label set), their sum; `None` when none
/// does.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for s in parse(text) {
        if s.name == name && labels.iter().all(|(k, v)| s.label(k) == Some(*v)) {
            *found.get_or_insert(0.0) += s.value;
        }
    }
    found
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() {
        return None;
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(inner)?;
        labels = parsed;
        rest = after;
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// Parses `k="v",...}` and returns the labels and what follows the `}`.
fn parse_labels(mut s: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start_matches([' ', ',']);
        if let Some(after) = s.strip_prefix('}') {
            return Some((labels, after));
        }
        let eq = s.find('=')?;
        let key = s[..eq].trim().to_string();
        s = s[eq + 1..].trim_start().strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '"' => break i,
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                c => value.push(c),
            }
        };
        labels.push((key, value));
        s = &s[end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP envfence_packets_total Packets judged.
# TYPE envfence_packets_total counter
envfence_packets_total{dst_env="production",src_env="staging",verdict="audit"} 12
envfence_packets_total{dst_env="production",src_env="test",verdict="drop"} 3
envfence_bytes_total{dst_env="production",src_env="staging",verdict="audit"} 1.5e3
envfence_build_info{version="0.1.0",weird="a\"b\\c"} 1
envfence_up 1
"#;

    #[test]
    fn values_by_labels() {
        let l = [
            ("src_env", "staging"),
            ("dst_env", "production"),
            ("verdict", "audit"),
        ];
        assert_eq!(metric_value(TEXT, "envfence_packets_total", &l), Some(12.0));
        assert_eq!(metric_value(TEXT, "envfence_bytes_total", &l), Some(1500.0));
        assert_eq!(
            metric_value(TEXT, "envfence_packets_total", &[("dst_env", "production")]),
            Some(15.0)
        );
        assert_eq!(
            metric_value(TEXT, "envfence_packets_total", &[("verdict", "allow")]),
            None
        );
        assert_eq!(metric_value(TEXT, "envfence_up", &[]), Some(1.0));
        assert_eq!(
            metric_value(TEXT, "envfence_build_info", &[("weird", "a\"b\\c")]),
            Some(1.0)
        );
        assert_eq!(metric_value(TEXT, "envfence_packets", &[]), None);
    }
}
