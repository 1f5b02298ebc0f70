//! Small builders for `prometheus` metric families whose values are computed at scrape time
//! (the agent reads totals from the kernel instead of counting events itself).

use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};

pub struct FamilyBuilder {
    family: MetricFamily,
}

fn family(name: &str, help: &str, kind: MetricType) -> FamilyBuilder {
    let mut family = MetricFamily::default();
    family.set_name(name.to_owned());
    family.set_help(help.to_owned());
    family.set_field_type(kind);
    FamilyBuilder { family }
}

pub fn counter(name: &str, help: &str) -> FamilyBuilder {
    family(name, help, MetricType::COUNTER)
}

pub fn gauge(name: &str, help: &str) -> FamilyBuilder {
    family(name, help, MetricType::GAUGE)
}

pub fn histogram(name: &str, help: &str) -> FamilyBuilder {
    family(name, help, MetricType::HISTOGRAM)
}

fn labelled(labels: &[(&str, &str)]) -> Metric {
    let pairs = labels
        .iter()
        .map(|(name, value)| {
            let mut pair = LabelPair::default();
            pair.set_name((*name).to_owned());
            pair.set_value((*value).to_owned());
            pair
        })
        .collect();
    Metric::from_label(pairs)
}

/// One histogram observation set: per-bucket (not cumulative) counts for `bounds`, plus the
/// count above the last bound.
pub struct BucketCounts<'a> {
    pub bounds: &'a [f64],
    pub counts: &'a [u64],
    pub above_last: u64,
    pub sum: f64,
}

impl FamilyBuilder {
    pub fn value(mut self, labels: &[(&str, &str)], value: f64) -> Self {
        let mut metric = labelled(labels);
        match self.family.get_field_type() {
            MetricType::GAUGE => {
                let mut gauge = Gauge::default();
                gauge.set_value(value);
                metric.set_gauge(gauge);
            }
            _ => {
                let mut counter = Counter::default();
                counter.set_value(value);
                metric.set_counter(counter);
            }
        }
        self.family.mut_metric().push(metric);
        self
    }

    pub fn buckets(mut self, labels: &[(&str, &str)], observed: BucketCounts<'_>) -> Self {
        let mut cumulative = 0;
        let buckets = observed
            .bounds
            .iter()
            .zip(observed.counts)
            .map(|(&bound, &count)| {
                cumulative += count;
                let mut bucket = Bucket::default();
                bucket.set_upper_bound(bound);
                bucket.set_cumulative_count(cumulative);
                bucket
            })
            .collect();
        let mut histogram = Histogram::default();
        histogram.set_bucket(buckets);
        histogram.set_sample_count(cumulative + observed.above_last);
        histogram.set_sample_sum(observed.sum);
        let mut metric = labelled(labels);
        metric.set_histogram(histogram);
        self.family.mut_metric().push(metric);
        self
    }

    /// The family, or nothing when it has no series (an empty family is noise in a scrape).
    pub fn build(self) -> Option<MetricFamily> {
        (!self.family.get_metric().is_empty()).then_some(self.family)
    }
}
