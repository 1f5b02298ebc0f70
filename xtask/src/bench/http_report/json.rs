//! The summary as JSON: the setup, every figure per variant, the raw rounds, the goals and
//! the profiles.

use serde_json::{Value, json};

use crate::bench::{agent::Variant, http::Http};

use super::{
    PerVariant, RECORDING, paired::Paired, per_variant, perf::profiles_json, summary::Summary,
};

impl Summary {
    pub fn json(&self, http: &Http) -> Value {
        let by_variant = |figures: &PerVariant| {
            let map: serde_json::Map<String, Value> = Variant::ALL
                .iter()
                .map(|v| (v.key().to_owned(), json!(finite(figures[v.index()]))))
                .collect();
            Value::Object(map)
        };
        let programs: serde_json::Map<String, Value> = Variant::ALL
            .iter()
            .map(|v| {
                let map: serde_json::Map<String, Value> = self.programs[v.index()]
                    .iter()
                    .map(|(name, f)| {
                        (
                            name.clone(),
                            json!({
                                "runs_per_request": finite(f.runs_per_request),
                                "ns_per_run": finite(f.ns_per_run),
                                "ns_per_request": finite(f.ns_per_request),
                            }),
                        )
                    })
                    .collect();
                (v.key().to_owned(), Value::Object(map))
            })
            .collect();
        let accuracy: Vec<Value> = self
            .accuracy
            .iter()
            .map(|r| {
                json!({
                    "variant": r.variant.key(),
                    "load_generator_requests": r.requests,
                    "agent_server_requests": r.server,
                    "agent_client_requests": r.client,
                    "load_generator_p50_s": r.oha.0,
                    "load_generator_p99_s": r.oha.1,
                    "agent_client_p50_s": finite(r.client_quantiles.0),
                    "agent_client_p99_s": finite(r.client_quantiles.1),
                    "agent_server_p50_s": finite(r.server_quantiles.0),
                    "agent_server_p99_s": finite(r.server_quantiles.1),
                })
            })
            .collect();
        let losses: serde_json::Map<String, Value> = RECORDING
            .iter()
            .map(|v| {
                let l = &self.losses[v.index()];
                (
                    v.key().to_owned(),
                    json!({
                        "saturation_requests_not_recorded_per_round": l.not_recorded,
                        "kernel_drops_by_reason": l.drops,
                        "requests_unanswered": l.unanswered,
                        "responses_unmatched": l.unmatched,
                    }),
                )
            })
            .collect();
        let goals: serde_json::Map<String, Value> = self
            .goals
            .iter()
            .map(|(v, goals)| {
                let list: Vec<Value> = goals
                    .iter()
                    .map(|g| {
                        json!({"goal": g.name, "target": g.target, "measured": g.measured,
                               "verdict": g.verdict.key()})
                    })
                    .collect();
                (v.key().to_owned(), Value::Array(list))
            })
            .collect();
        json!({
            "setup": {
                "rounds": http.rounds,
                "saturation": {"tool": "wrk", "threads": 1, "connections": http.connections,
                               "seconds": http.saturation.as_secs_f64()},
                "fixed_rate": {"tool": "oha", "requests_per_second": http.rate,
                               "requests": http.requests, "connections": http.rate_connections,
                               "rate_lowered": http.rate_lowered},
                "load_generator_cpus": http.load_cpus,
                "nginx_worker_pinned_to_cpu_1": http.server_pinned,
                "agent_duration_bounds_s": http.bounds,
                "hooks": http.hooks.iter().map(|(h, k)| format!("{h}={k}")).collect::<Vec<_>>(),
            },
            "throughput_requests_per_second": by_variant(&self.throughput),
            "throughput_vs_no_agent_same_round": paired_json(&self.throughput_ratio),
            "nginx_requests_per_cpu_second_vs_no_agent_same_round":
                paired_json(&self.capacity_ratio),
            "nginx_cpu_us_per_request_saturation": by_variant(&self.server_cpu_us_saturation),
            "nginx_cpu_us_per_request_fixed_rate": by_variant(&self.server_cpu_us_fixed),
            "fixed_rate_p50_vs_no_agent_same_round": paired_json(&self.p50_ratio),
            "fixed_rate_p99_vs_no_agent_same_round": paired_json(&self.p99_ratio),
            "rounds": rounds_json(http),
            "fixed_rate_p50_s": by_variant(&self.p50),
            "fixed_rate_p99_s": by_variant(&self.p99),
            "fixed_rate_p50_vs_no_agent": by_variant(&per_variant(|v| self.relative(&self.p50, v))),
            "fixed_rate_p99_vs_no_agent": by_variant(&per_variant(|v| self.relative(&self.p99, v))),
            "bpf_ns_per_request": by_variant(&self.bpf_ns_per_request),
            "bpf_programs": programs,
            "agent_cpu_ms_per_1000_requests_saturation":
                by_variant(&self.cpu_ms_per_1k_saturation),
            "agent_cpu_ms_per_1000_requests_fixed_rate": by_variant(&self.cpu_ms_per_1k_fixed),
            "agent_peak_rss_mib": by_variant(&self.peak_rss_mib),
            "agent_refresh_ms_mean": by_variant(&self.refresh_ms),
            "losses": losses,
            "getppid_slowdown": by_variant(&self.getppid_slowdown),
            "accuracy": accuracy,
            "goals": goals,
            "profiles": profiles_json(&http.profiles),
        })
    }
}

fn paired_json(paired: &[Paired; 4]) -> Value {
    let map: serde_json::Map<String, Value> = Variant::ALL
        .iter()
        .filter(|v| **v != Variant::NoAgent)
        .map(|v| {
            let p = paired[v.index()];
            (
                v.key().to_owned(),
                json!({"median": finite(p.median), "min": finite(p.min), "max": finite(p.max)}),
            )
        })
        .collect();
    Value::Object(map)
}

/// Every round's raw figures, for whoever wants another statistic.
fn rounds_json(http: &Http) -> Value {
    let saturation: Vec<Value> = http
        .saturation_rounds
        .iter()
        .map(|r| {
            json!({
                "round": r.round,
                "variant": r.variant.key(),
                "requests_per_second": r.wrk.requests_per_second,
                "wrk_requests": r.wrk.requests,
                "wrk_errors": r.wrk.errors,
                "nginx_served": r.served,
                "nginx_cpu_s": r.server_cpu_seconds,
                "agent_recorded": r.counts.as_ref().map(|c| c.server),
                "agent_cpu_s": r.cost.as_ref().map(|c| c.cpu_seconds),
            })
        })
        .collect();
    let fixed: Vec<Value> = http
        .fixed_rounds
        .iter()
        .map(|r| {
            let bpf_ns: f64 = r.programs.values().map(|p| p.time_ns).sum();
            json!({
                "round": r.round,
                "variant": r.variant.key(),
                "responses": r.oha.responses,
                "errors": r.oha.errors,
                "requests_per_second": r.oha.requests_per_second,
                "p50_s": r.oha.p50,
                "p99_s": r.oha.p99,
                "bpf_ns": bpf_ns,
                "nginx_cpu_s": r.server_cpu_seconds,
                "agent_cpu_s": r.cost.as_ref().map(|c| c.cpu_seconds),
            })
        })
        .collect();
    json!({"saturation": saturation, "fixed_rate": fixed})
}

/// JSON has no NaN: absent figures are null.
fn finite(value: f64) -> Option<f64> {
    value.is_finite().then_some(value)
}
