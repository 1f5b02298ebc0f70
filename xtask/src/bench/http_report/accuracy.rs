//! The accuracy of the agent against the load generator: its counts and percentiles per
//! fixed-rate round, and their Markdown section.

use std::collections::BTreeMap;

use crate::bench::{agent::Variant, http::Http};

use super::{summary::Summary, text::us};

/// The agent against the load generator in one fixed-rate round.
pub struct AccuracyRound {
    pub variant: Variant,
    pub requests: u64,
    pub server: u64,
    /// None when the load generator was not measured.
    pub client: Option<u64>,
    pub oha: (f64, f64),
    pub server_quantiles: (f64, f64),
    pub client_quantiles: (f64, f64),
}

impl AccuracyRound {
    pub(super) fn equal(&self) -> bool {
        self.server == self.requests && self.client.is_none_or(|c| c == self.requests)
    }
}

pub(super) fn accuracy_markdown(http: &Http, s: &Summary) -> String {
    let step = http
        .bounds
        .get(1)
        .zip(http.bounds.first())
        .map_or(f64::NAN, |(x, y)| x / y - 1.0);
    let mut text = format!(
        "\n#### Accuracy: the agent against the load generator\n\n\
         The agent ran with {n} duration buckets from {lo} µs to {hi} µs, each bound {step:.1} % \
         above the previous (placed by a pilot run around this host's latencies; \
         `--duration-buckets` takes at most {n}). Its percentiles are interpolated within the \
         bucket as Prometheus' `histogram_quantile` does, so they are within one bucket \
         ({step:.1} %) of the true value; the load generator's are exact. The client side is \
         the interval the load generator measures (from the write of the request to the read \
         of the response's end, seen in the kernel rather than in the load generator's event \
         loop); the server side is nginx's own part (from the read of the request to the write \
         of the response).\n\n\
         | variant, round | requests (oha) | agent: server | agent: client | p50 oha / client / server, µs | p99 oha / client / server, µs |\n\
         |---|---|---|---|---|---|\n",
        n = http.bounds.len(),
        lo = us(http.bounds.first().copied().unwrap_or(f64::NAN)),
        hi = us(http.bounds.last().copied().unwrap_or(f64::NAN)),
        step = step * 100.0,
    );
    let mut round_of: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &s.accuracy {
        let round = round_of.entry(r.variant.name()).or_default();
        *round += 1;
        let mark = |n: u64| {
            if n == r.requests {
                format!("{n} (equal)")
            } else {
                format!("**{n}** ({:+})", n as i64 - r.requests as i64)
            }
        };
        text.push_str(&format!(
            "| {} {} | {} | {} | {} | {} / {} / {} | {} / {} / {} |\n",
            r.variant.name(),
            round,
            r.requests,
            mark(r.server),
            r.client.map_or("not measured".to_owned(), mark),
            us(r.oha.0),
            us(r.client_quantiles.0),
            us(r.server_quantiles.0),
            us(r.oha.1),
            us(r.client_quantiles.1),
            us(r.server_quantiles.1),
        ));
    }
    let losses = &s.losses[Variant::Monitor.index()];
    text.push_str(&format!(
        "\nAt saturation the agent's count is compared with nginx's own (`stub_status`): wrk \
         stops on a deadline and does not count the requests it leaves in flight. With \
         `monitor`, requests counted as unanswered (closed before a response) in all rounds: \
         {}; responses without a request: {}.\n",
        losses.unanswered, losses.unmatched
    ));
    text
}
