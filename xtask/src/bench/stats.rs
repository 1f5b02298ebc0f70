//! Summaries of repeated measurements, and quantiles from Prometheus histograms.

/// The median (the upper one of an even count); NaN when there is nothing.
pub fn median(mut values: Vec<f64>) -> f64 {
    values.retain(|value| !value.is_nan());
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// `a / b`, NaN when `b` is zero.
pub fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 { f64::NAN } else { a / b }
}

/// Cumulative buckets (upper bound, count), ascending, `+Inf` last, as a scrape has them.
pub type Buckets = Vec<(f64, u64)>;

/// What was observed between two scrapes of one histogram: `after - before`, bucket by
/// bucket (the bounds are the same: one agent, one configuration).
pub fn difference(after: &Buckets, before: Option<&Buckets>) -> Buckets {
    after
        .iter()
        .enumerate()
        .map(|(i, &(bound, count))| {
            let earlier = before.and_then(|b| b.get(i)).map_or(0, |&(_, c)| c);
            (bound, count.saturating_sub(earlier))
        })
        .collect()
}

/// The `q`-quantile of a histogram, as Prometheus' `histogram_quantile` computes it: the
/// bucket holding rank `q * count`, interpolated linearly within it (from 0 for the first
/// bucket); the last finite bound when the rank falls in `+Inf`. NaN when empty.
pub fn histogram_quantile(q: f64, buckets: &Buckets) -> f64 {
    let total = buckets.last().map_or(0, |&(_, count)| count);
    if total == 0 || !(0.0..=1.0).contains(&q) {
        return f64::NAN;
    }
    let rank = q * total as f64;
    let index = buckets
        .iter()
        .position(|&(_, count)| count as f64 >= rank)
        .unwrap_or(buckets.len() - 1);
    let (upper, count) = buckets[index];
    if upper.is_infinite() {
        return if index == 0 {
            f64::NAN
        } else {
            buckets[index - 1].0
        };
    }
    let (lower, below) = if index == 0 {
        (0.0, 0)
    } else {
        buckets[index - 1]
    };
    if count == below {
        return upper;
    }
    lower + (upper - lower) * (rank - below as f64) / (count - below) as f64
}

/// `n` bounds from `low` to `high`, each the previous times a constant factor.
pub fn geometric_bounds(low: f64, high: f64, n: usize) -> Vec<f64> {
    let factor = (high / low).powf(1.0 / (n - 1) as f64);
    (0..n).map(|i| low * factor.powi(i as i32)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const INF: f64 = f64::INFINITY;

    #[test]
    fn quantiles_interpolate_within_the_bucket_like_prometheus() {
        // 10 observations <= 1, 10 more <= 2, none above.
        let buckets = vec![(1.0, 10), (2.0, 20), (INF, 20)];
        assert_eq!(histogram_quantile(0.5, &buckets), 1.0);
        assert_eq!(histogram_quantile(0.25, &buckets), 0.5);
        assert_eq!(histogram_quantile(0.75, &buckets), 1.5);
        assert_eq!(histogram_quantile(1.0, &buckets), 2.0);
    }

    #[test]
    fn a_rank_in_the_open_bucket_gives_the_last_bound() {
        let buckets = vec![(1.0, 1), (2.0, 2), (INF, 10)];
        assert_eq!(histogram_quantile(0.99, &buckets), 2.0);
    }

    #[test]
    fn empty_histograms_have_no_quantile() {
        assert!(histogram_quantile(0.5, &vec![(1.0, 0), (INF, 0)]).is_nan());
        assert!(histogram_quantile(0.5, &vec![]).is_nan());
    }

    #[test]
    fn differences_are_per_bucket() {
        let before = vec![(1.0, 3), (INF, 5)];
        let after = vec![(1.0, 10), (INF, 20)];
        assert_eq!(difference(&after, Some(&before)), vec![(1.0, 7), (INF, 15)]);
        assert_eq!(difference(&after, None), after);
    }

    #[test]
    fn medians_and_ratios() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![f64::NAN, 4.0]), 4.0);
        assert!(median(vec![]).is_nan());
        assert!(ratio(1.0, 0.0).is_nan());
    }

    #[test]
    fn geometric_bounds_span_the_range() {
        let bounds = geometric_bounds(1e-6, 1e-3, 4);
        assert_eq!(bounds.len(), 4);
        assert!((bounds[1] - 1e-5).abs() < 1e-12 && (bounds[3] - 1e-3).abs() < 1e-12);
    }
}
