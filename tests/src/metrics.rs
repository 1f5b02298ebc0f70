//! A parsed scrape, with look-ups by metric name and labels.

use prometheus_parse::{Sample, Value};

pub struct Scrape {
    samples: Vec<Sample>,
}

impl Scrape {
    pub fn parse(text: &str) -> Self {
        let lines = text.lines().map(|line| Ok(line.to_owned()));
        let scrape = prometheus_parse::Scrape::parse(lines).expect("unparsable /metrics");
        Self {
            samples: scrape.samples,
        }
    }

    /// Samples of `name` whose labels include all of `labels`.
    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |sample| {
            sample.metric == name
                && labels
                    .iter()
                    .all(|(key, value)| sample.labels.get(key) == Some(*value))
        })
    }

    /// The value of the one counter or gauge sample of `name` with `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.matching(name, labels)
            .find_map(|sample| match sample.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(v),
                _ => None,
            })
    }

    /// Observations of a histogram with `labels` (its `_count`).
    pub fn histogram_count(&self, name: &str, labels: &[(&str, &str)]) -> Option<u64> {
        self.histogram(name, labels)
            .map(|buckets| buckets.last().map_or(0, |(_, count)| *count))
    }

    /// Cumulative (upper bound, count) pairs of a histogram with `labels`, +Inf last.
    pub fn histogram(&self, name: &str, labels: &[(&str, &str)]) -> Option<Vec<(f64, u64)>> {
        self.matching(name, labels)
            .find_map(|sample| match &sample.value {
                Value::Histogram(buckets) => Some(
                    buckets
                        .iter()
                        .map(|bucket| (bucket.less_than, bucket.count as u64))
                        .collect(),
                ),
                _ => None,
            })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.samples.iter().map(|sample| sample.metric.as_str())
    }
}
