//! A parsed scrape, with look-ups by metric name and labels.
//!
//! The Prometheus text format is parsed here rather than with a crate: the one available
//! (prometheus-parse) mis-reads label values with braces, such as `http_route="/users/{id}"`.

use std::collections::BTreeMap;

#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    fn has(&self, labels: &[(&str, &str)]) -> bool {
        labels
            .iter()
            .all(|(key, value)| self.labels.get(*key).map(String::as_str) == Some(*value))
    }
}

/// A series' labels, in order, without `le`.
type Labels = Vec<(String, String)>;

pub struct Scrape {
    samples: Vec<Sample>,
}

impl Scrape {
    pub fn parse(text: &str) -> Self {
        let samples = text
            .lines()
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .map(|line| parse_line(line).unwrap_or_else(|| panic!("unparsable line: {line}")))
            .collect();
        Self { samples }
    }

    /// Samples named exactly `name` whose labels include all of `labels`.
    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples
            .iter()
            .filter(move |sample| sample.name == name && sample.has(labels))
    }

    /// The value of the sample of `name` with `labels`: the labels must pick one series at
    /// most, or the value read would be an arbitrary one of several.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut matches = self.matching(name, labels);
        let first = matches.next()?;
        let others: Vec<&Sample> = matches.collect();
        assert!(
            others.is_empty(),
            "{name} {labels:?} picks several series: {first:?} and {others:?}"
        );
        Some(first.value)
    }

    /// Observations of the histogram series of `name` with `labels` (one at most).
    pub fn histogram_count(&self, name: &str, labels: &[(&str, &str)]) -> Option<u64> {
        self.histogram(name, labels)
            .map(|buckets| buckets.last().map_or(0, |(_, count)| *count))
    }

    /// Cumulative (upper bound, count) pairs of the histogram series of `name` with `labels`,
    /// +Inf last; the labels must pick one series at most.
    pub fn histogram(&self, name: &str, labels: &[(&str, &str)]) -> Option<Vec<(f64, u64)>> {
        let mut series = self.histograms(name, labels);
        let first = series.next()?;
        assert!(
            series.next().is_none(),
            "{name} {labels:?} picks several histogram series"
        );
        Some(first)
    }

    /// Every histogram series of `name` whose labels include `labels`.
    pub fn histograms<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = Vec<(f64, u64)>> + 'a {
        let bucket_name = format!("{name}_bucket");
        let mut series: BTreeMap<Labels, Vec<(f64, u64)>> = BTreeMap::new();
        for sample in self
            .samples
            .iter()
            .filter(|s| s.name == bucket_name && s.has(labels))
        {
            let mut key: Labels = sample.labels.clone().into_iter().collect();
            key.retain(|(label, _)| label != "le");
            let le = sample
                .labels
                .get("le")
                .map_or(f64::NAN, |le| parse_value(le));
            series
                .entry(key)
                .or_default()
                .push((le, sample.value as u64));
        }
        series.into_values().map(|mut buckets| {
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            buckets
        })
    }

    /// Distinct values of `label` among the series of `name` (a histogram's base name or a
    /// plain metric) that match `labels`.
    pub fn label_values(&self, name: &str, labels: &[(&str, &str)], label: &str) -> Vec<String> {
        let count = format!("{name}_count");
        let mut values: Vec<String> = self
            .samples
            .iter()
            .filter(|s| (s.name == name || s.name == count) && s.has(labels))
            .filter_map(|s| s.labels.get(label).cloned())
            .collect();
        values.sort();
        values.dedup();
        values
    }

    /// Metric names, histograms under their base name.
    /// Every sample's own name (a histogram's `_bucket`, `_sum` and `_count` as they are).
    pub fn sample_names(&self) -> impl Iterator<Item = &str> {
        self.samples.iter().map(|sample| sample.name.as_str())
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.samples.iter().map(|sample| {
            let name = sample.name.as_str();
            ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .filter(|_| sample.labels.contains_key("le") || !name.ends_with("_bucket"))
                .unwrap_or(name)
        })
    }
}

fn parse_value(text: &str) -> f64 {
    match text {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        _ => text.parse().unwrap_or(f64::NAN),
    }
}

/// `name{label="value",...} value [timestamp]`, with `\\`, `\"` and `\n` escapes in values.
fn parse_line(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_owned();
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(after_brace) = rest.strip_prefix('{') {
        let mut chars = after_brace.char_indices();
        let mut key = String::new();
        loop {
            let (i, c) = chars.next()?;
            match c {
                '}' => {
                    rest = &after_brace[i + 1..];
                    break;
                }
                ',' | ' ' => {}
                '=' => {
                    let (_, quote) = chars.next()?;
                    if quote != '"' {
                        return None;
                    }
                    let mut value = String::new();
                    loop {
                        let (_, c) = chars.next()?;
                        match c {
                            '"' => break,
                            '\\' => match chars.next()?.1 {
                                'n' => value.push('\n'),
                                other => value.push(other),
                            },
                            other => value.push(other),
                        }
                    }
                    labels.insert(std::mem::take(&mut key), value);
                }
                other => key.push(other),
            }
        }
    }
    let value = parse_value(rest.split_whitespace().next()?);
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// The metrics README.md's "Metrics" table documents (its first column), by base name, with
/// whether each is a histogram: the contract that the agent's scrapes, the Prometheus rules
/// and the dashboard are held to.
pub fn documented_metrics() -> BTreeMap<String, bool> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("reading README.md");
    let table = readme
        .split_once("\n## Metrics\n")
        .expect("README.md has a Metrics section")
        .1
        .lines()
        .skip_while(|line| !line.starts_with('|'))
        .take_while(|line| line.starts_with('|'));
    let mut metrics = BTreeMap::new();
    for row in table {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let (Some(names), Some(kind)) = (cells.get(1), cells.get(2)) else {
            continue;
        };
        for name in names
            .split(", ")
            .filter_map(|name| name.strip_prefix('`')?.strip_suffix('`'))
        {
            metrics.insert(name.to_owned(), kind.starts_with("histogram"));
        }
    }
    assert!(
        metrics.len() > 20,
        "README's Metrics table not found: {metrics:?}"
    );
    metrics
}

/// Every sample name the documented metrics give (`_bucket`, `_sum` and `_count` for
/// histograms).
pub fn documented_sample_names() -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    for (name, histogram) in documented_metrics() {
        if histogram {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        } else {
            names.insert(name);
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# TYPE h histogram
h_bucket{service_name="a",http_route="/users/{id}",le="0.1"} 2
h_bucket{service_name="a",http_route="/users/{id}",le="+Inf"} 5
h_sum{service_name="a",http_route="/users/{id}"} 1.5
h_count{service_name="a",http_route="/users/{id}"} 5
c_total{reason="a \"quoted\", comma"} 3
g 7
"#;

    #[test]
    fn braces_quotes_and_histograms_are_read() {
        let scrape = Scrape::parse(TEXT);
        let labels = [("http_route", "/users/{id}")];
        assert_eq!(
            scrape.histogram("h", &labels),
            Some(vec![(0.1, 2), (f64::INFINITY, 5)])
        );
        assert_eq!(scrape.histogram_count("h", &labels), Some(5));
        assert_eq!(
            scrape.value("c_total", &[("reason", "a \"quoted\", comma")]),
            Some(3.0)
        );
        assert_eq!(scrape.value("g", &[]), Some(7.0));
        assert_eq!(scrape.label_values("h", &[], "http_route"), ["/users/{id}"]);
        assert!(scrape.names().any(|n| n == "h"));
    }
}
